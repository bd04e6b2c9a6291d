"""Labs for endpoints by name (wgpy.names): the client's uplink changes
address family, or the server moves and its DNS name follows.

Both reuse handover_lab's measurements (`run_handovers`: UDP probes both
ways, a paced TCP stream per run); only the topology and the switch differ.
The server's name is `wgsrv.test`, provided in the client's namespace only:
`ip netns exec` bind-mounts /etc/netns/<ns>/hosts (and resolv.conf) over
/etc for the client daemon, so nothing outside the lab sees it.

Family switch (`build_family`): the client has an IPv4-only uplink and an
IPv6-only one; the server is dual-stack and its name has an A and an AAAA
record (the client's hosts file).

    client ==v4 uplink: 10.34.1.0/24==  router ==10.34.9.0/24, fd34:9::/64== server
           ==v6 uplink: fd34:2::/64===

A switch brings the other uplink up (address and default route), then
takes the old one away (its default route and address): `Switch.began` is
just before the old path goes, `done` just after. The lab is ready once
duplicate address detection is over on every link (a real uplink is that
far along before anything switches to it).

Moving server (`build_moving`): the server's address changes within its
subnet and its DNS record follows (dnsmasq in the router, TTL 1 s). The
router is a stateful firewall for the client's uplink, as a home router or
carrier NAT is: only replies to what the client sent come in. So the
client must find the server at its new address; the server reaching out
from it is dropped.

    client ==10.35.1.0/24== router (dnsmasq, firewall) ==10.35.9.0/24== server
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

from handover_lab import (
    CLIENT_PORT,
    CLIENT_TUNNEL,
    SERVER_PORT,
    SERVER_TUNNEL,
    HandoverLab,
    Switch,
)
from netns import BackgroundProcess, Namespace, NetnsLab, add_address, wait_until
from wgnet import WGPY, Node, start_node
from wgpy import control

NAME = "wgsrv.test"
FAMILY_SWITCH = "family-switch"
MOVING_SERVER = "moving-server"

V4_UPLINK = ("10.34.1.2", "10.34.1.1")  # client, router
V6_UPLINK = ("fd34:2::2", "fd34:2::1")
SERVER_V4, SERVER_V6 = "10.34.9.2", "fd34:9::2"
ROUTER_LAN_V4, ROUTER_LAN_V6 = "10.34.9.1", "fd34:9::1"

MOVING_UPLINK = ("10.35.1.2", "10.35.1.1")
MOVING_SERVER_ADDRESSES = tuple(f"10.35.9.{n}" for n in range(2, 40))  # one per move
MOVING_ROUTER_LAN = "10.35.9.1"
DNS_TTL = 1  # seconds


def name_lines(server: Node, endpoint: str | None, names: list[str]) -> list[str]:
    """The UAPI set `wgpy up` sends for a peer with a named endpoint."""
    lines = [f"public_key={bytes(server.public_key).hex()}"]
    if endpoint is not None:
        lines.append(f"endpoint={endpoint}")
    lines += [f"wgpy_endpoint_name={n}" for n in names]
    lines += ["replace_allowed_ips=true", f"allowed_ip={SERVER_TUNNEL}/32"]
    return lines


def configure_client(client: Node, server: Node, *, start: str, names: list[str]) -> None:
    """The client's peer: wgpy gets the names (as from `wgpy up`); another
    implementation gets `wg set ... endpoint NAME:PORT`, which wg resolves
    once, as wg-quick does."""
    if client.impl == WGPY:
        control.set_config(client.iface, name_lines(server, start, names))
    else:
        host, _, port = names[0].rpartition(":")
        client.set_peer(server, [f"{SERVER_TUNNEL}/32"], endpoint=(host, int(port)))


def _forwarding(router: Namespace) -> None:
    for sysctl in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        router.run(["sysctl", "-q", "-w", sysctl])


def _nodes(
    lab: NetnsLab,
    client_ns: Namespace,
    client_impl: str,
    server_ns: Namespace,
    server_impl: str,
    server_address: str,
) -> tuple[Node, Node]:
    """Both nodes up; the client knows the server by name, starting at `server_address`."""
    tunnel = f"{SERVER_TUNNEL}/24"
    server = start_node(lab, server_ns, server_impl, port=SERVER_PORT, addresses=[tunnel])
    tunnel = f"{CLIENT_TUNNEL}/24"
    client = start_node(lab, client_ns, client_impl, port=CLIENT_PORT, addresses=[tunnel])
    server.set_peer(client, [f"{CLIENT_TUNNEL}/32"])
    start = f"{server_address}:{SERVER_PORT}"
    configure_client(client, server, start=start, names=[f"{NAME}:{SERVER_PORT}"])
    return client, server


def _wait_for_dad(ns: Namespace) -> None:
    """Until no IPv6 address is tentative: a new link's link-local address
    is, for about a second, and neighbour discovery waits for it. A real
    uplink is that far along before anything switches to it."""
    wait_until(
        lambda: not ns.ip("-6", "address", "show", "tentative").stdout.strip(),
        timeout=10,
        what=f"duplicate address detection in {ns.name}",
    )


def _handshake(lab: NetnsLab, client: Node) -> None:
    if not client.ping(SERVER_TUNNEL, count=2, timeout=2):
        raise AssertionError(f"no tunnel before the first switch\n{lab.logs()}")


# --- family switch ---------------------------------------------------------------


@dataclass
class FamilyLab(HandoverLab):
    """`active` 0: on the IPv4 uplink; 1: on the IPv6 one."""

    def switch(self) -> Switch:
        if self.active == 0:
            self._bring_up_v6()
            began = time.monotonic()
            self._ip("route", "del", "default", "via", V4_UPLINK[1], check=False)
            self._ip("address", "del", f"{V4_UPLINK[0]}/24", "dev", self.uplinks[0])
            new = V6_UPLINK[0]
        else:
            self._bring_up_v4()
            began = time.monotonic()
            self._ip("-6", "route", "del", "default", "via", V6_UPLINK[1], check=False)
            self._ip("-6", "address", "del", f"{V6_UPLINK[0]}/64", "dev", self.uplinks[1])
            new = V4_UPLINK[0]
        self.active, self.address = 1 - self.active, new
        return Switch(began, time.monotonic(), new)

    def _ip(self, *args: str, check: bool = True) -> None:
        self.client_ns.ip(*args, check=check)

    def _bring_up_v6(self) -> None:
        add_address(self.client_ns, self.uplinks[1], f"{V6_UPLINK[0]}/64")
        self._ip("-6", "route", "replace", "default", "via", V6_UPLINK[1], "dev", self.uplinks[1])

    def _bring_up_v4(self) -> None:
        add_address(self.client_ns, self.uplinks[0], f"{V4_UPLINK[0]}/24")
        self._ip("route", "replace", "default", "via", V4_UPLINK[1], "dev", self.uplinks[0])


def build_family(lab: NetnsLab, *, client_impl: str, server_impl: str) -> FamilyLab:
    """Namespaces, both nodes, the client on IPv4 with a completed handshake."""
    client_ns, router_ns, server_ns = lab.namespace(), lab.namespace(), lab.namespace()
    _forwarding(router_ns)
    up4 = lab.veth(client_ns, router_ns, [f"{V4_UPLINK[0]}/24"], [f"{V4_UPLINK[1]}/24"])
    up6 = lab.veth(client_ns, router_ns, [], [f"{V6_UPLINK[1]}/64"])
    lan = [f"{ROUTER_LAN_V4}/24", f"{ROUTER_LAN_V6}/64"]
    lab.veth(router_ns, server_ns, lan, [f"{SERVER_V4}/24", f"{SERVER_V6}/64"])
    client_ns.ip("route", "add", "default", "via", V4_UPLINK[1])
    server_ns.ip("route", "add", "default", "via", ROUTER_LAN_V4)
    server_ns.ip("-6", "route", "add", "default", "via", ROUTER_LAN_V6)
    client_ns.etc_file("hosts", f"127.0.0.1 localhost\n{SERVER_V4} {NAME}\n{SERVER_V6} {NAME}\n")
    # No DNS server in this lab: queries (for a TTL) fail at once, locally.
    client_ns.etc_file("resolv.conf", "nameserver 127.0.0.1\n")
    for ns in (client_ns, router_ns, server_ns):
        _wait_for_dad(ns)
    client, server = _nodes(lab, client_ns, client_impl, server_ns, server_impl, SERVER_V4)
    uplinks = (up4.a_ifname, up6.a_ifname)
    h = FamilyLab(lab, FAMILY_SWITCH, client_ns, router_ns, server_ns, uplinks, client, server)
    h.address = V4_UPLINK[0]
    _handshake(lab, client)
    return h


# --- moving server -----------------------------------------------------------------


@dataclass
class MovingLab(HandoverLab):
    """`active`: the index of the server's address in MOVING_SERVER_ADDRESSES.
    Each move goes to an address not used before, so no firewall state
    left from an earlier run lets the server's packets in."""

    server_lan: str = ""
    hosts_file: Path | None = None
    dns: BackgroundProcess | None = None

    def switch(self) -> Switch:
        old, new = MOVING_SERVER_ADDRESSES[self.active : self.active + 2]
        began = time.monotonic()
        add_address(self.server_ns, self.server_lan, f"{new}/24")
        self.server_ns.ip("address", "del", f"{old}/24", "dev", self.server_lan)
        self.server_ns.ip("route", "replace", "default", "via", MOVING_ROUTER_LAN)
        self.set_record(new)
        self.active += 1
        return Switch(began, time.monotonic(), self.address)

    def set_record(self, address: str | None) -> None:
        """Points the name at `address` (None: the name no longer exists)."""
        assert self.hosts_file is not None and self.dns is not None
        self.hosts_file.write_text(f"{address} {NAME}\n" if address else "")
        self.dns.popen.send_signal(signal.SIGHUP)  # dnsmasq reads its hosts files anew


def _firewall(lab: NetnsLab, router: Namespace, uplink: str) -> None:
    """Only replies to what the client sent come in on its uplink."""
    rules = lab.work_dir / f"firewall-{router.name}.nft"
    rules.write_text(
        "table inet lab {\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0;\n"
        f'    oifname "{uplink}" ct state established,related accept\n'
        f'    oifname "{uplink}" drop\n'
        "  }\n"
        "}\n"
    )
    router.run(["nft", "-f", str(rules)])


def _start_dns(router: Namespace, hosts: Path) -> BackgroundProcess:
    dns = router.spawn(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            f"--local-ttl={DNS_TTL}",
            f"--listen-address={MOVING_UPLINK[1]}",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--log-queries",
            "--log-facility=-",
        ]
    )
    wait_until(lambda: router.udp_listening(53), timeout=10, what="dnsmasq listening")
    return dns


def build_moving(lab: NetnsLab, *, client_impl: str, server_impl: str) -> MovingLab:
    """Namespaces, DNS, firewall, both nodes, a completed handshake."""
    client_ns, router_ns, server_ns = lab.namespace(), lab.namespace(), lab.namespace()
    _forwarding(router_ns)
    up = lab.veth(client_ns, router_ns, [f"{MOVING_UPLINK[0]}/24"], [f"{MOVING_UPLINK[1]}/24"])
    first = MOVING_SERVER_ADDRESSES[0]
    lan = lab.veth(router_ns, server_ns, [f"{MOVING_ROUTER_LAN}/24"], [f"{first}/24"])
    # The new address, added first, keeps the subnet when the old one goes.
    promote = f"net.ipv4.conf.{lan.b_ifname}.promote_secondaries=1"
    server_ns.run(["sysctl", "-q", "-w", promote])
    client_ns.ip("route", "add", "default", "via", MOVING_UPLINK[1])
    server_ns.ip("route", "add", "default", "via", MOVING_ROUTER_LAN)
    _firewall(lab, router_ns, up.b_ifname)
    hosts = lab.work_dir / f"dns-hosts-{router_ns.name}"
    hosts.write_text(f"{first} {NAME}\n")
    dns = _start_dns(router_ns, hosts)
    client_ns.etc_file("hosts", "127.0.0.1 localhost\n")
    client_ns.etc_file("resolv.conf", f"nameserver {MOVING_UPLINK[1]}\noptions timeout:1\n")
    client, server = _nodes(lab, client_ns, client_impl, server_ns, server_impl, first)
    uplinks = (up.a_ifname, up.a_ifname)
    h = MovingLab(lab, MOVING_SERVER, client_ns, router_ns, server_ns, uplinks, client, server)
    h.address, h.server_lan, h.hosts_file, h.dns = MOVING_UPLINK[0], lan.b_ifname, hosts, dns
    _handshake(lab, client)
    return h


def client_names(client: Node) -> control.PeerState:
    """The client's view of its one peer (wgpy only: the names it keeps)."""
    return control.get_state(client.iface).peers[0]
