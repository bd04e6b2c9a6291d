"""Transport sessions and handshake acceptance rules.

Expected wire bytes come from tests/wgref.py (hashlib/hmac + `cryptography`),
which derives the transport keys on its own from the same fixed inputs.
"""

import os
import struct

import pytest
import wgpy
import wgref
from cryptography.exceptions import InvalidTag
from wgpairs import Inputs, establish

KERNEL_WINDOW = 8192 - 64  # COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS on 64-bit
KERNEL_REJECT_AFTER_MESSAGES = 2**64 - 1 - KERNEL_WINDOW - 1


def test_constants_match_kernel():
    assert wgpy.REPLAY_WINDOW_SIZE == KERNEL_WINDOW
    assert wgpy.REJECT_AFTER_MESSAGES == KERNEL_REJECT_AFTER_MESSAGES
    assert wgpy.REKEY_AFTER_MESSAGES == 2**60
    assert wgpy.REKEY_AFTER_TIME == 120
    assert wgpy.REJECT_AFTER_TIME == 180
    assert wgpy.KEEPALIVE_TIMEOUT == 10
    assert wgpy.REKEY_TIMEOUT == 5
    assert wgpy.REKEY_ATTEMPT_TIME == 90
    assert wgpy.COOKIE_SECRET_MAX_AGE == 120
    assert (wgpy.INITIATION_LEN, wgpy.RESPONSE_LEN, wgpy.COOKIE_REPLY_LEN) == (148, 92, 64)
    assert wgpy.TRANSPORT_MIN_LEN == 32


# --- encryption and padding ----------------------------------------------------------------


LENGTHS = [*range(0, 50), 63, 64, 65, 99, 100, 101, 127, 128, 1279, 1280, 1419, 1420, 1421, 2000]


@pytest.mark.parametrize("mtu", [0, 1420, 1280, 100, 37])
def test_padding_rule(mtu):
    pair = establish()
    key = pair.reference.initiator_send
    for counter, length in enumerate(LENGTHS):
        pt = os.urandom(length)
        msg = pair.i_session.encrypt(pt, mtu)
        padded = wgref.padded_len(length, mtu)
        assert len(msg) == 16 + padded + 16, (length, mtu)
        receiver, got_counter, plain = wgref.open_transport(key, msg)
        assert (receiver, got_counter) == (pair.r_session.local_index, counter)
        assert plain == pt + bytes(padded - length)
        assert pair.r_session.decrypt(msg) == plain


def test_padding_examples():
    """A few values worked out by hand from kernel send.c:calculate_skb_padding."""
    pair = establish()
    cases = {(0, 0): 32, (1, 0): 48, (16, 0): 48, (17, 0): 64, (1419, 1420): 1452}
    cases |= {(1420, 1420): 1452, (1421, 1420): 1421 + 15 + 32, (150, 100): 150 + 14 + 32}
    for (length, mtu), wire in cases.items():
        assert len(pair.i_session.encrypt(bytes(length), mtu)) == wire, (length, mtu)


def test_keepalive_is_32_bytes():
    pair = establish()
    ka = pair.i_session.keepalive()
    assert len(ka) == 32
    assert ka[:4] == b"\x04\x00\x00\x00"
    assert wgref.open_transport(pair.reference.initiator_send, ka) == (
        pair.r_session.local_index,
        0,
        b"",
    )
    assert pair.r_session.decrypt(ka) == b""
    ka2 = pair.r_session.keepalive()
    assert wgref.open_transport(pair.reference.initiator_recv, ka2)[2] == b""
    assert pair.i_session.decrypt(ka2) == b""


def test_sending_counter_and_indices():
    pair = establish()
    s = pair.i_session
    assert s.sending_counter == 0
    for n in range(5):
        msg = s.encrypt(b"abc")
        assert struct.unpack("<IQ", msg[4:16]) == (s.remote_index, n)
        assert s.sending_counter == n + 1
    assert pair.i_session.local_index == pair.r_session.remote_index
    assert pair.r_session.local_index == pair.i_session.remote_index
    assert wgpy.receiver_index(msg) == pair.r_session.local_index
    assert wgpy.message_type(msg) == 4


def test_inner_packet_len_trims_padding():
    pair = establish()
    ipv4 = bytes([0x45, 0]) + struct.pack(">H", 23) + os.urandom(19)
    ipv6 = bytes([0x60, 0, 0, 0]) + struct.pack(">H", 3) + os.urandom(34) + os.urandom(3)
    for pkt in (ipv4, ipv6):
        plain = pair.r_session.decrypt(pair.i_session.encrypt(pkt))
        assert len(plain) > len(pkt)
        assert wgpy.inner_packet_len(plain) == len(pkt)
        assert plain[: len(pkt)] == pkt
    assert wgpy.inner_packet_len(b"") is None
    assert wgpy.inner_packet_len(bytes([0x45, 0, 0xFF, 0xFF]) + bytes(60)) is None
    assert wgpy.inner_packet_len(bytes([0x10]) + bytes(60)) is None


# --- receive rules -------------------------------------------------------------------------


def test_replay_rejected():
    pair = establish()
    msgs = [pair.i_session.encrypt(bytes([n])) for n in range(5)]
    assert pair.r_session.decrypt(msgs[0])[0] == 0
    with pytest.raises(wgpy.ReplayError):
        pair.r_session.decrypt(msgs[0])
    # Out of order inside the window is fine, once each.
    for n in (4, 2, 1, 3):
        assert pair.r_session.decrypt(msgs[n])[0] == n
    for n in range(5):
        with pytest.raises(wgpy.ReplayError):
            pair.r_session.decrypt(msgs[n])


def test_replay_window_edges():
    pair = establish()
    key, index = pair.reference.initiator_send, pair.r_session.local_index

    def forged(counter, pt=b"p"):
        return wgref.transport_message(key, index, counter, pt)

    top = 20_000
    assert pair.r_session.decrypt(forged(top)) == b"p"
    assert pair.r_session.decrypt(forged(top - KERNEL_WINDOW)) == b"p"
    with pytest.raises(wgpy.ReplayError):
        pair.r_session.decrypt(forged(top - KERNEL_WINDOW - 1))
    with pytest.raises(wgpy.ReplayError):
        pair.r_session.decrypt(forged(0))
    assert pair.r_session.decrypt(forged(top - 1)) == b"p"
    with pytest.raises(wgpy.ReplayError):
        pair.r_session.decrypt(forged(top - 1))
    # Jumping far ahead slides the window: the old top falls out of it.
    far = top + 10 * KERNEL_WINDOW
    assert pair.r_session.decrypt(forged(far)) == b"p"
    with pytest.raises(wgpy.ReplayError):
        pair.r_session.decrypt(forged(top + 1))
    assert pair.r_session.decrypt(forged(far - 5)) == b"p"


def test_counter_limit_on_receive():
    pair = establish()
    key, index = pair.reference.initiator_send, pair.r_session.local_index
    limit = KERNEL_REJECT_AFTER_MESSAGES
    for counter in (limit, limit + 1, 2**64 - 1):
        with pytest.raises((wgpy.SessionExpiredError, wgpy.ReplayError)):
            pair.r_session.decrypt(wgref.transport_message(key, index, counter, b"x"))
    assert pair.r_session.decrypt(wgref.transport_message(key, index, limit - 1, b"x")) == b"x"


def test_tampered_ciphertext_does_not_advance_window():
    pair = establish()
    genuine = pair.i_session.encrypt(b"genuine packet")
    for pos in (16, 20, len(genuine) - 17, len(genuine) - 1):
        bad = bytearray(genuine)
        bad[pos] ^= 0x40
        with pytest.raises(wgpy.AuthenticationError):
            pair.r_session.decrypt(bytes(bad))
    # A forged message far ahead (any tag) must not move the window either.
    ahead = bytearray(genuine)
    ahead[8:16] = struct.pack("<Q", 1_000_000)
    with pytest.raises(wgpy.AuthenticationError):
        pair.r_session.decrypt(bytes(ahead))
    junk = genuine[:8] + struct.pack("<Q", 50_000) + os.urandom(len(genuine) - 16)
    with pytest.raises(wgpy.AuthenticationError):
        pair.r_session.decrypt(junk)
    assert pair.r_session.decrypt(genuine).startswith(b"genuine packet")
    with pytest.raises(wgpy.ReplayError):
        pair.r_session.decrypt(genuine)


def test_wrong_key_is_authentication_error():
    pair = establish()
    other = establish()
    msg = wgref.transport_message(
        other.reference.initiator_send, pair.r_session.local_index, 0, b""
    )
    with pytest.raises(wgpy.AuthenticationError):
        pair.r_session.decrypt(msg)
    # Our own send direction is not accepted back (keys differ per direction).
    own = pair.r_session.encrypt(b"x")
    reflected = own[:4] + struct.pack("<I", pair.r_session.local_index) + own[8:]
    with pytest.raises(wgpy.AuthenticationError):
        pair.r_session.decrypt(reflected)


def test_wrong_receiver_index():
    pair = establish()
    msg = pair.i_session.encrypt(b"data")
    bad = bytearray(msg)
    bad[4] ^= 1
    with pytest.raises(wgpy.HandshakeStateError):
        pair.r_session.decrypt(bytes(bad))
    assert pair.r_session.decrypt(msg).startswith(b"data")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x04\x00\x00",
        b"\x04\x00\x00\x00" + bytes(27),
        b"\x04\x01\x00\x00" + bytes(60),
        b"\x05\x00\x00\x00" + bytes(60),
        b"\x01\x00\x00\x00" + bytes(144),
    ],
)
def test_malformed_transport(message):
    pair = establish()
    with pytest.raises(wgpy.MessageFormatError):
        pair.r_session.decrypt(message)


# --- time rules ----------------------------------------------------------------------------


def test_expiry_after_reject_after_time():
    clock = wgpy.ManualClock(now=1000.0)
    pair = establish(clock=clock)
    assert pair.i_session.age == 0
    early = pair.i_session.encrypt(b"early")
    early_back = pair.r_session.encrypt(b"back")
    clock.advance(179.9)
    assert pair.i_session.age == pytest.approx(179.9)
    for s in (pair.i_session, pair.r_session):
        assert not s.expired
    late = pair.i_session.encrypt(b"late")
    assert pair.r_session.decrypt(late).startswith(b"late")
    clock.advance(0.2)
    for s in (pair.i_session, pair.r_session):
        assert s.expired
        with pytest.raises(wgpy.SessionExpiredError):
            s.encrypt(b"x")
        with pytest.raises(wgpy.SessionExpiredError):
            s.keepalive()
        with pytest.raises(wgpy.SessionExpiredError):
            s.encrypt_many([b"x"])
    with pytest.raises(wgpy.SessionExpiredError):
        pair.r_session.decrypt(early)
    with pytest.raises(wgpy.SessionExpiredError):
        pair.i_session.decrypt(early_back)
    assert pair.r_session.decrypt_many([early]) == [None]
    # Still an expired-key error, never a replay or a crash, for a forged message.
    forged = wgref.transport_message(
        pair.reference.initiator_send, pair.r_session.local_index, 7, b"z"
    )
    with pytest.raises(wgpy.SessionExpiredError):
        pair.r_session.decrypt(forged)


def test_needs_rekey_only_for_initiator():
    clock = wgpy.ManualClock(now=50.0)
    pair = establish(clock=clock)
    i, r = pair.i_session, pair.r_session
    assert i.is_initiator and not r.is_initiator
    assert not i.needs_rekey and not r.needs_rekey
    clock.advance(119.9)
    assert not i.needs_rekey and not r.needs_rekey
    clock.advance(0.2)
    assert i.needs_rekey
    assert not r.needs_rekey
    assert not i.needs_rekey_on_receive
    clock.advance(164.9 - 120.1)
    assert not i.needs_rekey_on_receive
    clock.advance(0.2)
    assert i.needs_rekey_on_receive
    assert not r.needs_rekey_on_receive
    assert not r.needs_rekey
    assert not i.expired


# --- batches -------------------------------------------------------------------------------


def twin_pairs():
    inputs = Inputs.random(wgpy.PresharedKey.generate())
    return establish(inputs), establish(inputs)


def test_twin_handshakes_are_deterministic():
    a, b = twin_pairs()
    assert a.initiation == b.initiation
    assert a.response == b.response
    assert a.i_session.encrypt(b"same") == b.i_session.encrypt(b"same")


@pytest.mark.parametrize("mtu", [0, 1420, 64])
def test_encrypt_many_equals_encrypt(mtu):
    a, b = twin_pairs()
    packets = [os.urandom(n) for n in (0, 1, 15, 16, 17, 100, 1400, 1500, 3)]
    batch = a.i_session.encrypt_many(packets, mtu)
    one_by_one = [b.i_session.encrypt(p, mtu) for p in packets]
    assert batch == one_by_one
    assert a.i_session.sending_counter == len(packets)
    for n, (msg, pkt) in enumerate(zip(batch, packets, strict=True)):
        _, counter, plain = wgref.open_transport(a.reference.initiator_send, msg)
        assert counter == n
        assert plain[: len(pkt)] == pkt
    assert a.i_session.encrypt_many([]) == []


def test_decrypt_many_equals_decrypt():
    a, b = twin_pairs()
    good = a.i_session.encrypt_many([b"one", b"two", b"three", b""])
    tampered = bytearray(good[1])
    tampered[-1] ^= 1
    wrong_index = bytearray(good[2])
    wrong_index[5] ^= 1
    batch = [
        good[2],
        bytes(tampered),
        good[0],
        good[0],  # replay inside the batch
        bytes(wrong_index),
        b"\x04\x00",
        good[1],
        good[3],
        os.urandom(80),
    ]
    expected = []
    for msg in batch:
        try:
            expected.append(b.r_session.decrypt(msg))
        except wgpy.ProtocolError:
            expected.append(None)
    got = a.r_session.decrypt_many(batch)
    assert got == expected
    assert [g is not None for g in got] == [
        True,
        False,
        True,
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    assert got[0] == pad_to_16(b"three")
    # Everything that came through is now a replay.
    assert a.r_session.decrypt_many(good) == [None] * 4


def pad_to_16(b):
    return b + bytes(-len(b) % 16)


# --- handshake acceptance rules ------------------------------------------------------------


def test_replayed_initiation_rejected():
    clock = wgpy.ManualClock(now=10.0)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    initiator = wgpy.Handshake(s_i, s_r.public_key(), clock=clock)
    responder = wgpy.Handshake(s_r, s_i.public_key(), clock=clock)
    init = initiator.create_initiation(timestamp=wgref.tai64n(1_700_000_000, 0x10000000))
    responder.respond(wgpy.open_initiation(s_r, init))
    clock.advance(5.0)
    # The very same message, and an older or equal timestamp, are replays.
    with pytest.raises(wgpy.ReplayError):
        responder.respond(wgpy.open_initiation(s_r, init))
    for ts in (wgref.tai64n(1_700_000_000, 0x10000000), wgref.tai64n(1_699_999_999, 0x3B000000)):
        again = initiator.create_initiation(timestamp=ts)
        with pytest.raises(wgpy.ReplayError):
            responder.respond(wgpy.open_initiation(s_r, again))
    newer = initiator.create_initiation(timestamp=wgref.tai64n(1_700_000_000, 0x11000000))
    response, _ = responder.respond(wgpy.open_initiation(s_r, newer))
    assert initiator.consume_response(response).is_initiator


def test_flood_rule_20ms():
    clock = wgpy.ManualClock(now=10.0)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    initiator = wgpy.Handshake(s_i, s_r.public_key(), clock=clock)
    responder = wgpy.Handshake(s_r, s_i.public_key(), clock=clock)
    ts = iter(wgref.tai64n(1_700_000_000 + n) for n in range(1, 100))

    responder.respond(wgpy.open_initiation(s_r, initiator.create_initiation(timestamp=next(ts))))
    clock.advance(0.019)
    second = wgpy.open_initiation(s_r, initiator.create_initiation(timestamp=next(ts)))
    with pytest.raises(wgpy.RateLimitError):
        responder.respond(second)
    # The refused one did not count as consumed: 20 ms after the first one is fine.
    clock.advance(0.001)
    response, session = responder.respond(second)
    assert initiator.consume_response(response).remote_index == session.local_index
    # Immediately again: flood, even with a newer timestamp.
    third = wgpy.open_initiation(s_r, initiator.create_initiation(timestamp=next(ts)))
    with pytest.raises(wgpy.RateLimitError):
        responder.respond(third)
    clock.advance(0.05)
    responder.respond(third)


def test_flood_rule_uses_monotonic_not_wall_clock():
    clock = wgpy.ManualClock(now=10.0)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    initiator = wgpy.Handshake(s_i, s_r.public_key(), clock=clock)
    responder = wgpy.Handshake(s_r, s_i.public_key(), clock=clock)
    responder.respond(wgpy.open_initiation(s_r, initiator.create_initiation()))
    clock.set_unix_time(clock.unix_time() + 3600)  # wall clock jumps, monotonic does not
    with pytest.raises(wgpy.RateLimitError):
        responder.respond(wgpy.open_initiation(s_r, initiator.create_initiation()))


def test_default_timestamps_increase_with_clock():
    clock = wgpy.ManualClock(now=0.0, unix_time=1_700_000_000.0)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    initiator = wgpy.Handshake(s_i, s_r.public_key(), clock=clock)
    first = wgpy.open_initiation(s_r, initiator.create_initiation()).timestamp
    assert first == wgref.tai64n(1_700_000_000, 0)
    clock.advance(1.5)
    second = wgpy.open_initiation(s_r, initiator.create_initiation()).timestamp
    # 0.5 s rounded down to a multiple of 2**24 ns.
    assert second == wgref.tai64n(1_700_000_001, (500_000_000 >> 24) << 24)


def test_response_state_and_index_rules():
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    initiator = wgpy.Handshake(s_i, s_r.public_key())
    responder = wgpy.Handshake(s_r, s_i.public_key())
    init = initiator.create_initiation(sender_index=100)
    response, _ = responder.respond(wgpy.open_initiation(s_r, init), sender_index=200)
    # Receiver index changed (mac1 recomputed so only the index is wrong).
    wrong = bytearray(response)
    wrong[8:12] = struct.pack("<I", 101)
    with pytest.raises(wgpy.HandshakeStateError):
        initiator.consume_response(wgref.with_mac1(bytes(wrong), bytes(s_i.public_key())))
    # Bad mac1.
    bad_mac = bytearray(response)
    bad_mac[60] ^= 1
    with pytest.raises(wgpy.AuthenticationError):
        initiator.consume_response(bytes(bad_mac))
    # Body tampered with a valid mac1.
    body = bytearray(response)
    body[50] ^= 1
    with pytest.raises(wgpy.AuthenticationError):
        initiator.consume_response(wgref.with_mac1(bytes(body), bytes(s_i.public_key())))
    session = initiator.consume_response(response)
    assert session.remote_index == 200
    with pytest.raises(wgpy.HandshakeStateError):
        initiator.consume_response(response)
    # A responder never consumes responses.
    with pytest.raises(wgpy.HandshakeStateError):
        wgpy.Handshake(s_i, s_r.public_key()).consume_response(response)


def test_stale_response_after_retransmit():
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    initiator = wgpy.Handshake(s_i, s_r.public_key())
    responder = wgpy.Handshake(s_r, s_i.public_key())
    first = initiator.create_initiation(sender_index=1, timestamp=wgref.tai64n(10))
    old_response, _ = responder.respond(wgpy.open_initiation(s_r, first))
    initiator.create_initiation(sender_index=2, timestamp=wgref.tai64n(11))
    assert initiator.pending_index == 2
    with pytest.raises(wgpy.HandshakeStateError):
        initiator.consume_response(old_response)
    initiator.clear()
    assert initiator.pending_index is None
    with pytest.raises(wgpy.HandshakeStateError):
        initiator.consume_response(old_response)


def test_initiation_from_other_peer_rejected():
    s_i, s_r, s_x = (wgpy.PrivateKey.generate() for _ in range(3))
    init = wgpy.Handshake(s_x, s_r.public_key()).create_initiation()
    opened = wgpy.open_initiation(s_r, init)
    assert opened.peer_public_key == s_x.public_key()
    with pytest.raises(wgpy.HandshakeStateError):
        wgpy.Handshake(s_r, s_i.public_key()).respond(opened)
    # Addressed to someone else: mac1 fails before any DH.
    with pytest.raises(wgpy.AuthenticationError):
        wgpy.open_initiation(s_i, init)


def test_low_order_ephemeral_rejected():
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    init = bytearray(wgpy.Handshake(s_i, s_r.public_key()).create_initiation())
    init[8:40] = bytes(32)  # the identity point: DH is all zeros
    with pytest.raises(wgpy.InvalidKeyError):
        wgpy.open_initiation(s_r, wgref.with_mac1(bytes(init), bytes(s_r.public_key())))


def test_low_order_static_keys_rejected():
    s_r = wgpy.PrivateKey.generate()
    r_pub = bytes(s_r.public_key())
    # Sanity of the forging helper: with the real static-static DH the message opens.
    s_i = wgpy.PrivateKey.generate()
    real = wgref.initiation_message(
        responder_public=r_pub,
        initiator_public=bytes(s_i.public_key()),
        static_static=wgref.dh(s_i.to_bytes(), r_pub),
        ephemeral=os.urandom(32),
        index=3,
        timestamp=wgref.tai64n(1),
    )
    assert wgpy.open_initiation(s_r, real).peer_public_key == s_i.public_key()
    # An initiator claiming a low-order static key: DH(S_r, S_i) is all zeros, which
    # anyone can compute, so the timestamp decrypts; it must still be refused.
    forged = wgref.initiation_message(
        responder_public=r_pub,
        initiator_public=bytes(32),
        static_static=bytes(32),
        ephemeral=os.urandom(32),
        index=3,
        timestamp=wgref.tai64n(1),
    )
    with pytest.raises(wgpy.InvalidKeyError):
        wgpy.open_initiation(s_r, forged)
    # Nor can we start a handshake towards such a key.
    with pytest.raises(wgpy.InvalidKeyError):
        wgpy.Handshake(s_r, wgpy.PublicKey.from_bytes(bytes(32))).create_initiation()


def test_reference_rejects_wgpy_forgery():
    """Sanity of the oracle: a wrong key really fails in `cryptography`."""
    pair = establish()
    msg = pair.i_session.encrypt(b"x")
    with pytest.raises(InvalidTag):
        wgref.open_transport(pair.reference.initiator_recv, msg)
