"""mac1, mac2 and cookie replies, checked with hashlib and PyNaCl's XChaCha20-Poly1305."""

import hashlib
import os
import struct

import pytest
import wgpy
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

SRC = ("192.0.2.10", 51820)
SRC6 = ("2001:db8::7", 4500)


def cookie_key(public):
    return hashlib.blake2s(b"cookie--" + bytes(public)).digest()


def mac1_of(msg, public):
    key = hashlib.blake2s(b"mac1----" + bytes(public)).digest()
    return hashlib.blake2s(msg[: len(msg) - 32], key=key, digest_size=16).digest()


def mac2_with(msg, cookie):
    return hashlib.blake2s(msg[: len(msg) - 16], key=cookie, digest_size=16).digest()


def open_reply(reply, answered, responder_public):
    """The cookie inside a type-3 reply, opened with PyNaCl (raises CryptoError if wrong)."""
    assert len(reply) == 64
    assert reply[:4] == b"\x03\x00\x00\x00"
    return crypto_aead_xchacha20poly1305_ietf_decrypt(
        reply[32:64], answered[-32:-16], reply[8:32], cookie_key(responder_public)
    )


def seal_reply(receiver, cookie, answered, responder_public, nonce=None):
    """A cookie reply made with PyNaCl, as another implementation would send it."""
    nonce = nonce if nonce is not None else os.urandom(24)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        cookie, answered[-32:-16], nonce, cookie_key(responder_public)
    )
    return b"\x03\x00\x00\x00" + struct.pack("<I", receiver) + nonce + sealed


class Peers:
    def __init__(self, *, initiator_clock=None, checker_clock=None):
        self.s_i = wgpy.PrivateKey.generate()
        self.s_r = wgpy.PrivateKey.generate()
        self.initiator = wgpy.Handshake(self.s_i, self.s_r.public_key(), clock=initiator_clock)
        self.checker = wgpy.CookieChecker(self.s_r.public_key(), clock=checker_clock)

    def initiation(self, index=None):
        return self.initiator.create_initiation(sender_index=index)

    def get_cookie(self, source=SRC):
        """Runs one cookie round trip; returns the cookie as PyNaCl sees it."""
        msg = self.initiation()
        assert not self.checker.verify_mac2(msg, source)
        reply = self.checker.create_reply(msg, source)
        cookie = open_reply(reply, msg, self.s_r.public_key())
        self.initiator.consume_cookie_reply(reply)
        return cookie


# --- mac1 ----------------------------------------------------------------------------------


def test_mac1_matches_hashlib_and_verifies():
    p = Peers()
    msg = p.initiation()
    assert msg[116:132] == mac1_of(msg, p.s_r.public_key())
    assert msg[132:] == bytes(16)
    assert p.checker.verify_mac1(msg)
    other = wgpy.CookieChecker(wgpy.PrivateKey.generate().public_key())
    assert not other.verify_mac1(msg)


def test_mac1_covers_every_byte_before_it():
    p = Peers()
    msg = p.initiation()
    for pos in range(4, 132):
        bad = bytearray(msg)
        bad[pos] ^= 0x01
        assert not p.checker.verify_mac1(bytes(bad)), pos
    for pos in range(132, 148):
        bad = bytearray(msg)
        bad[pos] ^= 0x01
        assert p.checker.verify_mac1(bytes(bad)), pos


def test_mac1_of_responses():
    p = Peers()
    responder = wgpy.Handshake(p.s_r, p.s_i.public_key())
    response, _ = responder.respond(wgpy.open_initiation(p.s_r, p.initiation()))
    assert response[60:76] == mac1_of(response, p.s_i.public_key())
    assert wgpy.CookieChecker(p.s_i.public_key()).verify_mac1(response)
    assert not p.checker.verify_mac1(response)


@pytest.mark.parametrize(
    "msg",
    [
        b"",
        b"\x04\x00\x00\x00" + bytes(60),
        b"\x03\x00\x00\x00" + bytes(60),
        b"\x01\x00\x00\x00" + bytes(100),
        b"\x02\x00\x00\x00" + bytes(144),
        b"\x01\x00\x00\x01" + bytes(144),
    ],
)
def test_checker_refuses_non_handshake_messages(msg):
    checker = wgpy.CookieChecker(wgpy.PrivateKey.generate().public_key())
    for call in (
        lambda: checker.verify_mac1(msg),
        lambda: checker.verify_mac2(msg, SRC),
        lambda: checker.create_reply(msg, SRC),
    ):
        try:
            result = call()
        except wgpy.MessageFormatError:
            continue
        assert result is False


# --- cookie round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("source", [SRC, SRC6], ids=["ipv4", "ipv6"])
def test_cookie_flow(source):
    p = Peers()
    msg = p.initiation(index=0x01020304)
    assert p.checker.verify_mac1(msg)
    assert not p.checker.verify_mac2(msg, source)
    assert not p.initiator.has_cookie

    reply = p.checker.create_reply(msg, source)
    assert reply[4:8] == struct.pack("<I", 0x01020304)
    cookie = open_reply(reply, msg, p.s_r.public_key())
    assert len(cookie) == 16
    # The AAD really is the answered mac1: any other mac1 fails.
    with pytest.raises(CryptoError):
        crypto_aead_xchacha20poly1305_ietf_decrypt(
            reply[32:], bytes(16), reply[8:32], cookie_key(p.s_r.public_key())
        )

    p.initiator.consume_cookie_reply(reply)
    assert p.initiator.has_cookie
    nxt = p.initiation()
    assert nxt[116:132] == mac1_of(nxt, p.s_r.public_key())
    assert nxt[132:] == mac2_with(nxt, cookie)
    assert p.checker.verify_mac2(nxt, source)
    host, port = source
    assert not p.checker.verify_mac2(nxt, (host, port + 1))
    other_host = "192.0.2.11" if ":" not in host else "2001:db8::8"
    assert not p.checker.verify_mac2(nxt, (other_host, port))
    # mac2 is bound to the message too.
    bad = bytearray(nxt)
    bad[140] ^= 1
    assert not p.checker.verify_mac2(bytes(bad), source)
    # A message with a valid mac2 but a broken mac1 is refused.
    bad = bytearray(nxt)
    bad[120] ^= 1
    assert not p.checker.verify_mac2(bytes(bad), source)
    # The cookie-bearing initiation still completes the handshake.
    responder = wgpy.Handshake(p.s_r, p.s_i.public_key())
    response, r_session = responder.respond(wgpy.open_initiation(p.s_r, nxt))
    assert p.initiator.consume_response(response).remote_index == r_session.local_index


def test_cookie_is_per_source_and_stable():
    p = Peers()
    msg = p.initiation()
    key = p.s_r.public_key()

    def cookie_for(source):
        return open_reply(p.checker.create_reply(msg, source), msg, key)

    a = cookie_for(SRC)
    assert cookie_for(SRC) == a
    assert cookie_for((SRC[0], SRC[1] + 1)) != a
    assert cookie_for(("192.0.2.11", SRC[1])) != a
    assert cookie_for(SRC6) != a
    # Nonces are random.
    r1, r2 = p.checker.create_reply(msg, SRC), p.checker.create_reply(msg, SRC)
    assert r1[8:32] != r2[8:32]


def test_reply_made_by_pynacl_is_consumed():
    p = Peers()
    msg = p.initiation(index=77)
    cookie = os.urandom(16)
    p.initiator.consume_cookie_reply(seal_reply(77, cookie, msg, p.s_r.public_key()))
    nxt = p.initiation()
    assert nxt[132:] == mac2_with(nxt, cookie)
    assert nxt[116:132] == mac1_of(nxt, p.s_r.public_key())


def test_cookie_reply_to_a_response():
    """An initiator under load may answer a response; the responder keeps that cookie."""
    p = Peers()
    responder = wgpy.Handshake(p.s_r, p.s_i.public_key())
    response, _ = responder.respond(wgpy.open_initiation(p.s_r, p.initiation()), sender_index=9)
    i_checker = wgpy.CookieChecker(p.s_i.public_key())
    assert not i_checker.verify_mac2(response, SRC)
    reply = i_checker.create_reply(response, SRC)
    assert reply[4:8] == struct.pack("<I", 9)
    cookie = open_reply(reply, response, p.s_i.public_key())
    responder.consume_cookie_reply(reply)
    assert responder.has_cookie
    # Its next handshake message to that peer carries mac2.
    again = responder.create_initiation()
    assert again[132:] == mac2_with(again, cookie)
    assert i_checker.verify_mac2(again, SRC)


def test_bad_cookie_replies():
    p = Peers()
    key = p.s_r.public_key()
    # Nothing sent yet: there is no mac1 to answer.
    fake = seal_reply(1, bytes(16), bytes(148), key)
    with pytest.raises(wgpy.HandshakeStateError):
        p.initiator.consume_cookie_reply(fake)

    msg = p.initiation(index=5)
    reply = p.checker.create_reply(msg, SRC)
    tampered = bytearray(reply)
    tampered[40] ^= 1
    with pytest.raises(wgpy.AuthenticationError):
        p.initiator.consume_cookie_reply(bytes(tampered))
    # Answers another message (wrong AAD).
    other = bytearray(msg)
    other[116] ^= 1
    with pytest.raises(wgpy.AuthenticationError):
        p.initiator.consume_cookie_reply(seal_reply(5, bytes(16), bytes(other), key))
    # Sealed for another responder key.
    with pytest.raises(wgpy.AuthenticationError):
        p.initiator.consume_cookie_reply(seal_reply(5, bytes(16), msg, p.s_i.public_key()))
    for bad in (reply[:63], reply + b"\x00", b"\x03\x00\x01\x00" + reply[4:]):
        with pytest.raises(wgpy.MessageFormatError):
            p.initiator.consume_cookie_reply(bad)
    assert not p.initiator.has_cookie
    p.initiator.consume_cookie_reply(reply)
    assert p.initiator.has_cookie
    # One reply per mac1 sent.
    with pytest.raises(wgpy.HandshakeStateError):
        p.initiator.consume_cookie_reply(reply)


# --- lifetimes -----------------------------------------------------------------------------


def test_initiator_uses_cookie_for_115_seconds():
    clock = wgpy.ManualClock(now=500.0)
    p = Peers(initiator_clock=clock)
    cookie = p.get_cookie()
    clock.advance(114.9)
    assert p.initiator.has_cookie
    msg = p.initiation()
    assert msg[132:] == mac2_with(msg, cookie)
    clock.advance(0.2)
    assert not p.initiator.has_cookie
    msg = p.initiation()
    assert msg[132:] == bytes(16)
    assert msg[116:132] == mac1_of(msg, p.s_r.public_key())


def test_responder_secret_rotates_after_120_seconds():
    checker_clock = wgpy.ManualClock(now=0.0)
    p = Peers(initiator_clock=wgpy.ManualClock(now=0.0), checker_clock=checker_clock)
    old = p.get_cookie()
    checker_clock.advance(119.9)
    msg = p.initiation()
    assert msg[132:] == mac2_with(msg, old)
    assert p.checker.verify_mac2(msg, SRC)
    checker_clock.advance(0.2)
    assert not p.checker.verify_mac2(msg, SRC)
    # A fresh reply carries a different cookie, which works again.
    reply = p.checker.create_reply(msg, SRC)
    new = open_reply(reply, msg, p.s_r.public_key())
    assert new != old
    p.initiator.consume_cookie_reply(reply)
    msg = p.initiation()
    assert msg[132:] == mac2_with(msg, new)
    assert p.checker.verify_mac2(msg, SRC)
