"""`wgpy IFACE`, the daemon, as wireguard-go behaves: it returns once its UAPI
socket accepts connections, and goes away cleanly on SIGTERM/SIGINT, when its
interface is deleted and when its socket file is removed."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import Namespace, NetnsLab, require_tun, wait_until

RUN_DIR = Path("/var/run/wireguard")


def daemon_pid(iface: str) -> int | None:
    out = subprocess.run(
        ["pgrep", "-f", "--", f"-m wgpy .*{iface}$"], capture_output=True, text=True
    )
    pids = out.stdout.split()
    return int(pids[0]) if pids else None


def launch(lab: NetnsLab, ns: Namespace) -> tuple[str, int]:
    """Starts `wgpy IFACE` detached, as wg-quick does; returns (iface, daemon pid)."""
    iface = lab.interface_name(ns, prefix="wgd")
    r = ns.run([sys.executable, "-m", "wgpy", iface], check=False, timeout=30)
    assert r.returncode == 0, r.stderr
    sock = RUN_DIR / f"{iface}.sock"
    # Ready when the launcher returns: wg talks to it at once.
    assert ns.run(["wg", "show", iface], check=False).returncode == 0
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0, "socket only for its owner"
    pid = daemon_pid(iface)
    assert pid is not None
    return iface, pid


def gone(ns: Namespace, iface: str, pid: int) -> bool:
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    return not alive and not ns.link_exists(iface) and not (RUN_DIR / f"{iface}.sock").exists()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "delete-interface", "remove-socket"])
def test_daemon_exits_cleanly(netns_lab: NetnsLab, how: str) -> None:
    require_tun()
    ns = netns_lab.namespace()
    iface, pid = launch(netns_lab, ns)
    if how == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
    elif how == "SIGINT":
        os.kill(pid, signal.SIGINT)
    elif how == "delete-interface":
        ns.ip("link", "delete", "dev", iface)
    else:
        (RUN_DIR / f"{iface}.sock").unlink()
    wait_until(lambda: gone(ns, iface, pid), timeout=10, what=f"daemon gone after {how}")


def test_second_daemon_for_the_same_interface_is_refused(netns_lab: NetnsLab) -> None:
    require_tun()
    ns = netns_lab.namespace()
    iface, pid = launch(netns_lab, ns)
    other = netns_lab.namespace()
    r = other.run([sys.executable, "-m", "wgpy", iface], check=False, timeout=30)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    time.sleep(0.2)
    assert daemon_pid(iface) == pid, "the first daemon keeps running"
    assert ns.run(["wg", "show", iface], check=False).returncode == 0
