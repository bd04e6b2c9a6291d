"""Endpoints by name (wgpy.names): kept, re-resolved, switched.

In namespaces (names_lab.py), a wgpy client knows its server as
`wgsrv.test`, against wgpy and wireguard-go servers, 5 runs each:

- the client's uplink changes from IPv4-only to IPv6-only and back, the
  server being dual-stack with an A and an AAAA record: the downlink-only
  stream resumes within 1 s of the old path going (median under 0.2 s) and
  a TCP connection per run survives;
- the server moves to a new address and its DNS record follows (dnsmasq,
  TTL 1 s), behind a stateful firewall: the tunnel resumes within 10 s, TCP
  survives;
- a name that stops resolving leaves the last address in use, the failure
  shown by `wgpy show`.

Besides: `wgpy up` keeps the names of its file; the embedding API's
candidates; and the decisions of wgpy.names on their own.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import trio
import wgpy
from handover_lab import median, run_handovers, table
from names_lab import (
    MOVING_SERVER_ADDRESSES,
    NAME,
    SERVER_V4,
    SERVER_V6,
    build_family,
    build_moving,
    client_names,
)
from netns import NetnsLab, add_address, entered_netns, require_programs, require_tun, wait_until
from wgnet import WGPY, WIREGUARD_GO, start_node
from wgpy import names
from wgpy.names import NamedEndpoint, Names, parse_candidate, rank

RUNS = 5
FAMILY_RESUME_MAX, FAMILY_RESUME_MEDIAN = 1.0, 0.2
MOVING_RESUME_MAX = 10.0


def _need_lab() -> None:
    require_programs("wireguard-go", "wg", "ping", "ss")
    require_tun()


# --- in namespaces --------------------------------------------------------------------


@pytest.mark.parametrize("server_impl", [WGPY, WIREGUARD_GO])
def test_family_switch_resumes_at_once(netns_lab: NetnsLab, server_impl: str) -> None:
    _need_lab()
    h = build_family(netns_lab, client_impl=WGPY, server_impl=server_impl)
    results = run_handovers(h, RUNS, downlink=True, tcp=True, before=0.4, after=0.8, max_after=3.0)
    report = f"family switch, server {server_impl}\n{table(results)}\n"
    print(report)
    resumes = [r.downlink_resume for r in results]
    assert all(r is not None and r < FAMILY_RESUME_MAX for r in resumes), report
    m = median(resumes)
    assert m is not None and m < FAMILY_RESUME_MEDIAN, report
    assert all(r.tcp_intact for r in results), report
    peer = client_names(h.client)
    assert peer.endpoint_names == [f"{NAME}:51820"]
    assert set(peer.endpoint_addresses) == {f"{SERVER_V4}:51820", f"[{SERVER_V6}]:51820"}


@pytest.mark.parametrize("server_impl", [WGPY, WIREGUARD_GO])
def test_moving_server_is_found_again(netns_lab: NetnsLab, server_impl: str) -> None:
    _need_lab()
    require_programs("dnsmasq", "nft")
    h = build_moving(netns_lab, client_impl=WGPY, server_impl=server_impl)
    results = run_handovers(
        h, RUNS, downlink=True, uplink=True, tcp=True, before=0.4, after=0.8, max_after=12.0
    )
    report = f"moving server, server {server_impl}\n{table(results)}\n"
    print(report)
    for r in results:
        assert r.downlink_resume is not None and r.downlink_resume < MOVING_RESUME_MAX, report
        assert r.uplink_resume is not None and r.uplink_resume < MOVING_RESUME_MAX, report
        assert r.tcp_intact, report
    endpoint = h.client.peer_dump(h.server.public_key).endpoint
    assert endpoint == f"{MOVING_SERVER_ADDRESSES[h.active]}:51820"


def test_name_that_stops_resolving_keeps_the_last_address(netns_lab: NetnsLab) -> None:
    _need_lab()
    require_programs("dnsmasq", "nft")
    h = build_moving(netns_lab, client_impl=WGPY, server_impl=WGPY)
    before = h.client.peer_dump(h.server.public_key).endpoint
    h.set_record(None)
    wait_until(
        lambda: client_names(h.client).endpoint_error is not None,
        timeout=10,
        what="the client to report the failed resolution",
    )
    peer = client_names(h.client)
    assert NAME in (peer.endpoint_error or "")
    assert peer.endpoint_addresses == [f"{MOVING_SERVER_ADDRESSES[0]}:51820"]
    assert h.client.peer_dump(h.server.public_key).endpoint == before
    assert h.client.ping("10.32.0.1", count=2, timeout=2), netns_lab.logs()
    shown = h.client_ns.run([sys.executable, "-m", "wgpy", "show", h.client.iface]).stdout
    assert "endpoint resolution failed" in shown, shown
    # The name comes back: the error goes.
    h.set_record(MOVING_SERVER_ADDRESSES[0])
    wait_until(
        lambda: client_names(h.client).endpoint_error is None,
        timeout=10,
        what="the name to resolve again",
    )


def test_wgpy_up_keeps_the_names_of_its_file(netns_lab: NetnsLab, tmp_path: Path) -> None:
    """`Endpoint = NAME:PORT` and wgpy's `Endpoints =` reach the daemon as
    names; SaveConfig writes them back."""
    _need_lab()
    h = build_family(netns_lab, client_impl=WGPY, server_impl=WGPY)
    iface = netns_lab.interface_name(h.client_ns, prefix="wgn")
    key = wgpy.PrivateKey.generate()
    h.server.set_peer(key.public_key(), ["10.32.0.3/32"])
    conf = tmp_path / f"{iface}.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {key.to_base64()}\n"
        "Address = 10.32.0.3/24\n"
        "SaveConfig = true\n"
        "[Peer]\n"
        f"PublicKey = {h.server.public_key.to_base64()}\n"
        f"Endpoint = {NAME}:51820\n"
        f"Endpoints = [{SERVER_V6}]:51820\n"
        "AllowedIPs = 10.32.0.1/32\n"
    )
    wgpy_cmd = [sys.executable, "-m", "wgpy"]
    up = h.client_ns.run([*wgpy_cmd, "up", str(conf)], check=False, timeout=30)
    assert up.returncode == 0, up.stderr
    try:
        shown = h.client_ns.run([*wgpy_cmd, "show", iface, "--json"]).stdout
        state = json.loads(shown)["interfaces"][0]
        peer = state["peers"][0]
        assert peer["endpoint_names"] == [f"{NAME}:51820", f"[{SERVER_V6}]:51820"]
        assert peer["endpoint"] == f"{SERVER_V4}:51820"
        ping = h.client_ns.run(["ping", "-c", "2", "-W", "2", "10.32.0.1"], check=False)
        assert ping.returncode == 0
    finally:
        down = h.client_ns.run([*wgpy_cmd, "down", str(conf)], check=False, timeout=30)
    assert down.returncode == 0, down.stderr
    saved = conf.read_text()
    assert f"Endpoint = {NAME}:51820" in saved, saved
    assert f"Endpoints = [{SERVER_V6}]:51820" in saved, saved


# --- wgpy.names on its own -------------------------------------------------------------


def test_parse_candidate() -> None:
    assert parse_candidate("wgsrv.test:51820") == ("wgsrv.test", 51820)
    assert parse_candidate("[2001:DB8::1]:1") == ("2001:db8::1", 1)
    for bad in ("wgsrv.test", "x:0", "x:65536", "[fe80::1%eth0]:1", "a b:1", ":1", "x:+1"):
        with pytest.raises(ValueError):
            parse_candidate(bad)


def test_rank_puts_reachable_then_last_worked_first() -> None:
    addresses = [("192.0.2.1", 1), ("2001:db8::1", 1), ("192.0.2.2", 1)]
    v6_only = lambda a: ":" in a  # noqa: E731
    assert rank(addresses, v6_only, None)[0] == ("2001:db8::1", 1)
    everything = lambda a: True  # noqa: E731
    assert rank(addresses, everything, ("192.0.2.2", 1))[0] == ("192.0.2.2", 1)
    assert rank(addresses, everything, None) == addresses


class _Peer:
    """A stand-in for the data plane's view of one peer."""

    def __init__(self, endpoint: tuple[str, int] | None) -> None:
        self.endpoint = endpoint
        self.last_tx_auth = 0.0
        self.last_rx_auth = 0.0
        self.switches: list[tuple[tuple[str, int], str]] = []
        self.reports: list[tuple[str, str]] = []

    def names(self) -> Names:
        def switch(peer_id: int, address: tuple[str, int], why: str) -> None:
            self.endpoint = address
            self.switches.append((address, why))

        return Names(
            switch=switch,
            state=lambda peer_id: self,  # type: ignore[arg-type, return-value]
            report=lambda kind, peer_id, detail: self.reports.append((kind, detail)),
            fwmark=lambda: 0,
        )


LOOPBACK_V4, LOOPBACK_V6 = ("127.0.0.1", 9), ("::1", 9)


def _has_loopback_v6() -> bool:
    return names.reachable("::1") and socket.has_ipv6


def test_unanswered_handshakes_move_to_the_next_address() -> None:
    if not _has_loopback_v6():
        pytest.skip("no IPv6 loopback")
    peer = _Peer(LOOPBACK_V4)

    async def main() -> None:
        n = peer.names()
        n.set(1, [LOOPBACK_V4, LOOPBACK_V6])
        await n.refresh(1)
        assert peer.switches == []  # the current address is one of them
        n.unanswered(1, peer.endpoint)
        n.unanswered(1, peer.endpoint)
        assert [a for a, _ in peer.switches] == [LOOPBACK_V6, LOOPBACK_V4]

    trio.run(main)


def test_roaming_wins_over_resolution() -> None:
    """The peer answers at an address its packets moved us to: a resolution
    that does not contain it does not move the endpoint; once the peer stops
    answering there, it does."""
    peer = _Peer(("127.0.0.2", 9))
    peer.last_tx_auth = peer.last_rx_auth = 100.0

    async def main() -> None:
        n = peer.names()
        n.set(1, [LOOPBACK_V4])
        await n.refresh(1)
        assert peer.switches == []
        peer.last_tx_auth = 100.0 + names.ANSWER_GRACE + 1
        await n.refresh(1)
        assert peer.switches == [(LOOPBACK_V4, "127.0.0.2 is no longer right")]

    trio.run(main)


def test_a_failing_name_keeps_its_last_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = _Peer(None)

    async def main() -> None:
        n = peer.names()
        n.set(1, [("wgsrv.test", 9)])
        answers = [[("127.0.0.1", 9)]]

        async def no_ttl(host: str) -> None:
            return None  # no DNS query leaves the test

        async def resolve(host: str, port: int) -> list[tuple[str, int]]:
            if answers:
                return answers.pop()
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(names, "resolve", resolve)
        monkeypatch.setattr(names, "dns_ttl", no_ttl)
        await n.refresh(1)
        assert peer.endpoint == ("127.0.0.1", 9)  # the first address is set
        await n.refresh(1)
        named = n.get(1)
        assert isinstance(named, NamedEndpoint)
        assert named.addresses == [("127.0.0.1", 9)]
        assert named.error == "wgsrv.test: Name or service not known"
        assert peer.endpoint == ("127.0.0.1", 9)
        assert peer.reports == [("endpoint_resolution_failed", named.error)]

    trio.run(main)


# --- the embedding API -------------------------------------------------------------------


def test_embedding_api_candidates_and_names(netns_lab: NetnsLab) -> None:
    """A Device in this process with two candidate addresses for its
    wireguard-go server: losing the IPv4 route switches it to the IPv6 one
    (an endpoint_switched event) and the tunnel carries on. A name given
    to add_peer is resolved before add_peer returns."""
    _need_lab()
    a, b = netns_lab.namespace(), netns_lab.namespace()
    veth = netns_lab.veth(a, b, ["10.36.0.1/24", "fd36::1/64"], ["10.36.0.2/24", "fd36::2/64"])
    server = start_node(netns_lab, a, WIREGUARD_GO, port=51820, addresses=["10.200.0.1/24"])
    key = wgpy.PrivateKey.generate()
    server.set_peer(key.public_key(), ["10.200.0.2/32"])
    name = netns_lab.interface_name(b, prefix="wge")

    async def ping() -> bool:
        argv = ["ping", "-c", "1", "-W", "2", "10.200.0.1"]
        r = await trio.to_thread.run_sync(lambda: b.run(argv, check=False))
        return r.returncode == 0

    async def main() -> None:
        async with wgpy.Device(name, private_key=key) as dev:
            events = dev.subscribe()
            await dev.add_peer(
                server.public_key,
                endpoint=("10.36.0.1", 51820),
                endpoints=["[fd36::1]:51820"],
                allowed_ips=["10.200.0.1/32"],
            )
            await trio.to_thread.run_sync(lambda: add_address(b, name, "10.200.0.2/24"))
            await trio.to_thread.run_sync(lambda: b.ip("link", "set", name, "up"))
            assert await ping()
            named = dev.endpoint_names(server.public_key)
            assert named is not None
            assert named.candidates == [("10.36.0.1", 51820), ("fd36::1", 51820)]
            await trio.to_thread.run_sync(
                lambda: b.ip("address", "del", "10.36.0.2/24", "dev", veth.b_ifname)
            )
            with trio.fail_after(5):
                async for e in events:
                    if e.kind == "endpoint_switched":
                        assert e.peer == server.public_key
                        assert e.endpoint == ("fd36::1", 51820)
                        break
            assert await ping()
            other = wgpy.PrivateKey.generate().public_key()
            peer = await dev.add_peer(other, endpoint="localhost:9")
            state = dev.datapath.peer_state(peer.id)
            assert state.endpoint in (("127.0.0.1", 9), ("::1", 9))
            with pytest.raises(ValueError):
                await dev.add_peer(other, endpoint="not a name:9")

    with entered_netns(b.name):
        trio.run(main)
