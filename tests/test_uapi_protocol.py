"""The UAPI protocol without I/O (wgpy.uapi.protocol): every validation
error with its errno, request framing, and the exact text of a get reply."""

from __future__ import annotations

import pytest
from uapi_fakes import (
    EINVAL,
    EIO,
    EPROTO,
    PEER,
    FakeDevice,
    apply,
    exchange,
    hexkey,
    new_key,
    parse_error,
)
from wgpy import PresharedKey, PrivateKey, PublicKey
from wgpy.changes import DeviceChange
from wgpy.uapi import protocol
from wgpy.uapi.protocol import RequestReader, parse_set

# --- validation: every error path ---------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (["listen_port"], EPROTO),  # no '='
        (["", "listen_port=1"], EPROTO),  # an empty line inside the body
        (["bogus=1"], EINVAL),
        (["protocol_version=1"], EINVAL),  # a peer key before any public_key
        (["last_handshake_time_sec=0"], EINVAL),  # get-only keys
        (["errno=0"], EINVAL),
        (["private_key=" + "a" * 63], EINVAL),
        (["private_key=" + "a" * 65], EINVAL),
        (["private_key=" + "g" * 64], EINVAL),
        (["private_key=" + "aa " * 21 + "a"], EINVAL),  # bytes.fromhex would skip spaces
        (["listen_port=0x10"], EINVAL),
        (["listen_port=+5"], EINVAL),
        (["listen_port=-1"], EINVAL),
        (["listen_port= 5"], EINVAL),
        (["listen_port=5 "], EINVAL),
        (["listen_port=1_000"], EINVAL),
        (["listen_port=\uff15"], EINVAL),  # a fullwidth digit: isdigit() but not ASCII
        (["listen_port="], EINVAL),
        (["listen_port=65536"], EINVAL),
        (["listen_port=" + "9" * 3000], EINVAL),
        (["fwmark=4294967296"], EINVAL),
        (["fwmark=0x10"], EINVAL),
        (["replace_peers=false"], EINVAL),
        (["replace_peers=TRUE"], EINVAL),
        (["public_key=" + "ab" * 31], EINVAL),
        (["public_key=xyz"], EINVAL),
        ([PEER, "private_key=" + "11" * 32], EINVAL),  # device keys end at the first peer
        ([PEER, "listen_port=1"], EINVAL),
        ([PEER, "replace_peers=true"], EINVAL),
        ([PEER, "bogus=1"], EINVAL),
        ([PEER, "remove=false"], EINVAL),
        ([PEER, "update_only=1"], EINVAL),
        ([PEER, "replace_allowed_ips=yes"], EINVAL),
        ([PEER, "protocol_version=2"], EINVAL),
        ([PEER, "protocol_version=01"], EINVAL),
        ([PEER, "preshared_key=" + "0" * 62], EINVAL),
        ([PEER, "persistent_keepalive_interval=65536"], EINVAL),
        ([PEER, "persistent_keepalive_interval=-1"], EINVAL),
        ([PEER, "endpoint=1.2.3.4"], EINVAL),
        ([PEER, "endpoint=1.2.3.4:"], EINVAL),
        ([PEER, "endpoint=1.2.3.4:65536"], EINVAL),
        ([PEER, "endpoint=1.2.3.4:0x10"], EINVAL),
        ([PEER, "endpoint=[1.2.3.4]:5"], EINVAL),  # brackets only around IPv6
        ([PEER, "endpoint=::1:5"], EINVAL),  # IPv6 needs brackets
        ([PEER, "endpoint=[::1]"], EINVAL),
        ([PEER, "endpoint=example.com:51820"], EINVAL),  # wg resolves names itself
        ([PEER, "endpoint=[fe80::1%eth0]:5"], EINVAL),  # the data plane takes no scope id
        ([PEER, "endpoint=1.2.3.04:5"], EINVAL),
        ([PEER, "endpoint=1.2.3.4.5:5"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.1"], EINVAL),  # no prefix length
        ([PEER, "allowed_ip=10.0.0.1/33"], EINVAL),
        ([PEER, "allowed_ip=::/129"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.1/255.0.0.0"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.1/+8"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.1/"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.01/32"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.1/32\x00"], EINVAL),
        ([PEER, "allowed_ip=10.0.0.1\x00/32"], EINVAL),
        ([PEER, "allowed_ip=--10.0.0.1/32"], EINVAL),
        ([PEER, "allowed_ip=fe80::1%lo/64"], EINVAL),
        ([PEER, "allowed_ip=1.2.3.4/32 "], EINVAL),
        ([PEER, "allowed_ip=caf\xe9::/16"], EINVAL),
        ([PEER, "x" * 5000 + "=1"], EIO),  # a line over 4 KiB
    ],
)
def test_invalid_lines(lines: list[str], code: int) -> None:
    assert parse_error(*lines) == code


def test_first_error_wins() -> None:
    # wireguard-go stops at the first bad line, so its error is the one reported.
    assert parse_error("bogus=1", "no-equals-sign") == EINVAL
    assert parse_error("no-equals-sign", "bogus=1") == EPROTO


def test_valid_values() -> None:
    own = PrivateKey.generate()
    psk = PresharedKey.generate()
    request = parse_set(
        f"private_key={hexkey(own).upper()}\n"  # Go's hex decoding takes either case
        "listen_port=00012\nfwmark=4294967295\nreplace_peers=true\n"
        f"{PEER}\nprotocol_version=1\npreshared_key={hexkey(psk)}\n"
        "endpoint=[::ffff:1.2.3.4]:7\npersistent_keepalive_interval=65535\n"
        "replace_allowed_ips=true\nallowed_ip=10.0.0.5/24\nallowed_ip=-fd00:0::1/128\n"
        "allowed_ip=::ffff:10.0.0.1/128\nupdate_only=true\nremove=true\n"
        f"{PEER}\nendpoint=192.0.2.1:0\n"
    )
    assert request.private_key == own and not request.remove_private_key
    assert (request.listen_port, request.fwmark, request.replace_peers) == (12, 2**32 - 1, True)
    first, second = request.peers
    assert first.public_key == second.public_key == PublicKey.from_bytes(bytes.fromhex("ab" * 32))
    assert first.preshared_key == psk and not first.clear_preshared_key
    assert first.endpoint == ("::ffff:1.2.3.4", 7)
    assert first.persistent_keepalive == 65535
    assert first.update_only and first.remove
    assert first.allowed_ips == [
        ("replace", "", 0),
        ("add", "10.0.0.5", 24),  # the data plane masks host bits
        ("remove", "fd00::1", 128),  # canonical text
        ("add", "::ffff:10.0.0.1", 128),
    ]
    assert second.endpoint == ("192.0.2.1", 0) and not second.remove


def test_zero_keys_mean_remove() -> None:
    request = parse_set(f"private_key={'0' * 64}\n{PEER}\npreshared_key={'0' * 64}\n")
    assert request.private_key is None and request.remove_private_key
    assert request.peers[0].preshared_key is None and request.peers[0].clear_preshared_key


def test_empty_request() -> None:
    assert parse_set(b"") == DeviceChange()


# --- framing ----------------------------------------------------------------------


def frames(data: bytes, *, eof: bool = True, byte_by_byte: bool = False) -> list[protocol.Frame]:
    reader = RequestReader()
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    out: list[protocol.Frame] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (frame := reader.next_frame()) is not None:
            out.append(frame)
            if frame.kind in ("close", "reply-and-close"):
                return out
    if eof:
        reader.feed_eof()
        while (frame := reader.next_frame()) is not None:
            out.append(frame)
            if frame.kind in ("close", "reply-and-close"):
                return out
    return out


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_framing_pipelined_requests(byte_by_byte: bool) -> None:
    data = b"get=1\n\nset=1\n\nset=1\nlisten_port=1\nfwmark=2\n\nget=1\n\n"
    got = frames(data, byte_by_byte=byte_by_byte)
    assert [(f.kind, f.body) for f in got] == [
        ("get", b""),
        ("set", b""),
        ("set", b"listen_port=1\nfwmark=2\n"),
        ("get", b""),
        ("close", b""),  # EOF between requests
    ]


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"get=1\nx", b"errno=22\n\n"),  # positive: wg reads a get's errno as unsigned
        (b"get=1\nget=1\n\n", b"errno=22\n\n"),
        (b"set=1\nlisten_port=1\n", b"errno=-71\n\n"),  # EOF before the blank line
        (b"set=1\nlisten_port=1", b"errno=-71\n\n"),
        (b"set=1\n" + b"a" * 5000, b"errno=-5\n\n"),  # a line over 4 KiB
    ],
)
def test_framing_errors(data: bytes, reply: bytes) -> None:
    assert frames(data)[-1] == protocol.Frame("reply-and-close", reply=reply)


@pytest.mark.parametrize(
    "data",
    [b"", b"get=1", b"get=1\n", b"bogus\n", b"\n", b"set=1\r\n\n", b"GET=1\n\n", b"x" * 5000],
)
def test_framing_closes_without_reply(data: bytes) -> None:
    assert frames(data)[-1] == protocol.CLOSE


def test_framing_long_line_is_caught_while_streaming() -> None:
    # The connection ends as soon as a line passes 4 KiB, not when it ends.
    assert frames(b"set=1\nlisten_port=1\n" + b"9" * 4100, eof=False)[-1].kind == "reply-and-close"
    assert frames(b"x" * 4100, eof=False)[-1] == protocol.CLOSE


def test_framing_request_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_REQUEST", 1000)
    data = b"set=1\n" + b"allowed_ip=10.0.0.1/32\n" * 100
    assert frames(data, eof=False)[-1] == protocol.Frame("reply-and-close", reply=b"errno=-5\n\n")


def test_framing_finds_terminator_across_chunks() -> None:
    reader = RequestReader()
    for chunk in (b"set=1\nfwmark=1\n", b"\n"):
        reader.feed(chunk)
        frame = reader.next_frame()
    assert frame == protocol.Frame("set", body=b"fwmark=1\n")


# --- the get reply ----------------------------------------------------------------------


def test_get_reply_text() -> None:
    key = PrivateKey.generate()
    device = FakeDevice(private_key=key, listen_port=51820, fwmark=0x2A)
    device.last_handshake = 1_700_000_000.25
    a, b = new_key(), new_key()
    psk = PresharedKey.generate()
    apply(
        device,
        f"public_key={hexkey(a)}",
        f"preshared_key={hexkey(psk)}",
        "endpoint=[fd00::1]:51821",
        "persistent_keepalive_interval=25",
        "allowed_ip=fd00::/64",
        "allowed_ip=10.0.0.0/24",
        "allowed_ip=10.0.0.0/16",
        "allowed_ip=9.0.0.0/8",
        f"public_key={hexkey(b)}",
    )
    common = "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=250000000\n"
    common += "tx_bytes=1000\nrx_bytes=2000\n"
    assert exchange(device, b"get=1\n\n").decode() == (
        f"private_key={hexkey(key)}\nlisten_port=51820\nfwmark=42\n"
        f"public_key={hexkey(a)}\npreshared_key={hexkey(psk)}\nprotocol_version=1\n"
        f"endpoint=[fd00::1]:51821\n{common}persistent_keepalive_interval=25\n"
        "wgpy_invalid_source_packets=0\n"
        # IPv4 first, by address then length: the same text every time.
        "allowed_ip=9.0.0.0/8\nallowed_ip=10.0.0.0/16\nallowed_ip=10.0.0.0/24\n"
        "allowed_ip=fd00::/64\n"
        f"public_key={hexkey(b)}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
        f"{common}persistent_keepalive_interval=0\n"
        "wgpy_invalid_source_packets=0\n"
        "errno=0\n\n"
    )


def test_get_reply_of_empty_device() -> None:
    device = FakeDevice(listen_port=0)
    assert exchange(device, b"get=1\n\n") == b"errno=0\n\n"


def test_connection_serves_several_requests() -> None:
    device = FakeDevice(listen_port=0)
    replies = exchange(device, b"get=1\n\nset=1\nfwmark=3\n\nget=1\n\nset=1\nbad\n\nget=1\n\n")
    got = fwmark = b"fwmark=3\n"
    assert (
        replies == b"errno=0\n\n" * 2 + got + b"errno=0\n\nerrno=-71\n\n" + fwmark + b"errno=0\n\n"
    )
