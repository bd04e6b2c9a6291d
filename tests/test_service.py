"""The daemon as a system service (wgpy.service): where its log goes, with
timestamps and levels; sd_notify readiness; the shipped systemd units,
checked by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import NetnsLab, require_programs, require_tun, wait_until

UNITS = Path(__file__).parent.parent / "packaging/wgpy.data/data/lib/systemd/system"
TIMESTAMPED = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"wgpy[\w.]*: "
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="wgs", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def datagram_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    return sock


def test_detached_daemon_logs_to_a_file_with_timestamps(netns_lab: NetnsLab) -> None:
    require_tun()
    ns = netns_lab.namespace()
    iface = netns_lab.interface_name(ns, prefix="wgl")
    log_file = netns_lab.work_dir / "wgpy.log"
    env = {"LOG_LEVEL": "debug"}
    r = ns.run([sys.executable, "-m", "wgpy", "--log-file", str(log_file), iface], env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert stat.S_IMODE(log_file.stat().st_mode) & 0o007 == 0, "not for others"
    ns.run(["wg", "set", iface, "listen-port", "51822"])
    ns.ip("link", "delete", "dev", iface)  # the daemon logs its way out
    wait_until(lambda: "shutting down" in log_file.read_text(), timeout=10, what="exit logged")
    lines = log_file.read_text().splitlines()
    assert lines and all(TIMESTAMPED.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert f"INFO wgpy: {iface}: serving" in text
    assert f"INFO wgpy: {iface}: TUN interface gone, shutting down" in text


def test_detached_daemon_logs_to_syslog(netns_lab: NetnsLab, short_dir: Path) -> None:
    require_tun()
    ns = netns_lab.namespace()
    iface = netns_lab.interface_name(ns, prefix="wgl")
    syslog = datagram_listener(short_dir / "log")
    try:
        env = {"LOG_LEVEL": "info", "WGPY_SYSLOG": str(short_dir / "log")}
        r = ns.run([sys.executable, "-m", "wgpy", iface], env=env)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        message = syslog.recv(4096).decode()
    finally:
        syslog.close()
    # <facility daemon (3) * 8 + info (6)>, the tag with the pid, then level and logger.
    assert re.match(r"<30>wgpy\[\d+\]: INFO wgpy: ", message), message


def test_detached_daemon_without_syslog_says_where_its_log_went(netns_lab: NetnsLab) -> None:
    require_tun()
    ns = netns_lab.namespace()
    iface = netns_lab.interface_name(ns, prefix="wgl")
    env = {"LOG_LEVEL": "info", "WGPY_SYSLOG": "/nonexistent/log"}
    r = ns.run([sys.executable, "-m", "wgpy", iface], env=env)
    assert r.returncode == 0
    assert r.stderr.startswith("wgpy: warning: no syslog at /nonexistent/log"), r.stderr
    assert "--log-file" in r.stderr


def test_notify_ready_once_the_socket_serves(netns_lab: NetnsLab, short_dir: Path) -> None:
    """Type=notify: READY=1 comes when `wg` can already talk to the daemon;
    STOPPING=1 when it stops."""
    require_programs("wg")
    require_tun()
    ns = netns_lab.namespace()
    iface = netns_lab.interface_name(ns, prefix="wgn")
    notify = datagram_listener(short_dir / "notify")
    try:
        daemon = ns.spawn([sys.executable, "-m", "wgpy", "-f", iface],
                          env={"NOTIFY_SOCKET": str(short_dir / "notify")})  # fmt: skip
        ready = notify.recv(4096).decode().split("\n")
        assert "READY=1" in ready and f"MAINPID={daemon.pid}" in ready, ready
        assert ns.run(["wg", "show", iface], check=False).returncode == 0
        os.kill(daemon.pid, signal.SIGTERM)
        assert notify.recv(4096).decode() == "STOPPING=1"
    finally:
        notify.close()


def test_foreground_under_journald_marks_levels(netns_lab: NetnsLab) -> None:
    """stderr connected to the journal (JOURNAL_STREAM names it): `<N>`
    priority prefixes, which journald turns into levels."""
    require_tun()
    ns = netns_lab.namespace()
    iface = netns_lab.interface_name(ns, prefix="wgj")
    out = netns_lab.work_dir / "journal-stream"
    with open(out, "wb") as stream:
        st = os.fstat(stream.fileno())
        proc = subprocess.Popen(
            ns.argv([sys.executable, "-m", "wgpy", "-f", iface]),
            stderr=stream,
            env={**os.environ, "LOG_LEVEL": "info", "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
        )
        try:
            wait_until(lambda: "serving" in out.read_text(), timeout=15, what="serving")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    lines = out.read_text().splitlines()
    assert f"<6>INFO wgpy: {iface}: serving /var/run/wireguard/{iface}.sock" in lines, lines


@pytest.mark.parametrize("unit", ["wgpy@.service", "wgpy-quick@.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    """systemd-analyze finds nothing to complain about (it warns, but exits
    0, on unknown keys: any output fails), and the hardening keeps the
    exposure score low."""
    require_programs("systemd-analyze")
    wgpy = shutil.which("wgpy") or str(Path(sys.executable).with_name("wgpy"))
    text = (UNITS / unit).read_text().replace("/usr/local/bin/wgpy", wgpy)
    (tmp_path / unit).write_text(text)
    instance = tmp_path / unit.replace("@", "@wg0")
    instance.symlink_to(tmp_path / unit)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(instance)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    score = float(re.findall(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)[0])
    assert score <= (4.0 if unit == "wgpy@.service" else 6.0), security.stdout[-2000:]
    for needed in ("CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert needed in text
