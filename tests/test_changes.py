"""Applying configuration changes (wgpy.changes) to a device: all or nothing,
and wireguard-go's meaning of every edge case; through the UAPI's parser and
framing, on the stand-in device of tests/uapi_fakes.py."""

from __future__ import annotations

import errno
import functools

import trio
from uapi_fakes import (
    FakeDevice,
    apply,
    hexkey,
    new_key,
    set_request,
)
from wgpy import PresharedKey, PrivateKey

# --- applying to a device ------------------------------------------------------------


def test_atomic_when_third_peer_is_invalid() -> None:
    device = FakeDevice(private_key=PrivateKey.generate())
    old = new_key()
    trio.run(functools.partial(device.add_peer, old))
    device.add_allowed_ip_prefixes(device.peer(old), [("10.0.0.0", 8)])
    before = device.snapshot()
    reply = set_request(
        device,
        "listen_port=4000",
        "fwmark=7",
        "replace_peers=true",
        f"public_key={hexkey(new_key())}",
        "allowed_ip=10.1.0.0/16",
        f"public_key={hexkey(new_key())}",
        "endpoint=192.0.2.1:5",
        f"public_key={hexkey(new_key())}",
        "allowed_ip=10.3.0.0/16",
        "allowed_ip=10.3.0.0/99",  # invalid: nothing of the above may happen
    )
    assert reply == b"errno=-22\n\n"
    assert device.snapshot() == before


def test_port_in_use_changes_nothing() -> None:
    device = FakeDevice(private_key=PrivateKey.generate(), fwmark=3, busy_ports={4000})
    before = device.snapshot()
    reply = set_request(
        device,
        f"private_key={hexkey(PrivateKey.generate())}",
        "fwmark=9",  # applied first, then restored when the port fails
        "listen_port=4000",
        "replace_peers=true",
        f"public_key={hexkey(new_key())}",
    )
    assert reply == b"errno=-98\n\n"
    assert device.snapshot() == before


def test_fwmark_failure_is_eaddrinuse_like_wireguard_go() -> None:
    device = FakeDevice(fwmark_error=PermissionError(errno.EPERM, "Operation not permitted"))
    before = device.snapshot()
    assert set_request(device, "fwmark=5", f"public_key={hexkey(new_key())}") == b"errno=-98\n\n"
    assert device.snapshot() == before


def test_device_keys() -> None:
    device = FakeDevice()
    key = PrivateKey.generate()
    apply(device, f"private_key={hexkey(key)}", "listen_port=0", "fwmark=42")
    assert (device.private_key, device.listen_port, device.fwmark) == (key, 43210, 42)
    apply(device, f"private_key={'0' * 64}", "fwmark=0")
    assert (device.private_key, device.fwmark) == (None, 0)


def test_peer_lifecycle() -> None:
    device = FakeDevice(private_key=PrivateKey.generate())
    a, b = new_key(), new_key()
    psk = PresharedKey.generate()
    apply(
        device,
        f"public_key={hexkey(a)}",
        f"preshared_key={hexkey(psk)}",
        "endpoint=[2001:db8::1]:51820",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.7/24",
        f"public_key={hexkey(b)}",
        "allowed_ip=10.0.0.0/24",  # taken from a: a prefix has one owner
        "allowed_ip=fd00::/64",
    )
    peer = device.peer(a)
    assert (peer.preshared_key, peer.endpoint, peer.persistent_keepalive) == (
        psk,
        ("2001:db8::1", 51820),
        25,
    )
    assert device.prefixes(a) == [] and device.prefixes(b) == ["10.0.0.0/24", "fd00::/64"]
    apply(device, f"public_key={hexkey(a)}", f"preshared_key={'0' * 64}", "endpoint=1.2.3.4:5")
    assert (peer.preshared_key, peer.endpoint, peer.persistent_keepalive) == (
        None,
        ("1.2.3.4", 5),
        25,  # unchanged
    )
    apply(device, f"public_key={hexkey(b)}", "remove=true", "allowed_ip=10.9.0.0/16")
    assert list(device.peers_by_key) == [a] and device.prefixes(b) == []


def test_allowed_ip_lines_apply_in_order() -> None:
    device = FakeDevice()
    a = new_key()
    apply(device, f"public_key={hexkey(a)}", "allowed_ip=10.0.0.0/8", "allowed_ip=10.1.0.0/16")
    apply(
        device,
        f"public_key={hexkey(a)}",
        "allowed_ip=10.2.0.0/16",
        "replace_allowed_ips=true",  # removes all three
        "allowed_ip=10.3.0.0/16",
        "allowed_ip=10.4.0.0/16",
        "allowed_ip=-10.3.0.0/16",  # the newer removal syntax
        "allowed_ip=-10.99.0.0/16",  # not there: no error, as wireguard-go
    )
    assert device.prefixes(a) == ["10.4.0.0/16"]


def test_own_public_key_is_a_dummy_peer() -> None:
    key = PrivateKey.generate()
    device = FakeDevice(private_key=key)
    apply(device, f"public_key={hexkey(key.public_key())}", "allowed_ip=10.0.0.0/8")
    assert device.peers == [] and device.owner == {}
    # Decided after the request's own private_key line, as wireguard-go does.
    other = PrivateKey.generate()
    apply(
        device,
        f"private_key={hexkey(other)}",
        f"public_key={hexkey(other.public_key())}",
        f"public_key={hexkey(key.public_key())}",
    )
    assert [p.public_key for p in device.peers] == [key.public_key()]


def test_update_only() -> None:
    device = FakeDevice()
    a, b = new_key(), new_key()
    apply(device, f"public_key={hexkey(a)}")
    apply(
        device,
        f"public_key={hexkey(a)}",
        "update_only=true",
        "endpoint=1.1.1.1:1",
        f"public_key={hexkey(b)}",  # absent: not created
        "allowed_ip=10.0.0.0/8",
        "update_only=true",
    )
    assert list(device.peers_by_key) == [a] and device.peer(a).endpoint == ("1.1.1.1", 1)
    assert device.owner == {}


def test_add_and_remove_in_one_request() -> None:
    device = FakeDevice()
    a = new_key()
    apply(
        device,
        f"public_key={hexkey(a)}",
        "allowed_ip=10.0.0.0/8",
        f"public_key={hexkey(a)}",
        "remove=true",
        f"public_key={hexkey(a)}",  # and a fresh one again
        "endpoint=1.2.3.4:5",
    )
    assert device.peer(a).endpoint == ("1.2.3.4", 5) and device.owner == {}


def test_replace_peers() -> None:
    device = FakeDevice()
    a, b = new_key(), new_key()
    apply(device, f"public_key={hexkey(a)}", "allowed_ip=10.0.0.0/8")
    apply(device, "replace_peers=true", f"public_key={hexkey(b)}")
    assert list(device.peers_by_key) == [b] and device.owner == {}
