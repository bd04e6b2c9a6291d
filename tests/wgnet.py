"""WireGuard nodes in network namespaces, driven by the real `wg` tool.

A node runs either wgpy (`python -m wgpy -f IFACE`) or wireguard-go
(`wireguard-go -f IFACE`) and is configured the same way for both, with
`wg set`, `ip address` and `ip link`: what a user would do, and what makes
the two implementations directly comparable.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import wgpy
from netns import BackgroundProcess, Namespace, NetnsLab, add_address, wait_until

WGPY = "wgpy"
WIREGUARD_GO = "wireguard-go"
# Reference implementations built from source for the benchmarks (bench/README.md
# says how): current wireguard-go, and boringtun; found in WGPY_ANCHORS.
WIREGUARD_GO_HEAD = "wireguard-go-head"
BORINGTUN = "boringtun"
ANCHORS = Path(os.environ.get("WGPY_ANCHORS", "/tmp/anchors/bin"))
STEP_TIMEOUT = 10.0
MTU = 1420


def program(impl: str) -> str:
    """The executable that runs `impl` (an absolute path for the anchors)."""
    return {
        WGPY: sys.executable,
        WIREGUARD_GO: "wireguard-go",
        WIREGUARD_GO_HEAD: str(ANCHORS / "wireguard-go-head"),
        BORINGTUN: str(ANCHORS / "boringtun-cli"),
    }[impl]


def daemon_argv(impl: str, iface: str, daemon_args: Sequence[str] = ()) -> list[str]:
    """The foreground daemon of `impl` for interface `iface`; `daemon_args`:
    options for wgpy's."""
    if impl == WGPY:
        return [sys.executable, "-m", "wgpy", "-f", *daemon_args, iface]
    if impl == BORINGTUN:
        # Root would otherwise make it drop to nobody, and lose its UAPI socket.
        return [program(impl), "-f", "--disable-drop-privileges", iface]
    return [program(impl), "-f", iface]


OUTER_V4 = ("10.77.0.1", "10.77.0.2")
OUTER_V6 = ("fd00:77::1", "fd00:77::2")
INNER_V4 = ("10.200.0.1", "10.200.0.2")
INNER_V6 = ("fd00:200::1", "fd00:200::2")


def endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


@dataclass(frozen=True)
class PeerDump:
    """One peer line of `wg show IFACE dump`."""

    public_key: str
    preshared_key: str = field(repr=False)  # a secret: kept out of failure reports
    endpoint: str
    allowed_ips: str
    latest_handshake: int
    rx: int
    tx: int
    persistent_keepalive: str


def parse_dump(text: str) -> list[PeerDump]:
    """The peer lines of `wg show IFACE dump` output (the first line is the interface)."""
    peers = []
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        peers.append(PeerDump(f[0], f[1], f[2], f[3], int(f[4]), int(f[5]), int(f[6]), f[7]))
    return peers


def find_peer(dump_text: str, public_key: wgpy.PublicKey, where: str = "the interface") -> PeerDump:
    for peer in parse_dump(dump_text):
        if peer.public_key == public_key.to_base64():
            return peer
    raise AssertionError(f"{public_key.to_base64()} is not a peer of {where}")


@dataclass
class Node:
    lab: NetnsLab
    ns: Namespace
    impl: str
    iface: str
    port: int
    private_key: wgpy.PrivateKey
    process: BackgroundProcess
    files: list[Path] = field(default_factory=list)

    @property
    def public_key(self) -> wgpy.PublicKey:
        return self.private_key.public_key()

    def wg(self, *args: str, check: bool = True) -> str:
        return self.ns.run(["wg", *args], check=check).stdout

    def set_peer(
        self,
        other: Node | wgpy.PublicKey,
        allowed_ips: list[str],
        *,
        endpoint: tuple[str, int] | None = None,
        preshared_key: wgpy.PresharedKey | None = None,
        keepalive: int | None = None,
    ) -> None:
        key = other.public_key if isinstance(other, Node) else other
        args = ["set", self.iface, "peer", key.to_base64()]
        args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            args += ["endpoint", endpoint_text(*endpoint)]
        if preshared_key is not None:
            path = write_secret(self.lab.work_dir / f"{self.iface}-psk", preshared_key.to_base64())
            args += ["preshared-key", str(path)]
        if keepalive is not None:
            args += ["persistent-keepalive", str(keepalive)]
        self.wg(*args)

    def peer_dump(self, public_key: wgpy.PublicKey) -> PeerDump:
        return find_peer(self.wg("show", self.iface, "dump"), public_key, self.iface)

    def thread_cpu_ns(self, prefix: str) -> dict[str, int]:
        """CPU time of each of the daemon's threads whose name starts with
        `prefix` (wgpy-lane, wgpy-crypto), keyed "name/tid"."""
        result = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            name = (task / "comm").read_text().strip()
            if name.startswith(prefix):
                result[f"{name}/{task.name}"] = int((task / "schedstat").read_text().split()[0])
        return result

    def ping(
        self, address: str, *, count: int = 3, timeout: float = 2.0, source: str | None = None
    ) -> bool:
        argv = ["ping", "-c", str(count), "-i", "0.2", "-W", str(timeout)]
        if source:
            argv += ["-I", source]
        r = self.ns.run([*argv, address], check=False, timeout=count * (timeout + 1) + 5)
        return r.returncode == 0


def start_node(
    lab: NetnsLab,
    ns: Namespace,
    impl: str,
    *,
    port: int,
    addresses: list[str],
    private_key: wgpy.PrivateKey | None = None,
    log_level: str = "debug",
    env: Mapping[str, str] | None = None,
    daemon_args: Sequence[str] = (),
) -> Node:
    """Starts a WireGuard interface of `impl` in `ns`, keyed, listening and up.

    `log_level` is passed as LOG_LEVEL (both implementations read it); tests
    want debug output in failure reports, benchmarks want no logging cost.
    `env` adds environment variables for the daemon; `daemon_args` options
    for wgpy's."""
    iface = lab.interface_name(ns, prefix="wgp" if impl == WGPY else "wgg")
    process = ns.spawn(
        daemon_argv(impl, iface, daemon_args), env={"LOG_LEVEL": log_level, **(env or {})}
    )
    sock = Path("/var/run/wireguard") / f"{iface}.sock"

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"{impl} exited early:\n{process.log()}")
        return sock.exists() and ns.run(["wg", "show", iface], check=False).returncode == 0

    wait_until(ready, timeout=STEP_TIMEOUT, what=f"{impl} UAPI socket for {iface}")
    key = private_key or wgpy.PrivateKey.generate()
    key_file = write_secret(lab.work_dir / f"{iface}.key", key.to_base64())
    ns.run(["wg", "set", iface, "listen-port", str(port), "private-key", str(key_file)])
    for address in addresses:
        add_address(ns, iface, address)
    # boringtun leaves the TUN device's MTU at 1500; every implementation gets 1420.
    ns.ip("link", "set", iface, "mtu", str(MTU), "up")
    wait_until(
        lambda: ns.link_is_up(iface) or _tun_up(ns, iface), timeout=STEP_TIMEOUT, what=f"{iface} up"
    )
    return Node(lab, ns, impl, iface, port, key, process, [key_file])


def _tun_up(ns: Namespace, iface: str) -> bool:
    # A TUN link reports LOWER_UP only while its file descriptor is attached.
    out = ns.ip("-o", "link", "show", "dev", iface, check=False).stdout
    return ",UP" in out or "<UP" in out


@dataclass(frozen=True)
class Pair:
    """Two nodes in two namespaces joined by a veth pair; `a` knows `b`'s
    endpoint (so `a` initiates), `b` learns `a`'s from the handshake."""

    a: Node
    b: Node
    outer: tuple[str, str]


def make_pair(
    lab: NetnsLab,
    impl_a: str,
    impl_b: str,
    *,
    outer_v6: bool = False,
    preshared_key: wgpy.PresharedKey | None = None,
    log_level: str = "debug",
    env: Mapping[str, str] | None = None,
) -> Pair:
    ns_a, ns_b = lab.namespace(), lab.namespace()
    lab.veth(
        ns_a,
        ns_b,
        [f"{OUTER_V4[0]}/24", f"{OUTER_V6[0]}/64"],
        [f"{OUTER_V4[1]}/24", f"{OUTER_V6[1]}/64"],
    )
    a = start_node(
        lab,
        ns_a,
        impl_a,
        port=51820,
        addresses=[f"{INNER_V4[0]}/24", f"{INNER_V6[0]}/64"],
        log_level=log_level,
        env=env,
    )
    b = start_node(
        lab,
        ns_b,
        impl_b,
        port=51821,
        addresses=[f"{INNER_V4[1]}/24", f"{INNER_V6[1]}/64"],
        log_level=log_level,
        env=env,
    )
    outer = OUTER_V6 if outer_v6 else OUTER_V4
    a.set_peer(
        b,
        [f"{INNER_V4[1]}/32", f"{INNER_V6[1]}/128"],
        endpoint=(outer[1], b.port),
        preshared_key=preshared_key,
    )
    b.set_peer(a, [f"{INNER_V4[0]}/32", f"{INNER_V6[0]}/128"], preshared_key=preshared_key)
    return Pair(a, b, outer)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
