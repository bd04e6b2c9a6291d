"""The registry sync against a real etcd on loopback, in-process, with a
stand-in device (tests/registry_support.py): snapshot and watch, ownership
of local peers, refusals, reconnects (through tests/tcp_proxy.py, which can
cut or silence the path while etcd stays up) and compaction."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
from etcd_server import EtcdServer
from registry_support import (
    NETWORK,
    RegistryFakeDevice,
    entry,
    expected,
    new_key,
    raw_put,
    until,
)
from tcp_proxy import Proxy
from wgpy import PresharedKey, changes
from wgpy.changes import DeviceChange, PeerChange
from wgpy.events import DeviceEvent
from wgpy.registry import sync as sync_module
from wgpy.registry.admin import AdminError, RegistryAdmin
from wgpy.registry.config import parse_registry_url
from wgpy.registry.etcd import EtcdClient
from wgpy.registry.layout import claim_key, key_name, peer_key
from wgpy.registry.sync import RegistrySync

Body = Callable[[RegistrySync, RegistryAdmin, RegistryFakeDevice], Awaitable[None]]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def run(
    etcd: EtcdServer,
    body: Body,
    *,
    device: RegistryFakeDevice | None = None,
    proxy: Proxy | None = None,
    query: str = "",
    events: list[DeviceEvent] | None = None,
) -> None:
    """Runs a sync on `device` (through `proxy` if given) while `body` runs."""
    device = device or RegistryFakeDevice()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = etcd.client_port
            if proxy is not None:
                port = await nursery.start(proxy.run)
            config = parse_registry_url(f"etcd://127.0.0.1:{port}/{NETWORK}{query}")
            sync = RegistrySync(config, device, (events if events is not None else []).append)
            await nursery.start(sync.run)
            async with EtcdClient(etcd.http_url, config.target) as client:
                await body(sync, RegistryAdmin(client, NETWORK), device)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def listed(admin: RegistryAdmin) -> dict[str, list[str]]:
    return expected((await admin.listing()).entries)


def test_snapshot_then_watch(etcd: EtcdServer) -> None:
    """Peers written before the gateway starts, then added, changed and removed."""
    before = [entry(new_key(), f"10.1.{i // 250}.{i % 250}/32") for i in range(300)]

    async def body(sync: RegistrySync, admin: RegistryAdmin, device: RegistryFakeDevice) -> None:
        await until(lambda: sync.report().state == "connected", timeout=10, what="connected")
        await until(lambda: len(device.peers) == 300, timeout=10, what="snapshot applied")
        assert device.state() == expected(before)
        added = [entry(new_key(), f"10.2.0.{i}/32", f"fd00:2::{i:x}/128") for i in range(20)]
        assert all(r == "added" for r in await admin.import_peers(added))
        await admin.put_peer(entry(before[0].public_key, "10.3.0.0/24"))  # moved
        for e in before[1:11]:
            await admin.remove_peer(e.public_key)
        want = await listed(admin)
        assert len(want) == 310
        await until(lambda: device.state() == want, timeout=5, what="watched changes applied")
        report = sync.report()
        # One snapshot, then the watch; a reconnect, should a health probe go
        # unanswered on a loaded machine, resumes the watch without a reload.
        assert (report.reloads, report.refused) == (1, 0)
        assert report.owned == frozenset(device.peers_by_key)

    async def prepare() -> None:
        async with EtcdClient(etcd.http_url, parse_registry_url(f"{etcd.url}/x").target) as c:
            await RegistryAdmin(c, NETWORK).import_peers(before)

    trio.run(prepare)
    run(etcd, body)


def test_local_peers_are_left_alone(etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A locally configured peer: its key or its allowed IP in the registry
    is refused; removing that entry leaves the local peer; the registry
    never removes what it did not create, and re-creates its own peer when
    it is removed locally."""
    monkeypatch.setattr(sync_module, "RECHECK_INTERVAL", 0.5)
    device = RegistryFakeDevice()
    local, other, ok = new_key(), new_key(), new_key()

    async def body(sync: RegistrySync, admin: RegistryAdmin, _: RegistryFakeDevice) -> None:
        local_set = DeviceChange(peers=[PeerChange(local, allowed_ips=[("add", "10.9.9.9", 32)])])
        async with device.config_lock:
            await changes.apply(device, local_set)
        await admin.put_peer(entry(local, "10.9.0.1/32"))
        await admin.put_peer(entry(other, "10.9.9.9/32"))
        await admin.put_peer(entry(ok, "10.9.0.2/32"))
        await until(lambda: ok in device.peers_by_key, timeout=5, what="the acceptable peer")
        await until(lambda: sync.report().refused == 2, timeout=5, what="two refusals")
        assert device.prefixes(local) == ["10.9.9.9/32"]
        assert other not in device.peers_by_key
        reasons = {name: reason for _, name, reason in sync.report().refusals}
        assert "local peer has this public key" in reasons[key_name(local)]
        assert "10.9.9.9/32 belongs to a local peer" in reasons[key_name(other)]
        assert local not in sync.report().owned
        removal = DeviceChange(peers=[PeerChange(ok, remove=True)])  # as `wg set ... remove`
        async with device.config_lock:
            await changes.apply(device, removal)
        await until(lambda: ok in device.peers_by_key, timeout=5, what="registry peer re-created")
        await admin.remove_peer(local)
        await admin.remove_peer(ok)
        await until(lambda: ok not in device.peers_by_key, timeout=5, what="registry peer removed")
        assert device.prefixes(local) == ["10.9.9.9/32"], "the local peer stays"

    run(etcd, body, device=device)


def test_malformed_and_conflicting_entries(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each bad entry is refused with a log line and an event; the rest apply."""
    good = [entry(new_key(), f"10.4.0.{i}/32") for i in range(10)]
    owner, thief, unclaimed, mismatch, hostbits = (new_key() for _ in range(5))
    prefix = f"/wgpy/networks/{NETWORK}/peers/"
    bad = {
        "not-a-key": '{"public_key": "x", "allowed_ips": []}',
        key_name(new_key()): "{not json",
        key_name(hostbits): json.dumps(
            {"public_key": hostbits.to_base64(), "allowed_ips": ["10.5.0.0/8"]}
        ),
        key_name(mismatch): entry(new_key(), "10.5.0.3/32").to_json(),
        key_name(thief): entry(thief, "10.5.0.1/32").to_json(),  # owner's IP
        key_name(unclaimed): entry(unclaimed, "10.5.0.2/32").to_json(),  # no ips/ key
    }
    events: list[DeviceEvent] = []

    async def body(sync: RegistrySync, admin: RegistryAdmin, device: RegistryFakeDevice) -> None:
        await admin.put_peer(entry(owner, "10.5.0.1/32"))
        c = admin.client
        for name, value in bad.items():
            await raw_put(c, prefix + name, value)
        await raw_put(
            c,
            prefix + key_name(new_key()),
            '{"public_key":"k","allowed_ips":[],"preshared_key":"secret"}',
        )
        await admin.import_peers(good)
        with pytest.raises(AdminError, match="belongs to peer"):
            await admin.put_peer(entry(thief, "10.5.0.1/32"))
        want = expected([*good, entry(owner, "10.5.0.1/32")])
        await until(lambda: device.state() == want, timeout=5, what="good peers")
        await until(lambda: sync.report().refused == 7, timeout=5, what="7 refusals")

    with caplog.at_level(logging.WARNING, logger="wgpy.registry"):
        run(etcd, body, events=events)
    refusals = [r.getMessage() for r in caplog.records if "refused peer" in r.getMessage()]
    assert len(refusals) == 7, refusals
    text = "\n".join(refusals)
    for reason in (
        "not a URL-safe base64",
        "not JSON",
        "host bits",
        "differs from the key name",
        "10.5.0.1/32 belongs to peer",
        "10.5.0.2/32 is not claimed",
        "keys are never stored there",
    ):
        assert reason in text
    assert "secret" not in text
    assert sum(e.kind == "registry_refused" for e in events) == 7


def test_reconnect_resumes_and_compaction_reloads(etcd: EtcdServer) -> None:
    """Cut from etcd: peers stay; changes made meanwhile arrive on reconnect,
    from the last revision; after a compaction, from a new snapshot (peers
    removed meanwhile are removed)."""
    proxy = Proxy(etcd.client_port)
    first = [entry(new_key(), f"10.6.0.{i}/32") for i in range(20)]
    events: list[DeviceEvent] = []

    def registry_events(since: int) -> list[str]:
        return [e.kind for e in events[since:] if e.kind.startswith("registry_")]

    async def outage(
        sync: RegistrySync, admin: RegistryAdmin, device: RegistryFakeDevice, compact: bool
    ) -> None:
        # Counted from just before the cut: on a loaded machine a health probe
        # may go unanswered before it and add a reconnect of its own (seen
        # with tests/test_registry_outage.py beside the main suite).
        await until(lambda: sync.report().state == "connected", timeout=5, what="connected")
        start, seen = sync.report(), len(events)
        before = device.state()
        proxy.cut()
        await until(lambda: sync.report().state == "disconnected", timeout=3, what="disconnect")
        await admin.import_peers(
            [entry(new_key(), f"10.7.{int(compact)}.{i}/32") for i in range(5)]
        )
        for e in first[:3] if not compact else first[3:6]:
            await admin.remove_peer(e.public_key)
        if compact:
            await admin.client.compact(etcd.revision())
        await trio.sleep(1.0)
        assert device.state() == before, "nothing changes while away"
        proxy.restore()
        want = await listed(admin)
        await until(lambda: device.state() == want, timeout=5, what="changes made while away")
        # After a compaction the snapshot is applied before the watch opens,
        # and only an open watch counts as connected.
        await until(lambda: sync.report().state == "connected", timeout=5, what="connected")
        end = sync.report()
        reloaded = end.reloads - start.reloads
        assert (end.reconnects - start.reconnects, reloaded) == (1, int(compact)), "one reconnect"
        assert registry_events(seen) == ["registry_disconnected", "registry_connected"]

    async def body(sync: RegistrySync, admin: RegistryAdmin, device: RegistryFakeDevice) -> None:
        await admin.import_peers(first)
        await until(lambda: len(device.peers) == 20, timeout=5, what="first peers")
        await outage(sync, admin, device, compact=False)  # resumed from the last revision
        await outage(sync, admin, device, compact=True)  # reloaded from a new snapshot

    run(etcd, body, proxy=proxy, events=events)


def test_silent_etcd_is_noticed(etcd: EtcdServer) -> None:
    """No reset, no answer: the probe notices within its timeout."""
    proxy = Proxy(etcd.client_port)

    async def body(sync: RegistrySync, admin: RegistryAdmin, device: RegistryFakeDevice) -> None:
        await admin.put_peer(entry(new_key(), "10.8.0.1/32"))
        await until(lambda: len(device.peers) == 1, timeout=5, what="peer")
        proxy.freeze()
        limit = sync_module.PROBE_INTERVAL + sync_module.PROBE_TIMEOUT + 1.5
        await until(lambda: sync.report().state == "disconnected", timeout=limit, what="noticed")
        assert "no answer" in (sync.report().error or "")
        assert len(device.peers) == 1
        proxy.restore()
        await admin.put_peer(entry(new_key(), "10.8.0.2/32"))
        await until(lambda: len(device.peers) == 2, timeout=8, what="back")

    run(etcd, body, proxy=proxy)


def test_preshared_key_references(etcd: EtcdServer, tmp_path: Path) -> None:
    """A reference names a local file; without it the peer is refused, never
    run without its key; the registry holds only the name."""
    psk_dir = tmp_path / "psk"
    psk_dir.mkdir()
    psk = PresharedKey.generate()
    (psk_dir / "site-a").write_text(psk.to_base64() + "\n")
    with_file, without = new_key(), new_key()

    async def body(sync: RegistrySync, admin: RegistryAdmin, device: RegistryFakeDevice) -> None:
        await admin.put_peer(entry(with_file, "10.10.0.1/32", preshared_key_ref="site-a"))
        await admin.put_peer(entry(without, "10.10.0.2/32", preshared_key_ref="site-b"))
        await until(lambda: with_file in device.peers_by_key, timeout=5, what="peer with PSK")
        await until(lambda: sync.report().refused == 1, timeout=5, what="refusal")
        assert device.peer(with_file).preshared_key == psk
        assert without not in device.peers_by_key
        _, kvs = await admin.client.snapshot(admin.prefix)
        assert all(psk.to_base64().encode() not in kv.value for kv in kvs)
        await admin.put_peer(entry(with_file, "10.10.0.1/32"))  # reference dropped
        await until(lambda: device.peer(with_file).preshared_key is None, timeout=5, what="cleared")

    run(etcd, body, query=f"?psk-dir={psk_dir}")


def test_two_writers_cannot_share_an_allowed_ip(etcd: EtcdServer) -> None:
    """Twenty concurrent writers, one allowed IP: exactly one peer gets it."""
    keys = [new_key() for _ in range(20)]

    async def main() -> None:
        target = parse_registry_url(f"{etcd.url}/x").target
        outcomes: list[str] = []
        async with EtcdClient(etcd.http_url, target) as c1, EtcdClient(etcd.http_url, target) as c2:

            async def write(client: EtcdClient, key: object) -> None:
                try:
                    outcomes.append(
                        await RegistryAdmin(client, NETWORK).put_peer(entry(key, "10.11.0.1/32"))
                    )  # type: ignore[arg-type]
                except AdminError as e:
                    outcomes.append(str(e))

            async with trio.open_nursery() as nursery:
                for i, key in enumerate(keys):
                    nursery.start_soon(write, (c1, c2)[i % 2], key)
            assert outcomes.count("added") == 1, outcomes
            assert sum("belongs to peer" in o for o in outcomes) == 19
            listing = await RegistryAdmin(c1, NETWORK).listing()
            assert len(listing.entries) == 1 and not listing.problems
            claim = await c1.get(claim_key(NETWORK, ("10.11.0.1", 32)).encode())
            assert claim is not None
            assert claim.value == listing.entries[0].public_key.to_base64().encode()
            assert await c1.get(peer_key(NETWORK, listing.entries[0].public_key).encode())

    trio.run(main)
