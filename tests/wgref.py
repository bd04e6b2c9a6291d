"""An independent pure-Python WireGuard reference for differential tests.

Built only from hashlib, hmac and `cryptography`, following the whitepaper and
the kernel's noise.c/cookie.c and messages.h.
It shares no code with wgpy: every expected value in the tests comes from here,
from the `noiseprotocol` package, from PyNaCl or from the `wg` binary.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
NOISE_NAME = CONSTRUCTION
ZERO_PSK = bytes(32)


def blake2s_hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf(n: int, key: bytes, data: bytes) -> list[bytes]:
    prk = hmac_blake2s(key, data)
    out: list[bytes] = []
    t = b""
    for i in range(1, n + 1):
        t = hmac_blake2s(prk, t + bytes([i]))
        out.append(t)
    return out


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def dh(private: bytes, public: bytes) -> bytes:
    # cryptography clamps the scalar and raises ValueError on an all-zero result.
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def transport_nonce(counter: int) -> bytes:
    return b"\x00" * 4 + struct.pack("<Q", counter)


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(transport_nonce(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(transport_nonce(counter), ciphertext, ad)


def mac1_key(receiver_public: bytes) -> bytes:
    return blake2s_hash(b"mac1----", receiver_public)


def cookie_key(receiver_public: bytes) -> bytes:
    return blake2s_hash(b"cookie--", receiver_public)


def mac1_of(message: bytes, receiver_public: bytes) -> bytes:
    return mac(mac1_key(receiver_public), message[: len(message) - 32])


def with_mac1(message: bytes, receiver_public: bytes) -> bytes:
    """Rewrites mac1 (and zeroes mac2) of a 148- or 92-byte handshake message."""
    body = bytes(message[: len(message) - 32])
    return body + mac(mac1_key(receiver_public), body) + bytes(16)


def tai64n(unix_seconds: int, nanoseconds: int = 0) -> bytes:
    return struct.pack(">QI", 0x400000000000000A + unix_seconds, nanoseconds)


def header(kind: int) -> bytes:
    return bytes([kind, 0, 0, 0])


def transport_message(key: bytes, receiver: int, counter: int, plaintext: bytes) -> bytes:
    """A type-4 message sealed with `key`, exactly as a peer would send it."""
    return (
        header(4)
        + struct.pack("<IQ", receiver, counter)
        + ChaCha20Poly1305(key).encrypt(transport_nonce(counter), plaintext, None)
    )


def open_transport(key: bytes, message: bytes) -> tuple[int, int, bytes]:
    """(receiver, counter, plaintext) of a type-4 message; raises on a bad tag."""
    assert message[:4] == header(4)
    receiver, counter = struct.unpack("<IQ", message[4:16])
    plain = ChaCha20Poly1305(key).decrypt(transport_nonce(counter), message[16:], None)
    return receiver, counter, plain


def initiation_message(
    *,
    responder_public: bytes,
    initiator_public: bytes,
    static_static: bytes,
    ephemeral: bytes,
    index: int,
    timestamp: bytes,
) -> bytes:
    """An initiation built from its parts, so tests can claim any static key and
    supply the static-static DH result themselves (e.g. all zeros for a low-order key)."""
    e_pub = public_of(ephemeral)
    c = blake2s_hash(CONSTRUCTION)
    h = blake2s_hash(blake2s_hash(c, IDENTIFIER), responder_public)
    h = blake2s_hash(h, e_pub)
    (c,) = kdf(1, c, e_pub)
    c, k = kdf(2, c, dh(ephemeral, responder_public))
    enc_static = aead_seal(k, 0, initiator_public, h)
    h = blake2s_hash(h, enc_static)
    c, k = kdf(2, c, static_static)
    enc_ts = aead_seal(k, 0, timestamp, h)
    msg = header(1) + struct.pack("<I", index) + e_pub + enc_static + enc_ts
    return with_mac1(msg + bytes(32), responder_public)


@dataclass
class ReferenceHandshake:
    initiation: bytes
    response: bytes
    initiator_send: bytes
    initiator_recv: bytes


def handshake(
    *,
    initiator_static: bytes,
    responder_static: bytes,
    initiator_ephemeral: bytes,
    responder_ephemeral: bytes,
    initiator_index: int,
    responder_index: int,
    timestamp: bytes,
    psk: bytes | None = None,
) -> ReferenceHandshake:
    """A complete handshake with every private input known (whitepaper 5.4.2-5.4.5)."""
    q = ZERO_PSK if psk is None else psk
    s_i_pub = public_of(initiator_static)
    s_r_pub = public_of(responder_static)
    e_i_pub = public_of(initiator_ephemeral)
    e_r_pub = public_of(responder_ephemeral)

    c = blake2s_hash(CONSTRUCTION)
    h = blake2s_hash(blake2s_hash(c, IDENTIFIER), s_r_pub)
    # Initiation.
    h = blake2s_hash(h, e_i_pub)
    (c,) = kdf(1, c, e_i_pub)
    c, k = kdf(2, c, dh(initiator_ephemeral, s_r_pub))
    enc_static = aead_seal(k, 0, s_i_pub, h)
    h = blake2s_hash(h, enc_static)
    c, k = kdf(2, c, dh(initiator_static, s_r_pub))
    enc_ts = aead_seal(k, 0, timestamp, h)
    h = blake2s_hash(h, enc_ts)
    init = header(1) + struct.pack("<I", initiator_index) + e_i_pub + enc_static + enc_ts
    init = with_mac1(init + bytes(32), s_r_pub)
    # Response.
    h = blake2s_hash(h, e_r_pub)
    (c,) = kdf(1, c, e_r_pub)
    (c,) = kdf(1, c, dh(responder_ephemeral, e_i_pub))
    (c,) = kdf(1, c, dh(responder_ephemeral, s_i_pub))
    c, tau, k = kdf(3, c, q)
    h = blake2s_hash(h, tau)
    enc_nothing = aead_seal(k, 0, b"", h)
    resp = header(2) + struct.pack("<II", responder_index, initiator_index) + e_r_pub + enc_nothing
    resp = with_mac1(resp + bytes(32), s_i_pub)
    t1, t2 = kdf(2, c, b"")
    return ReferenceHandshake(init, resp, t1, t2)


def padded_len(length: int, mtu: int) -> int:
    """Kernel send.c:calculate_skb_padding, as a total plaintext length (mtu 0: no cap)."""
    if mtu == 0:
        return -(-length // 16) * 16
    last_unit = length % mtu if length > mtu else length
    padded = min(mtu, -(-last_unit // 16) * 16)
    return length + (padded - last_unit)
