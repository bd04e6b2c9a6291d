"""Three wgpy gateways following one etcd, and clients, in network namespaces.

A hub namespace holds a bridge (10.88.0.1/24) and etcd on 10.88.0.1:2379;
every gateway and client namespace has a veth into the bridge (gateway i
at 10.88.0.1i, client j at 10.88.0.2j). Gateways run `wgpy -f --registry
etcd://10.88.0.1:2379/lab IFACE`, their private key and listen port set
locally with `wg set`; gateway i's tunnel address is 10.99.0.i/16. A client
(wgpy or wireguard-go) at 10.99.1.j/16 has every gateway as a peer (allowed
IP 10.99.0.i/32) and is itself written to the registry (10.99.1.j/32), so a
ping to 10.99.0.i goes through gateway i. `wgpy registry` runs in the hub.
Everything is removed by the NetnsLab and EtcdServer cleanups.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import wgpy
from etcd_server import EtcdServer
from netns import Namespace, NetnsLab, require_programs, require_tun
from wgnet import WGPY, Node, parse_dump, start_node

NETWORK = "lab"
HUB = "10.88.0.1"
PORT = 51820


def gateway_address(i: int) -> str:
    return f"10.99.0.{i}"


@dataclass
class Client:
    node: Node
    address: str  # its tunnel address, registered as ADDRESS/32


@dataclass
class RegistryLab:
    lab: NetnsLab
    hub: Namespace
    etcd: EtcdServer
    gateways: list[Node] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    _attached: int = 0

    @property
    def url(self) -> str:
        return f"etcd://{HUB}:{self.etcd.client_port}"

    def _attach(self, ns: Namespace, address: str) -> None:
        pair = self.lab.veth(self.hub, ns, [], [f"{address}/24"])
        self.hub.ip("link", "set", pair.a_ifname, "master", "br0")

    def registry(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "wgpy", "registry", "--etcd", self.url, NETWORK, *args]
        r = subprocess.run(
            self.hub.argv(argv), capture_output=True, text=True, input=stdin, timeout=120
        )
        if r.returncode != 0:
            raise AssertionError(f"wgpy registry {args[0]} failed: {r.stderr}")
        return r

    def import_peers(self, peers: list[dict[str, object]]) -> None:
        self.registry("import", "-", stdin=json.dumps(peers))

    def listed(self) -> dict[str, frozenset[str]]:
        peers = json.loads(self.registry("list", "--json").stdout)
        return {p["public_key"]: frozenset(p["allowed_ips"]) for p in peers}

    def start_gateway(
        self, i: int, ns: Namespace, private_key: wgpy.PrivateKey | None = None
    ) -> Node:
        node = start_node(
            self.lab,
            ns,
            WGPY,
            port=PORT,
            private_key=private_key,
            addresses=[f"{gateway_address(i)}/16"],
            log_level="info",
            daemon_args=["--registry", f"{self.url}/{NETWORK}"],
        )
        if i <= len(self.gateways):
            self.gateways[i - 1] = node  # a restart
        else:
            self.gateways.append(node)
        return node

    def add_client(self, impl: str) -> Client:
        j = len(self.clients) + 1
        ns = self.lab.namespace()
        self._attach(ns, f"10.88.0.{20 + j}")
        address = f"10.99.1.{j}"
        node = start_node(self.lab, ns, impl, port=PORT, addresses=[f"{address}/16"])
        client = Client(node, address)
        self.configure_client(client)
        self.clients.append(client)
        self.registry("add-peer", node.public_key.to_base64(), "--allowed-ips", f"{address}/32")
        return client

    def configure_client(self, client: Client) -> None:
        """The client's gateway peers, anew (a fresh session with each)."""
        node = client.node
        for i, gateway in enumerate(self.gateways, 1):
            node.wg("set", node.iface, "peer", gateway.public_key.to_base64(), "remove")
            node.set_peer(gateway, [f"{gateway_address(i)}/32"], endpoint=(f"10.88.0.1{i}", PORT))

    def show(self, gateway: Node) -> dict[str, object]:
        out = gateway.ns.run([sys.executable, "-m", "wgpy", "show", gateway.iface, "--json"])
        state: dict[str, object] = json.loads(out.stdout)["interfaces"][0]
        return state


def peer_set(node: Node) -> dict[str, frozenset[str]]:
    """`wg show IFACE dump` as public key -> allowed IPs."""
    peers = parse_dump(node.wg("show", node.iface, "dump"))
    return {p.public_key: frozenset(p.allowed_ips.split(",")) - {"(none)"} for p in peers}


def wait_converged(
    lab: RegistryLab,
    want: dict[str, frozenset[str]],
    *,
    timeout: float,
    what: str,
    local: frozenset[str] = frozenset(),
) -> float:
    """Seconds until every gateway's peers, but for the `local` ones, are
    exactly `want` (polled)."""
    start = time.monotonic()
    pending = list(lab.gateways)

    def registry_peers(g: Node) -> dict[str, frozenset[str]]:
        return {k: v for k, v in peer_set(g).items() if k not in local}

    while pending:
        pending = [g for g in pending if registry_peers(g) != want]
        if pending and time.monotonic() - start > timeout:
            got = {g.iface: len(peer_set(g)) for g in pending}
            raise AssertionError(
                f"{what}: not converged after {timeout} s ({len(want)} wanted, {got})"
            )
        if pending:
            time.sleep(0.02)
    return time.monotonic() - start


def random_peers(count: int, second_octet: int) -> list[dict[str, object]]:
    keys = [wgpy.PrivateKey.generate().public_key().to_base64() for _ in range(count)]
    return [
        {"public_key": k, "allowed_ips": [f"10.{second_octet}.{i // 250}.{i % 250}/32"]}
        for i, k in enumerate(keys)
    ]


def build(work_dir: Path, lab: NetnsLab, gateways: int = 3) -> RegistryLab:
    require_tun()
    require_programs("wg", "etcd", "etcdctl")
    hub = lab.namespace()
    hub.ip("link", "add", "br0", "type", "bridge")
    hub.ip("address", "add", f"{HUB}/24", "dev", "br0")
    hub.ip("link", "set", "br0", "up")
    etcd = EtcdServer(work_dir, host=HUB, ns=hub)
    registry_lab = RegistryLab(lab, hub, etcd)
    etcd.start()
    for i in range(1, gateways + 1):
        ns = lab.namespace()
        registry_lab._attach(ns, f"10.88.0.1{i}")
        registry_lab.start_gateway(i, ns)
    return registry_lab
