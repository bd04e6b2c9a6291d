"""The UAPI server (wgpy.uapi.server): what `wg` sends and what it reads back.

Part 1 needs no privileges: the socket server on a temporary path (stale
sockets, "in use", srwx------, many connections, exit on deletion). The
protocol itself is tested in test_uapi_protocol.py, applying changes in
test_changes.py.

Part 2 runs a real Device in a fresh network namespace, serves its UAPI in
/var/run/wireguard and drives it with the real `wg`: set, setconf, addconf,
syncconf, showconf, show and show dump, each compared with what the same
commands print against wireguard-go configured the same way; the scale cases
(130,000 allowed IPs, 1,000 peers); and hostile input over raw connections.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from netns import (
    WG_RUN_DIR,
    BackgroundProcess,
    Namespace,
    NetnsLab,
    require_programs,
    require_tun,
    run,
    wait_until,
)
from uapi_fakes import EADDRINUSE, FakeDevice, hexkey, new_key
from wgpy import PresharedKey, PrivateKey, PublicKey
from wgpy.device import Device
from wgpy.uapi import server
from wgpy.uapi.server import serve_uapi

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- the socket server on a temporary path ----------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="wgu", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def request(path: Path, data: bytes) -> bytes:
    """Sends `data` on a new connection, half-closes, returns the whole answer."""
    stream = await trio.open_unix_socket(os.fspath(path))
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()
        received = bytearray()
        while chunk := await stream.receive_some():
            received += chunk
        return bytes(received)


def serve_and_run(
    device: object, path: Path, body: Callable[[], Awaitable[None]], timeout: float = 10
) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                assert await nursery.start(server.serve_uapi, device, path) == path
                await body()
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_socket_mode_directory_and_removal(sock_dir: Path) -> None:
    path = sock_dir / "run" / "wgx.sock"
    old_umask = os.umask(0o022)
    try:

        async def body() -> None:
            assert stat.S_ISSOCK(path.lstat().st_mode)
            assert stat.S_IMODE(path.lstat().st_mode) == 0o700  # srwx------
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
            assert os.umask(0o022) == 0o022  # restored after binding
            assert await request(path, b"get=1\n\n") == b"listen_port=1\nerrno=0\n\n"

        serve_and_run(FakeDevice(listen_port=1), path, body)
    finally:
        os.umask(old_umask)
    assert not path.exists()


def test_socket_replaced_meanwhile_is_not_removed(sock_dir: Path) -> None:
    path = sock_dir / "wgx.sock"

    async def body() -> None:
        path.unlink()
        path.write_text("someone else's")

    serve_and_run(FakeDevice(), path, body)
    assert path.read_text() == "someone else's"


def test_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "wgx.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(path))
    stale.close()  # the file stays; connecting is refused

    async def body() -> None:
        assert await request(path, b"get=1\n\n") == b"listen_port=51820\nerrno=0\n\n"

    serve_and_run(FakeDevice(), path, body)


def test_socket_in_use_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "wgx.sock"

    async def body() -> None:
        with pytest.raises(OSError, match="interface in use") as info:
            server.open_uapi_socket(path)
        assert info.value.errno == EADDRINUSE
        assert await request(path, b"get=1\n\n")  # the first server still answers

    serve_and_run(FakeDevice(), path, body)


def test_a_new_socket_never_refuses_a_connection(sock_dir: Path) -> None:
    """wg(8) unlinks a socket that refuses a connection (a stale one), so a
    socket must accept from the moment it appears at its path: one caught
    between bind() and listen() by a `wg show` would be deleted, and the
    daemon, seeing its socket gone, would exit."""
    path = sock_dir / "wgr.sock"
    stop = threading.Event()
    refused: list[str] = []

    def wg_like_prober() -> None:
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(os.fspath(path))
                except ConnectionRefusedError:
                    refused.append("refused")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                except FileNotFoundError:
                    pass

    prober = threading.Thread(target=wg_like_prober)
    prober.start()
    try:
        for _ in range(300):
            with server.open_uapi_socket(path):
                assert path.exists(), "a prober deleted a socket that refused it"
                path.unlink()  # while it still listens: never seen closed
    finally:
        stop.set()
        prober.join()
    assert refused == []


def test_non_socket_file_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "wgx.sock"
    path.write_text("not a socket")
    with pytest.raises(OSError) as info:
        server.open_uapi_socket(path)
    assert info.value.errno == errno.EEXIST
    assert path.read_text() == "not a socket"


def test_serving_a_socket_opened_earlier(sock_dir: Path) -> None:
    # As a launcher does: open the socket, daemonize, then serve it.
    path = sock_dir / "wgx.sock"
    listener = server.open_uapi_socket(path)

    async def main() -> None:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(server.serve_uapi, FakeDevice(), path, listener=listener)
                )
                assert await request(path, b"get=1\n\n") == b"listen_port=51820\nerrno=0\n\n"
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert not path.exists()


def test_idle_and_stalled_clients_do_not_block_others(sock_dir: Path) -> None:
    path = sock_dir / "wgx.sock"
    device = FakeDevice()

    async def body() -> None:
        idle = [await trio.open_unix_socket(os.fspath(path)) for _ in range(50)]
        stalled = await trio.open_unix_socket(os.fspath(path))
        await stalled.send_all(b"set=1\nlisten_port=1\nfwmark=")  # and never more
        with trio.fail_after(2):
            replies = await request(path, b"set=1\nfwmark=9\n\nget=1\n\n")
        assert replies == b"errno=0\n\nlisten_port=51820\nfwmark=9\nerrno=0\n\n"
        for stream in [*idle, stalled]:
            await stream.aclose()

    serve_and_run(device, path, body)


def test_many_concurrent_clients(sock_dir: Path) -> None:
    path = sock_dir / "wgx.sock"
    device = FakeDevice()
    keys = [new_key() for _ in range(40)]

    async def body() -> None:
        async def client(key: PublicKey) -> None:
            data = f"set=1\npublic_key={hexkey(key)}\nallowed_ip=10.0.0.0/8\n\nget=1\n\n"
            replies = await request(path, data.encode())
            assert replies.startswith(b"errno=0\n\n") and replies.endswith(b"errno=0\n\n")

        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(client, key)

    serve_and_run(device, path, body)
    assert set(device.peers_by_key) == set(keys)
    assert len(device.owner) == 1  # each set moved 10.0.0.0/8 whole


def watch_delay(path: Path, change: Callable[[], None]) -> float:
    """Seconds from `change()` to wait_socket_removed(path) returning; a chmod
    (IN_ATTRIB, as an unlink also causes) first must not end the wait."""

    async def main() -> float:
        returned: list[float] = []

        async def waiter() -> None:
            await server.wait_socket_removed(path)
            returned.append(trio.current_time())

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.1)
                os.chmod(path, 0o600)
                await trio.sleep(0.1)
                assert not returned
                changed_at = trio.current_time()
                change()
        return returned[0] - changed_at

    return trio.run(main)


@pytest.mark.parametrize("inotify", [True, False])
@pytest.mark.parametrize("how", ["unlink", "rename", "replace"])
def test_wait_socket_removed(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, inotify: bool, how: str
) -> None:
    if not inotify:
        monkeypatch.setattr(server, "_inotify_watch", lambda path: None)
        monkeypatch.setattr(server, "POLL_INTERVAL", 0.05)
    path = sock_dir / "wgx.sock"
    changes = {
        "unlink": path.unlink,
        "rename": lambda: path.rename(sock_dir / "moved.sock"),
        "replace": lambda: (path.unlink(), server.open_uapi_socket(path).close()),
    }
    with server.open_uapi_socket(path):
        assert watch_delay(path, changes[how]) < 0.5


def test_wait_socket_removed_without_file(sock_dir: Path) -> None:
    trio.run(server.wait_socket_removed, sock_dir / "absent.sock")


# === Part 2: a real Device in a network namespace, driven by `wg` =====================
# The namespace starts with only `lo` up, so the documentation-range endpoints
# below are unreachable: no handshake happens and every counter stays 0 on
# both implementations, which makes their outputs comparable byte for byte.


@pytest.fixture
def lab(netns_lab: NetnsLab) -> NetnsLab:
    require_programs("wg")
    require_tun()
    return netns_lab


@dataclass(frozen=True)
class Served:
    """A wgpy Device serving its UAPI socket."""

    ns: Namespace
    iface: str
    path: Path
    device: Device


async def wg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real wg, from a worker thread so the device keeps running."""
    return await trio.to_thread.run_sync(
        functools.partial(run, ["wg", *args], check=check, timeout=60)
    )


def with_device(lab: NetnsLab, body: Callable[[Served], Awaitable[None]]) -> None:
    """Runs `body` against a Device and its UAPI server, both created inside
    a fresh namespace (a TUN device and sockets belong to the namespace of
    the thread that creates them)."""
    ns = lab.namespace()
    iface = lab.interface_name(ns)  # the lab removes its socket at cleanup
    path = WG_RUN_DIR / f"{iface}.sock"

    async def main() -> None:
        with trio.fail_after(60):
            async with Device(iface) as device, trio.open_nursery() as nursery:
                await nursery.start(serve_uapi, device, path)
                await body(Served(ns, iface, path, device))
                nursery.cancel_scope.cancel()

    with ns.entered():
        trio.run(main)
    assert not path.exists()  # removed when serving stopped


@dataclass(frozen=True)
class GoDevice:
    """wireguard-go, the reference, in its own namespace."""

    ns: Namespace
    iface: str
    process: BackgroundProcess


def start_wireguard_go(lab: NetnsLab) -> GoDevice:
    require_programs("wireguard-go")
    ns = lab.namespace()
    iface = lab.interface_name(ns)
    process = ns.spawn(["wireguard-go", "-f", iface])

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"wireguard-go exited:\n{process.log()}")
        return run(["wg", "show", iface], check=False).returncode == 0

    wait_until(ready, timeout=10, what=f"wireguard-go serving {iface}")
    return GoDevice(ns, iface, process)


def write_file(lab: NetnsLab, name: str, text: str) -> str:
    path = lab.work_dir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return os.fspath(path)


# wireguard-go lists peers in Go map order and allowed IPs in insertion
# order; wgpy lists peers in insertion order and allowed IPs sorted. Only
# those orders are normalized before comparing.


def _sorted_list(text: str, sep: str) -> str:
    return sep.join(sorted(text.split(sep)))


def normalize_conf(text: str) -> list[str]:
    sections = []
    for section in text.strip().split("\n\n"):
        lines = [
            "AllowedIPs = " + _sorted_list(line.removeprefix("AllowedIPs = "), ", ")
            if line.startswith("AllowedIPs = ")
            else line
            for line in section.splitlines()
        ]
        sections.append("\n".join(lines))
    return sections[:1] + sorted(sections[1:])


def normalize_dump(text: str) -> list[str]:
    head, *peers = text.splitlines()
    rows = []
    for line in peers:
        fields = line.split("\t")
        fields[3] = _sorted_list(fields[3], ",")
        rows.append("\t".join(fields))
    return [head, *sorted(rows)]


def normalize_show(text: str, iface: str) -> list[str]:
    blocks = []
    for block in text.replace(f"interface: {iface}\n", "interface: IFACE\n").split("\n\n"):
        lines = [
            "  allowed ips: " + _sorted_list(line.removeprefix("  allowed ips: "), ", ")
            if line.startswith("  allowed ips: ")
            else line
            for line in block.splitlines()
        ]
        blocks.append("\n".join(lines))
    return blocks[:1] + sorted(blocks[1:])


async def views(iface: str) -> dict[str, object]:
    return {
        "showconf": normalize_conf((await wg("showconf", iface)).stdout),
        "dump": normalize_dump((await wg("show", iface, "dump")).stdout),
        "show": normalize_show((await wg("show", iface)).stdout, iface),
    }


async def wg_both(served: Served, go: GoDevice, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs one wg command (IFACE stands for the interface) on both; their
    exit status, messages and resulting state must agree."""
    results = []
    for iface in (served.iface, go.iface):
        result = await wg(*(a.replace("IFACE", iface) for a in args), check=False)
        results.append((result.returncode, result.stdout, result.stderr.replace(iface, "IFACE")))
    assert results[0] == results[1], args
    assert await views(served.iface) == await views(go.iface), args
    return result


def config(interface: list[str], peers: list[list[str]]) -> str:
    return "\n\n".join("\n".join(lines) for lines in [["[Interface]", *interface], *peers]) + "\n"


def test_wg_commands_match_wireguard_go(lab: NetnsLab) -> None:
    go = start_wireguard_go(lab)
    own = PrivateKey.generate()
    a, b, c, d, e = (new_key().to_base64() for _ in range(5))
    psk1, psk2 = (PresharedKey.generate().to_base64() for _ in range(2))
    key_file = write_file(lab, "own.key", own.to_base64() + "\n")
    psk_file = write_file(lab, "psk2", psk2 + "\n")
    interface = [f"PrivateKey = {own.to_base64()}", "ListenPort = 51820", "FwMark = 0x2a"]
    conf1 = config(
        interface,
        [
            [
                "[Peer]",
                f"PublicKey = {a}",
                f"PresharedKey = {psk1}",
                "Endpoint = 192.0.2.1:51820",
                "AllowedIPs = 10.10.0.0/16, fd10::/64, 10.11.0.1/32",
                "PersistentKeepalive = 25",
            ],
            ["[Peer]", f"PublicKey = {b}", "Endpoint = [2001:db8::1]:51821"],
            ["[Peer]", f"PublicKey = {c}", "AllowedIPs = 0.0.0.0/0, ::/0"],
        ],
    )
    conf2 = config(
        [],
        [
            ["[Peer]", f"PublicKey = {d}", "AllowedIPs = 10.40.0.0/24"],
            ["[Peer]", f"PublicKey = {a}", "AllowedIPs = 10.30.0.0/24, 10.40.0.0/24"],
        ],
    )
    conf3 = config(
        interface,
        [
            [
                "[Peer]",
                f"PublicKey = {a}",
                "Endpoint = [2001:db8::2]:1",
                "AllowedIPs = 10.10.0.0/16, 10.12.0.0/16",
            ],
            ["[Peer]", f"PublicKey = {c}", "AllowedIPs = 0.0.0.0/0, ::/0"],
            ["[Peer]", f"PublicKey = {e}", f"PresharedKey = {psk2}", "AllowedIPs = 10.50.0.0/16"],
        ],
    )
    files = {name: write_file(lab, name, text) for name, text in [("1", conf1), ("2", conf2)]}
    files["3"] = write_file(lab, "3", conf3)
    own_public = own.public_key().to_base64()

    async def body(served: Served) -> None:
        await wg_both(served, go, "setconf", "IFACE", files["1"])
        device = served.device
        assert device.private_key == own and (device.listen_port, device.fwmark) == (51820, 42)
        assert device.peer(PublicKey.from_base64(a)).preshared_key == PresharedKey.from_base64(psk1)
        await wg_both(served, go, "addconf", "IFACE", files["2"])
        await wg_both(served, go, "syncconf", "IFACE", files["3"])
        await wg_both(served, go, "set", "IFACE", "peer", a, "remove")
        await wg_both(
            served,
            go,
            *("set", "IFACE", "peer", c, "preshared-key", psk_file, "persistent-keepalive"),
            *("15", "endpoint", "192.0.2.9:9", "allowed-ips", "10.60.0.0/16,fd60::/48"),
        )
        await wg_both(served, go, "set", "IFACE", "peer", c, "persistent-keepalive", "off")
        await wg_both(served, go, "set", "IFACE", "peer", c, "preshared-key", "/dev/null")
        assert device.peer(PublicKey.from_base64(c)).preshared_key is None
        await wg_both(served, go, "set", "IFACE", "peer", e, "allowed-ips", "")
        await wg_both(served, go, "set", "IFACE", "peer", own_public, "allowed-ips", "10.9.0.0/16")
        await wg_both(served, go, "set", "IFACE", "fwmark", "0", "listen-port", "51999")
        await wg_both(served, go, "set", "IFACE", "private-key", "/dev/null")
        await wg_both(served, go, "set", "IFACE", "private-key", key_file, "peer", own_public)
        await wg_both(
            served,
            go,
            "setconf",
            "IFACE",
            write_file(lab, "4", "[Interface]\nListenPort = 51830\n"),
        )

    with_device(lab, body)


def test_set_and_show_details(lab: NetnsLab) -> None:
    own = PrivateKey.generate()
    peer = new_key()
    key_file = write_file(lab, "own.key", own.to_base64())

    async def body(served: Served) -> None:
        iface = served.iface
        await wg(
            *("set", iface, "private-key", key_file, "listen-port", "51820", "fwmark", "0x10"),
            *("peer", peer.to_base64(), "endpoint", "[2001:db8::7]:51821", "allowed-ips"),
            *("10.0.0.5/24,fd00::/64", "persistent-keepalive", "25"),
        )
        assert (await wg("showconf", iface)).stdout == (
            f"[Interface]\nListenPort = 51820\nFwMark = 0x10\nPrivateKey = {own.to_base64()}\n\n"
            f"[Peer]\nPublicKey = {peer.to_base64()}\nAllowedIPs = 10.0.0.0/24, fd00::/64\n"
            "Endpoint = [2001:db8::7]:51821\nPersistentKeepalive = 25\n"
        )
        assert (await wg("show", iface, "dump")).stdout == (
            f"{own.to_base64()}\t{own.public_key().to_base64()}\t51820\t0x10\n"
            f"{peer.to_base64()}\t(none)\t[2001:db8::7]:51821\t10.0.0.0/24,fd00::/64\t0\t0\t0\t25\n"
        )
        assert (await wg("show", iface, "public-key")).stdout == own.public_key().to_base64() + "\n"
        # The data plane agrees with what the UAPI reported.
        assert served.device.listen_port == 51820 and served.device.fwmark == 0x10
        (stats,) = served.device.stats()
        assert stats.endpoint == ("2001:db8::7", 51821) and stats.persistent_keepalive == 25
        assert [str(n) for n in sorted(stats.allowed_ips, key=str)] == ["10.0.0.0/24", "fd00::/64"]

    with_device(lab, body)


def test_port_in_use_is_refused_whole(lab: NetnsLab) -> None:
    go = start_wireguard_go(lab)
    peer = new_key().to_base64()
    command = ["set", "IFACE", "listen-port", "40000", "fwmark", "7"]
    command += ["peer", peer, "allowed-ips", "10.0.0.0/8"]

    async def body(served: Served) -> None:
        for ns in (served.ns, go.ns):
            ns.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("0.0.0.0", 40000))
        before = (await wg("showconf", served.iface)).stdout
        results = []
        for iface in (served.iface, go.iface):
            result = await wg(*(a.replace("IFACE", iface) for a in command), check=False)
            results.append((result.returncode, result.stderr.replace(iface, "IFACE")))
        assert results[0] == results[1]
        assert results[0][0] == 1 and "Address already in use" in results[0][1]
        # wireguard-go (0.0.20220316) is left with no listening port; wgpy changes nothing.
        assert (await wg("showconf", served.iface)).stdout == before
        assert served.device.fwmark == 0 and served.device.peers == []

    with_device(lab, body)


# --- scale --------------------------------------------------------------------------


def many_prefixes() -> list[str]:
    """130,000 distinct prefixes, in wgpy's output order (IPv4, then IPv6, by address)."""
    v4 = [str(ipaddress.IPv4Address(0x0A00_0000 + i * 4)) + "/30" for i in range(100_000)]
    v6 = [str(ipaddress.IPv6Address((0xFD00 << 112) + i)) + "/128" for i in range(30_000)]
    return v4 + v6


def test_130k_allowed_ips(lab: NetnsLab) -> None:
    go = start_wireguard_go(lab)
    prefixes = many_prefixes()
    peer = new_key().to_base64()
    conf = config(
        ["ListenPort = 51820", f"PrivateKey = {PrivateKey.generate().to_base64()}"],
        [["[Peer]", f"PublicKey = {peer}", "AllowedIPs = " + ", ".join(prefixes)]],
    )
    conf_file = write_file(lab, "big.conf", conf)

    async def body(served: Served) -> None:
        started = time.monotonic()
        await wg("setconf", served.iface, conf_file)
        set_seconds = time.monotonic() - started
        started = time.monotonic()
        shown = (await wg("showconf", served.iface)).stdout
        get_seconds = time.monotonic() - started
        print(f"130,000 allowed IPs: setconf {set_seconds:.2f} s, showconf {get_seconds:.2f} s")
        assert shown == conf  # exactly what was set, in wg showconf's order
        assert set_seconds < 5 and get_seconds < 5
        await wg("setconf", go.iface, conf_file)
        assert (await wg("showconf", go.iface)).stdout == shown

    with_device(lab, body)


def test_1000_peers(lab: NetnsLab) -> None:
    go = start_wireguard_go(lab)
    keys = [new_key().to_base64() for _ in range(1000)]
    peers = [
        [
            "[Peer]",
            f"PublicKey = {key}",
            f"AllowedIPs = 10.1.{i >> 8}.{i & 255}/32, fd01::{i + 1:x}/128",
            f"Endpoint = 192.0.2.{i % 250 + 1}:{1000 + i}",
        ]
        for i, key in enumerate(keys)
    ]
    conf_file = write_file(lab, "peers.conf", config(["ListenPort = 51820"], peers))

    async def body(served: Served) -> None:
        started = time.monotonic()
        await wg("setconf", served.iface, conf_file)
        set_seconds = time.monotonic() - started
        started = time.monotonic()
        dump = (await wg("show", served.iface, "dump")).stdout
        get_seconds = time.monotonic() - started
        print(f"1,000 peers: setconf {set_seconds:.2f} s, show dump {get_seconds:.2f} s")
        rows = {row.split("\t")[0]: row.split("\t") for row in dump.splitlines()[1:]}
        assert list(rows) == keys  # in the order they were added
        for i, key in enumerate(keys):
            assert rows[key][2:4] == [
                f"192.0.2.{i % 250 + 1}:{1000 + i}",
                f"10.1.{i >> 8}.{i & 255}/32,fd01::{i + 1:x}/128",
            ]
        assert set_seconds < 5 and get_seconds < 5
        await wg("setconf", go.iface, conf_file)
        assert await views(served.iface) == await views(go.iface)

    with_device(lab, body)


# --- hostile input -----------------------------------------------------------------------


def raw_exchange(path: Path, data: bytes) -> bytes:
    """Sends `data` on a new connection, half-closes, returns all the server
    sent before closing. The server may close first (too much input): its
    reply is still readable then."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(os.fspath(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = bytearray()
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:  # we had unread data when it closed
                break
            if not chunk:
                return bytes(received)
            received += chunk
        return bytes(received)


def million_allowed_ip_lines() -> str:
    return "".join(f"allowed_ip=10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32\n" for i in range(10**6))


def test_hostile_input(lab: NetnsLab) -> None:
    pub = hexkey(new_key())
    million = "".join(
        f"allowed_ip=10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32\n" for i in range(10**6)
    )
    cases: list[tuple[str, bytes, bytes]] = [
        ("unknown operation", b"hello\nget=1\n\n", b""),
        ("binary junk", bytes(range(256)) * 100, b""),
        ("no blank line", b"set=1\nlisten_port=1\n", b"errno=-71\n\n"),
        ("line without =", b"set=1\nlisten_port\n\n", b"errno=-71\n\n"),
        ("unknown key", b"set=1\nfoo=bar\n\n", b"errno=-22\n\n"),
        ("huge number", b"set=1\nlisten_port=" + b"9" * 4000 + b"\n\n", b"errno=-22\n\n"),
        ("huge line", b"set=1\nfwmark=" + b"1" * (1 << 20) + b"\n\n", b"errno=-5\n\n"),
        ("huge op line", b"g" * (1 << 20), b""),
        ("bad key", b"set=1\nprivate_key=" + b"z" * 64 + b"\n\n", b"errno=-22\n\n"),
        ("get then junk", b"get=1\nget=1\n\n", b"errno=22\n\n"),
        (
            "a million allowed IPs, the last one invalid",
            f"set=1\npublic_key={pub}\n{million}allowed_ip=10.0.0.0/33\n\n".encode(),
            b"errno=-22\n\n",
        ),
        (
            "over 64 MiB",
            b"set=1\n" + b"allowed_ip=10.0.0.1/32\n" * (3 << 20) + b"\n",
            b"errno=-5\n\n",
        ),
    ]

    async def body(served: Served) -> None:
        path = served.path
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(os.fspath(path))  # connects and never sends, all along
        before = (await wg("showconf", served.iface)).stdout
        try:
            for name, data, expected in cases:
                started = time.monotonic()
                reply = await trio.to_thread.run_sync(raw_exchange, path, data)
                assert reply == expected, name
                assert time.monotonic() - started < 10, name
                assert (await wg("showconf", served.iface)).stdout == before, name
            # Still answering normal requests, several on one connection.
            replies = await trio.to_thread.run_sync(raw_exchange, path, b"get=1\n\n" * 3)
            assert replies.count(b"errno=0\n\n") == 3
        finally:
            idle.close()

    with_device(lab, body)


def test_million_allowed_ips_applied(lab: NetnsLab) -> None:
    key = new_key()
    million = "".join(
        f"allowed_ip=10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32\n" for i in range(10**6)
    )
    data = f"set=1\npublic_key={hexkey(key)}\n{million}\n".encode()

    async def body(served: Served) -> None:
        started = time.monotonic()
        reply = await trio.to_thread.run_sync(raw_exchange, served.path, data)
        seconds = time.monotonic() - started
        print(f"1,000,000 allowed_ip lines applied in {seconds:.2f} s")
        assert reply == b"errno=0\n\n" and seconds < 10
        ((_peer, _stats, prefixes),) = served.device.uapi_stats()
        assert len(prefixes) == 10**6
        remove = f"set=1\npublic_key={hexkey(key)}\nremove=true\n\n".encode()
        assert await trio.to_thread.run_sync(raw_exchange, served.path, remove) == b"errno=0\n\n"
        assert served.device.peers == []

    with_device(lab, body)


def test_peers_added_and_removed_at_once(lab: NetnsLab) -> None:
    # A peer removed before its timer task first ran used to take the device down.
    keys = [hexkey(new_key()) for _ in range(20)]
    one_request = b"".join(
        f"set=1\npublic_key={k}\nallowed_ip=10.0.0.0/8\npublic_key={k}\nremove=true\n\n".encode()
        for k in keys
    )
    pipelined = b"".join(
        f"set=1\npublic_key={k}\nendpoint=192.0.2.1:1\n\nset=1\npublic_key={k}\nremove=true\n\n".encode()
        for k in keys
    )

    async def body(served: Served) -> None:
        for data in (one_request, pipelined):
            replies = await trio.to_thread.run_sync(raw_exchange, served.path, data)
            assert replies == b"errno=0\n\n" * (data.count(b"set=1"))
            await trio.sleep(0.2)  # the timer tasks run now
            assert served.device.peers == []
            assert (await wg("show", served.iface, "dump")).stdout.count("\n") == 1

    with_device(lab, body)


def test_errno_replies_match_wireguard_go(lab: NetnsLab) -> None:
    """Raw requests, one per connection, answered the same by both. (Where
    wgpy differs on purpose, see the module docstring of wgpy.uapi.)"""
    go = start_wireguard_go(lab)
    peer = "public_key=" + hexkey(new_key())
    bodies = [
        [],
        ["listen_port"],
        ["bogus=1"],
        ["listen_port=0x10"],
        ["listen_port=+5"],
        ["listen_port=65536"],
        ["listen_port=00012"],
        ["fwmark=4294967296"],
        ["fwmark=0"],
        ["replace_peers=false"],
        ["private_key=" + "z" * 64],
        ["private_key=" + "a" * 63],
        ["protocol_version=1"],
        [peer, "endpoint=[1.2.3.4]:5"],
        [peer, "endpoint=::1:5"],
        [peer, "endpoint=1.2.3.4"],
        [peer, "endpoint=[::ffff:1.2.3.4]:7"],
        [peer, "allowed_ip=10.0.0.1"],
        [peer, "allowed_ip=10.0.0.1/33"],
        [peer, "allowed_ip=10.0.0.1/08"],
        [peer, "protocol_version=2"],
        [peer, "persistent_keepalive_interval=65536"],
        [peer, "listen_port=5"],
        [peer, "update_only=1"],
        [peer, "remove=false"],
        [peer, "replace_allowed_ips=yes"],
        [peer, "preshared_key=" + "0" * 64, "remove=true"],
    ]
    requests = [("set=1\n" + "".join(f"{b}\n" for b in body) + "\n").encode() for body in bodies]
    requests += [b"bogus\n", b"set=1\r\n\n", b"\n", b"get=1\n\nget=1\n\n"]

    async def body(served: Served) -> None:
        go_path = WG_RUN_DIR / f"{go.iface}.sock"
        for data in requests:
            mine = await trio.to_thread.run_sync(raw_exchange, served.path, data)
            theirs = await trio.to_thread.run_sync(raw_exchange, go_path, data)
            if data.startswith(b"get"):  # the same framing; the contents differ
                mine, theirs = mine.count(b"errno=0\n\n"), theirs.count(b"errno=0\n\n")
            assert mine == theirs, data

    with_device(lab, body)
