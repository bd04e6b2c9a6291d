"""Least privilege (wgpy.privileges): the daemon run with `--user`, or as a
non-root user holding CAP_NET_ADMIN (systemd's AmbientCapabilities=),
keeps only the capabilities it needs, in every thread, and still carries
traffic and takes configuration; the UAPI directory must be safe."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import wgpy
from netns import Namespace, NetnsLab, require_programs, require_tun, wait_until
from nobody import nobody_python
from transfer import tcp_transfer
from wgnet import INNER_V4, OUTER_V4, WGPY, WIREGUARD_GO, start_node

NOBODY = 65534
CAP_NET_ADMIN = 1 << 12
FIFTY_MB = 50 * 1000 * 1000


def task_status(path: Path) -> dict[str, str]:
    fields = {}
    for line in (path / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def assert_least_privilege(pid: int, caps: int = CAP_NET_ADMIN) -> None:
    """Every thread of `pid`: no root uid or gid, exactly `caps` permitted,
    effective and bounding, nothing inheritable or ambient, no_new_privs."""
    tasks = sorted(Path(f"/proc/{pid}/task").iterdir())
    names = set()
    for task in tasks:
        s = task_status(task)
        names.add(s["Name"])
        assert all(int(u) != 0 for u in s["Uid"].split()), s["Uid"]
        assert all(int(g) != 0 for g in s["Gid"].split()), s["Gid"]
        for key in ("CapPrm", "CapEff", "CapBnd"):
            assert int(s[key], 16) == caps, f"{s['Name']}: {key} {s[key]}"
        assert int(s["CapInh"], 16) == 0 and int(s["CapAmb"], 16) == 0, s["Name"]
        assert s["NoNewPrivs"] == "1", s["Name"]
    # The data plane's threads are among them: they started after the drop.
    assert {"wgpy-lane0", "wgpy-handshake"} <= names, names


def test_user_nobody_keeps_only_net_admin_and_carries_traffic(netns_lab: NetnsLab) -> None:
    require_programs("wireguard-go", "wg", "ping", "ss")
    require_tun()
    a_ns, b_ns = netns_lab.namespace(), netns_lab.namespace()
    netns_lab.veth(a_ns, b_ns, [f"{OUTER_V4[0]}/24"], [f"{OUTER_V4[1]}/24"])
    a = start_node(netns_lab, a_ns, WGPY, port=51820, addresses=[f"{INNER_V4[0]}/24"],
                   daemon_args=["--user", "nobody"])  # fmt: skip
    b = start_node(netns_lab, b_ns, WIREGUARD_GO, port=51821, addresses=[f"{INNER_V4[1]}/24"])
    a.set_peer(b, [f"{INNER_V4[1]}/32"], endpoint=(OUTER_V4[1], b.port))
    b.set_peer(a, [f"{INNER_V4[0]}/32"])
    assert_least_privilege(a.process.pid)

    result = tcp_transfer(a_ns, b_ns, INNER_V4[1], FIFTY_MB, timeout=120)
    assert result.received_bytes == FIFTY_MB
    assert result.received_sha256 == result.sent_sha256

    # Configuration that needs CAP_NET_ADMIN still works after the drop:
    # a new listen port (SO_RCVBUFFORCE on the new sockets) and a fwmark.
    a.wg("set", a.iface, "listen-port", "51830", "fwmark", "0x99")
    assert a.wg("show", a.iface, "listen-port").strip() == "51830"
    assert a.wg("show", a.iface, "fwmark").strip() == "0x99"
    assert a_ns.udp_listening(51830)
    assert a.ping(INNER_V4[1], count=2), "the tunnel works from the new port"
    assert b.peer_dump(a.public_key).endpoint == f"{OUTER_V4[0]}:51830"
    # A privileged port cannot be bound any more, and the reply says so.
    r = a.ns.run(["wg", "set", a.iface, "listen-port", "500"], check=False)
    assert r.returncode != 0
    assert "CAP_NET_BIND_SERVICE" in a.process.log()
    assert_least_privilege(a.process.pid)


def test_privileged_listen_port_keeps_net_bind_service(netns_lab: NetnsLab) -> None:
    require_programs("wg")
    require_tun()
    ns = netns_lab.namespace()
    node = start_node(netns_lab, ns, WGPY, port=500, addresses=[],
                      daemon_args=["--user", "nobody", "--listen-port", "500"])  # fmt: skip
    assert node.wg("show", node.iface, "listen-port").strip() == "500"
    assert_least_privilege(node.process.pid, CAP_NET_ADMIN | 1 << 10)


@pytest.fixture
def nobody_run_dir() -> Iterator[Path]:
    """A UAPI directory owned by nobody, as systemd's RuntimeDirectory= makes it."""
    path = Path(tempfile.mkdtemp(prefix="wgr", dir="/tmp"))
    try:
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody_with_net_admin(argv: list[str]) -> list[str]:
    """What systemd's User= with AmbientCapabilities=CAP_NET_ADMIN does."""
    return [
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
        "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
        "--bounding-set=-all,+net_admin", *argv,
    ]  # fmt: skip


def test_non_root_user_with_ambient_net_admin_runs_the_daemon(
    netns_lab: NetnsLab, nobody_run_dir: Path
) -> None:
    require_programs("setpriv", "wireguard-go", "wg", "ping")
    require_tun()
    a_ns, b_ns = netns_lab.namespace(), netns_lab.namespace()
    netns_lab.veth(a_ns, b_ns, [f"{OUTER_V4[0]}/24"], [f"{OUTER_V4[1]}/24"])
    b = start_node(netns_lab, b_ns, WIREGUARD_GO, port=51821, addresses=[f"{INNER_V4[1]}/24"])
    iface = netns_lab.interface_name(a_ns, prefix="wga")
    python, env = nobody_python()
    env |= {"WGPY_RUN_DIR": str(nobody_run_dir), "LOG_LEVEL": "info"}
    daemon = a_ns.spawn(_as_nobody_with_net_admin([python, "-m", "wgpy", "-f", iface]), env=env)
    sock = nobody_run_dir / f"{iface}.sock"
    # "serving" is logged once set up (the socket file exists earlier).
    ready = f"serving {sock}"
    wait_until(lambda: ready in daemon.log() or not daemon.alive(), timeout=15, what="serving")
    assert daemon.alive(), daemon.log()
    assert_least_privilege(daemon.pid)
    assert os.lstat(sock).st_uid == NOBODY

    key = wgpy.PrivateKey.generate()
    lines = [
        f"private_key={key.to_bytes().hex()}",
        f"public_key={bytes(b.public_key).hex()}",
        f"endpoint={OUTER_V4[1]}:{b.port}",
        f"allowed_ip={INNER_V4[1]}/32",
    ]
    _set(sock, lines)
    b.set_peer(key.public_key(), [f"{INNER_V4[0]}/32"])
    a_ns.ip("address", "add", f"{INNER_V4[0]}/24", "dev", iface)
    a_ns.ip("link", "set", iface, "up")  # as root: the test's part, not the daemon's
    assert _ping(a_ns, INNER_V4[1]), daemon.log()

    daemon.popen.terminate()
    daemon.popen.wait(timeout=10)
    assert not sock.exists(), "its own directory: the daemon removes its socket"


def _set(sock: Path, lines: list[str]) -> None:
    body = "set=1\n" + "".join(f"{line}\n" for line in lines) + "\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(body.encode())
        reply = s.recv(4096).decode()
    assert reply.startswith("errno=0"), reply


def _ping(ns: Namespace, address: str) -> bool:
    r = ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", address], check=False, timeout=20)
    return r.returncode == 0


@pytest.mark.parametrize("problem", ["group-writable", "symlink", "foreign-owner"])
def test_unsafe_uapi_directory_is_refused(netns_lab: NetnsLab, problem: str) -> None:
    require_tun()
    ns = netns_lab.namespace()
    base = Path(tempfile.mkdtemp(prefix="wgr", dir="/tmp"))
    try:
        run_dir = base / "run"
        if problem == "symlink":
            (base / "real").mkdir(mode=0o755)
            run_dir.symlink_to(base / "real")
        else:
            run_dir.mkdir(mode=0o755)
            if problem == "group-writable":
                run_dir.chmod(0o775)
            else:
                os.chown(run_dir, 12345, 12345)
        iface = netns_lab.interface_name(ns, prefix="wgu")
        r = ns.run([sys.executable, "-m", "wgpy", iface], check=False, timeout=30,
                   env={**os.environ, "WGPY_RUN_DIR": str(run_dir)})  # fmt: skip
        assert r.returncode == 1
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(run_dir) in r.stderr
        assert not ns.link_exists(iface), "refused before creating anything"
        assert not any(run_dir.iterdir())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_missing_user_is_a_clear_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "wgpy", "--user", "no-such-user-wgpy", "wgpynouser0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip() == "wgpy: --user: no such user 'no-such-user-wgpy'"


def test_wgpy_up_with_user_runs_the_daemon_unprivileged(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    """`wgpy up --user nobody`: the daemon drops to nobody (the port from the
    file from the start), the tunnel works, and `wgpy down` removes it all,
    the socket the daemon could not remove included."""
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    server_ns, client_ns = netns_lab.namespace(), netns_lab.namespace()
    netns_lab.veth(server_ns, client_ns, [f"{OUTER_V4[0]}/24"], [f"{OUTER_V4[1]}/24"])
    server = start_node(netns_lab, server_ns, WIREGUARD_GO, port=51820,
                        addresses=[f"{INNER_V4[0]}/24"])  # fmt: skip
    key = wgpy.PrivateKey.generate()
    server.set_peer(key.public_key(), [f"{INNER_V4[1]}/32"])
    iface = netns_lab.interface_name(client_ns, prefix="wgq")
    conf = tmp_path / f"{iface}.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {key.to_base64()}\nAddress = {INNER_V4[1]}/24\n"
        f"ListenPort = 51833\n\n[Peer]\nPublicKey = {server.public_key.to_base64()}\n"
        f"Endpoint = {OUTER_V4[0]}:51820\nAllowedIPs = {INNER_V4[0]}/32\n"
    )
    wgpy_cmd = [sys.executable, "-m", "wgpy"]
    up = client_ns.run([*wgpy_cmd, "up", "--user", "nobody", str(conf)], check=False, timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        pids = subprocess.run(["pgrep", "-f", "--", f"-m wgpy .*--listen-port 51833 {iface}$"],
                              capture_output=True, text=True).stdout.split()  # fmt: skip
        assert len(pids) == 1
        assert_least_privilege(int(pids[0]))
        assert _ping(client_ns, INNER_V4[0])
    finally:
        down = client_ns.run([*wgpy_cmd, "down", str(conf)], check=False, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not client_ns.link_exists(iface)
    assert not (Path("/var/run/wireguard") / f"{iface}.sock").exists()
