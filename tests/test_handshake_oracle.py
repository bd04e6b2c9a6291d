"""The handshake, byte for byte, against `noiseprotocol` and a pure-Python reference.

Every expected byte comes from an independent implementation: the `noiseprotocol`
package (Noise_IKpsk2 with WireGuard's prologue, as wireguard-tools'
contrib/external-tests/python does), hashlib/hmac for the MACs and KDF, and
`cryptography` for X25519 and ChaCha20-Poly1305 (tests/wgref.py).
"""

import hashlib
import os
import struct

import pytest
import wgpy
import wgref
from noise.connection import Keypair, NoiseConnection

pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")

PSK_CASES = [pytest.param(False, id="no-psk"), pytest.param(True, id="psk")]


def noise_connection(*, initiator, static, ephemeral, remote=None, psk=None):
    conn = NoiseConnection.from_name(wgref.NOISE_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(wgref.IDENTIFIER)
    conn.set_psks(psk=psk if psk is not None else bytes(32))
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static.to_bytes())
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral.to_bytes())
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes(remote))
    conn.start_handshake()
    return conn


def blake2s_mac1(message_prefix: bytes, receiver_public) -> bytes:
    key = hashlib.blake2s(b"mac1----" + bytes(receiver_public)).digest()
    return hashlib.blake2s(message_prefix, key=key, digest_size=16).digest()


def pad16(data: bytes) -> bytes:
    return data + bytes(-len(data) % 16)


def make_psk(with_psk):
    return wgpy.PresharedKey.generate() if with_psk else None


def psk_bytes(psk):
    return psk.to_bytes() if psk is not None else None


def check_transport(session, noise_peer, *, peer_index):
    """Our session against the noise peer's cipher states, both directions, in order."""
    plaintexts = [b"", b"x", b"hello wireguard", os.urandom(16), os.urandom(100), os.urandom(1400)]
    for counter, pt in enumerate(plaintexts):
        msg = session.encrypt(pt)
        assert msg[:4] == b"\x04\x00\x00\x00"
        assert struct.unpack("<IQ", msg[4:16]) == (peer_index, counter)
        assert len(msg) == 16 + len(pad16(pt)) + 16
        assert bytes(noise_peer.decrypt(msg[16:])) == pad16(pt)
    for counter, pt in enumerate(plaintexts):
        body = bytes(noise_peer.encrypt(pt))
        wire = b"\x04\x00\x00\x00" + struct.pack("<IQ", session.local_index, counter) + body
        assert session.decrypt(wire) == pt
    # A message the noise peer sealed cannot be replayed to us.
    with pytest.raises(wgpy.ReplayError):
        session.decrypt(wire)


@pytest.mark.parametrize("with_psk", PSK_CASES)
def test_wgpy_initiator_against_noise_responder(with_psk):
    psk = make_psk(with_psk)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    e_i, e_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    i_index, r_index = 0x11223344, 0xA0B0C0D0
    timestamp = wgref.tai64n(1_700_000_123, 0x05000000)

    hs = wgpy.Handshake(s_i, s_r.public_key(), psk)
    ours = hs.create_initiation(sender_index=i_index, ephemeral=e_i, timestamp=timestamp)
    assert hs.pending_index == i_index

    # The same initiation from a noise initiator with the same ephemeral key.
    noise_i = noise_connection(
        initiator=True, static=s_i, ephemeral=e_i, remote=s_r.public_key(), psk=psk_bytes(psk)
    )
    body = bytes(noise_i.write_message(timestamp))
    assert len(body) == 108
    expected = b"\x01\x00\x00\x00" + struct.pack("<I", i_index) + body
    expected += blake2s_mac1(expected, s_r.public_key()) + bytes(16)
    assert len(ours) == 148
    assert ours == expected

    # The noise responder opens ours and answers.
    noise_r = noise_connection(initiator=False, static=s_r, ephemeral=e_r, psk=psk_bytes(psk))
    assert bytes(noise_r.read_message(ours[8:116])) == timestamp
    resp_body = bytes(noise_r.write_message(b""))
    assert len(resp_body) == 48
    response = b"\x02\x00\x00\x00" + struct.pack("<II", r_index, i_index) + resp_body
    response += blake2s_mac1(response, s_i.public_key()) + bytes(16)
    assert len(response) == 92

    session = hs.consume_response(response)
    assert noise_r.handshake_finished
    assert session.is_initiator
    assert session.local_index == i_index
    assert session.remote_index == r_index
    assert hs.pending_index is None
    check_transport(session, noise_r, peer_index=r_index)


@pytest.mark.parametrize("with_psk", PSK_CASES)
def test_wgpy_responder_against_noise_initiator(with_psk):
    psk = make_psk(with_psk)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    e_i, e_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    i_index, r_index = 0xDEADBEEF, 0x00000007
    timestamp = wgref.tai64n(1_700_000_456, 0x0B000000)

    noise_i = noise_connection(
        initiator=True, static=s_i, ephemeral=e_i, remote=s_r.public_key(), psk=psk_bytes(psk)
    )
    body = bytes(noise_i.write_message(timestamp))
    init = b"\x01\x00\x00\x00" + struct.pack("<I", i_index) + body
    init += blake2s_mac1(init, s_r.public_key()) + bytes(16)

    opened = wgpy.open_initiation(s_r, init)
    assert opened.peer_public_key == s_i.public_key()
    assert opened.sender_index == i_index
    assert opened.timestamp == timestamp

    hs = wgpy.Handshake(s_r, s_i.public_key(), psk)
    response, session = hs.respond(opened, sender_index=r_index, ephemeral=e_r)
    assert len(response) == 92
    assert response[:12] == b"\x02\x00\x00\x00" + struct.pack("<II", r_index, i_index)
    assert response[60:76] == blake2s_mac1(response[:60], s_i.public_key())
    assert response[76:] == bytes(16)

    # A second noise responder with the same ephemeral key writes the same body.
    twin = noise_connection(initiator=False, static=s_r, ephemeral=e_r, psk=psk_bytes(psk))
    assert bytes(twin.read_message(init[8:116])) == timestamp
    assert bytes(twin.write_message(b"")) == response[12:60]

    # The noise initiator accepts our response.
    assert bytes(noise_i.read_message(response[12:60])) == b""
    assert noise_i.handshake_finished
    assert not session.is_initiator
    assert session.local_index == r_index
    assert session.remote_index == i_index
    check_transport(session, noise_i, peer_index=i_index)


@pytest.mark.parametrize("with_psk", PSK_CASES)
def test_wrong_psk_fails_against_noise(with_psk):
    """A responder with a different PSK must not yield a session (so the PSK really is mixed)."""
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    ours_psk = make_psk(with_psk)
    theirs = wgpy.PresharedKey.generate()
    e_r = wgpy.PrivateKey.generate()
    hs = wgpy.Handshake(s_i, s_r.public_key(), ours_psk)
    init = hs.create_initiation(sender_index=1)
    noise_r = noise_connection(initiator=False, static=s_r, ephemeral=e_r, psk=theirs.to_bytes())
    noise_r.read_message(init[8:116])
    response = b"\x02\x00\x00\x00" + struct.pack("<II", 2, 1) + bytes(noise_r.write_message())
    response += blake2s_mac1(response, s_i.public_key()) + bytes(16)
    with pytest.raises(wgpy.AuthenticationError):
        hs.consume_response(response)


# --- pure-Python reference (hashlib/hmac + cryptography) -----------------------------------


def test_reference_constants():
    """Sanity of the reference itself: Ci and Hi, the hashes of the construction and identifier."""
    ci = wgref.blake2s_hash(wgref.CONSTRUCTION)
    assert ci.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    assert wgref.blake2s_hash(ci, wgref.IDENTIFIER).hex() == (
        "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
    )
    assert wgref.aead_seal(bytes(32), 1, b"", b"").hex() == "f072ad3c073a98ba24da8ee143ad5832"


@pytest.mark.parametrize("with_psk", PSK_CASES)
def test_full_handshake_against_reference(with_psk):
    psk = make_psk(with_psk)
    s_i, s_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    e_i, e_r = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    i_index, r_index = 0x01020304, 0xFFFFFFFF
    timestamp = wgref.tai64n(1_234_567_890, 0x3F000000)
    ref = wgref.handshake(
        initiator_static=s_i.to_bytes(),
        responder_static=s_r.to_bytes(),
        initiator_ephemeral=e_i.to_bytes(),
        responder_ephemeral=e_r.to_bytes(),
        initiator_index=i_index,
        responder_index=r_index,
        timestamp=timestamp,
        psk=psk_bytes(psk),
    )

    initiator = wgpy.Handshake(s_i, s_r.public_key(), psk)
    responder = wgpy.Handshake(s_r, s_i.public_key(), psk)
    init = initiator.create_initiation(sender_index=i_index, ephemeral=e_i, timestamp=timestamp)
    assert init == ref.initiation
    response, r_session = responder.respond(
        wgpy.open_initiation(s_r, init), sender_index=r_index, ephemeral=e_r
    )
    assert response == ref.response
    i_session = initiator.consume_response(response)

    # The initiator sends with T1 and receives with T2; the responder the reverse.
    pt = os.urandom(37)
    assert wgref.open_transport(ref.initiator_send, i_session.encrypt(pt)) == (
        r_index,
        0,
        pad16(pt),
    )
    assert wgref.open_transport(ref.initiator_recv, r_session.encrypt(pt)) == (
        i_index,
        0,
        pad16(pt),
    )
    to_responder = wgref.transport_message(ref.initiator_send, r_index, 5, b"abc")
    to_initiator = wgref.transport_message(ref.initiator_recv, i_index, 9, b"def")
    assert r_session.decrypt(to_responder) == b"abc"
    assert i_session.decrypt(to_initiator) == b"def"
    with pytest.raises(wgpy.AuthenticationError):
        i_session.decrypt(wgref.transport_message(ref.initiator_send, i_index, 10, b"def"))


def test_known_answer_with_fixed_keys():
    """Fully fixed inputs: reference and noiseprotocol agree with each other and with us."""
    s_i = wgpy.PrivateKey.from_bytes(bytes(range(32)))
    s_r = wgpy.PrivateKey.from_bytes(bytes(range(32, 64)))
    e_i = wgpy.PrivateKey.from_bytes(bytes(range(64, 96)))
    e_r = wgpy.PrivateKey.from_bytes(bytes(range(96, 128)))
    psk = wgpy.PresharedKey.from_bytes(bytes(range(128, 160)))
    timestamp = wgref.tai64n(1_700_000_000)
    ref = wgref.handshake(
        initiator_static=s_i.to_bytes(),
        responder_static=s_r.to_bytes(),
        initiator_ephemeral=e_i.to_bytes(),
        responder_ephemeral=e_r.to_bytes(),
        initiator_index=1,
        responder_index=2,
        timestamp=timestamp,
        psk=psk.to_bytes(),
    )
    noise_i = noise_connection(
        initiator=True, static=s_i, ephemeral=e_i, remote=s_r.public_key(), psk=psk.to_bytes()
    )
    assert bytes(noise_i.write_message(timestamp)) == ref.initiation[8:116]
    hs = wgpy.Handshake(s_i, s_r.public_key(), psk)
    assert hs.create_initiation(sender_index=1, ephemeral=e_i, timestamp=timestamp) == (
        ref.initiation
    )
    assert bytes(noise_i.read_message(ref.response[12:60])) == b""
    session = hs.consume_response(ref.response)
    msg = session.encrypt(b"ping")
    assert bytes(noise_i.encrypt(b"ping" + bytes(12))) == msg[16:]
