"""Keys: round trips, and agreement with the real `wg` binary and `cryptography`."""

import base64
import os
import pickle
import shutil
import string
import subprocess

import pytest
import wgpy
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="the wg binary (wireguard-tools) is not installed")

B64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
KEY_CLASSES = [wgpy.PrivateKey, wgpy.PublicKey, wgpy.PresharedKey]


def wg(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert WG is not None
    return subprocess.run(
        [WG, *args], input=stdin, capture_output=True, text=True, timeout=10, check=False
    )


def wg_pubkey(text: str) -> str | None:
    """What `wg pubkey` prints for `text` on stdin (no newline), or None if it refuses it."""
    result = wg("pubkey", stdin=text)
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def accepts(cls, text: str) -> bool:
    try:
        cls.from_base64(text)
    except wgpy.InvalidKeyError:
        return False
    return True


# --- pure Python ---------------------------------------------------------------------------


def test_error_hierarchy():
    assert issubclass(wgpy.InvalidKeyError, wgpy.ProtocolError)
    assert issubclass(wgpy.InvalidKeyError, ValueError)
    with pytest.raises(ValueError):
        wgpy.PublicKey.from_base64("nope")


ERRORS = [
    wgpy.ProtocolError,
    wgpy.MessageFormatError,
    wgpy.InvalidKeyError,
    wgpy.AuthenticationError,
    wgpy.ReplayError,
    wgpy.RateLimitError,
    wgpy.HandshakeStateError,
    wgpy.SessionExpiredError,
]


def test_exceptions_live_in_wgpy_core_and_pickle():
    for cls in ERRORS:
        assert cls.__module__ == "wgpy._core", cls
        err = pickle.loads(pickle.dumps(cls("boom")))
        assert type(err) is cls
        assert err.args == ("boom",)


def test_exception_hierarchy_complete():
    for cls in ERRORS:
        assert issubclass(cls, wgpy.ProtocolError)
        assert issubclass(cls, ValueError)
        assert getattr(wgpy, cls.__name__) is cls


def test_generated_private_key_is_clamped_and_round_trips():
    seen = set()
    for _ in range(20):
        key = wgpy.PrivateKey.generate()
        raw = key.to_bytes()
        assert len(raw) == 32
        assert raw[0] & 7 == 0
        assert raw[31] & 0x80 == 0
        assert raw[31] & 0x40 == 0x40
        text = key.to_base64()
        assert text == base64.b64encode(raw).decode()
        assert wgpy.PrivateKey.from_base64(text) == key
        assert wgpy.PrivateKey.from_bytes(raw) == key
        assert bytes(key.public_key()) == x25519_public(raw)
        seen.add(raw)
    assert len(seen) == 20


def test_rfc7748_public_keys():
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert bytes(wgpy.PrivateKey.from_bytes(alice).public_key()) == bytes.fromhex(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bytes(wgpy.PrivateKey.from_bytes(bob).public_key()) == bytes.fromhex(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )


def test_unclamped_private_bytes_are_kept_and_clamped_in_dh():
    raw = bytes(range(224, 256))  # low bits of byte 0 and top bits of byte 31 set
    key = wgpy.PrivateKey.from_bytes(raw)
    assert key.to_bytes() == raw
    assert bytes(key.public_key()) == x25519_public(raw)


def test_public_key_round_trips_and_hashing():
    raw = os.urandom(32)
    pub = wgpy.PublicKey.from_bytes(raw)
    assert bytes(pub) == raw
    text = base64.b64encode(raw).decode()
    assert pub.to_base64() == text
    assert str(pub) == text
    same = wgpy.PublicKey.from_base64(text)
    other = wgpy.PublicKey.from_bytes(bytes(b ^ 1 for b in raw))
    assert pub == same
    assert hash(pub) == hash(same)
    assert pub != other
    assert pub != raw
    assert {pub: 1, same: 2, other: 3} == {pub: 2, other: 3}
    assert len({pub, same, other}) == 2


def test_preshared_key_round_trips():
    a = wgpy.PresharedKey.generate()
    b = wgpy.PresharedKey.generate()
    assert a != b
    raw = a.to_bytes()
    assert len(raw) == 32
    assert a.to_base64() == base64.b64encode(raw).decode()
    assert wgpy.PresharedKey.from_bytes(raw) == a
    assert wgpy.PresharedKey.from_base64(a.to_base64()) == a


def test_secret_reprs_do_not_leak():
    key = wgpy.PrivateKey.generate()
    psk = wgpy.PresharedKey.generate()
    for obj, raw in ((key, key.to_bytes()), (psk, psk.to_bytes())):
        for text in (repr(obj), str(obj), f"{obj!r}", repr([obj])):
            assert obj.to_base64() not in text
            assert raw.hex() not in text
            assert base64.b64encode(raw).decode().rstrip("=")[:20] not in text
    # The private key's repr names its public key instead.
    assert key.public_key().to_base64() in repr(key)


@pytest.mark.parametrize("cls", KEY_CLASSES)
@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_from_bytes_wrong_length(cls, length):
    with pytest.raises(wgpy.InvalidKeyError):
        cls.from_bytes(bytes(length))


# --- against the wg binary -----------------------------------------------------------------


@needs_wg
def test_wg_genkey_and_pubkey_agree_with_us():
    for _ in range(5):
        result = wg("genkey")
        assert result.returncode == 0, result.stderr
        text = result.stdout.strip()
        key = wgpy.PrivateKey.from_base64(text)
        assert key.to_base64() == text
        assert key.public_key().to_base64() == wg_pubkey(text)
        pub = wgpy.PublicKey.from_base64(wg_pubkey(text) or "")
        assert pub == key.public_key()


@needs_wg
def test_our_keys_fed_to_wg_pubkey():
    keys = [wgpy.PrivateKey.generate() for _ in range(4)]
    keys.append(wgpy.PrivateKey.from_bytes(os.urandom(32)))  # not clamped
    keys.append(wgpy.PrivateKey.from_bytes(bytes(32)))
    for key in keys:
        assert wg_pubkey(key.to_base64()) == key.public_key().to_base64()


@needs_wg
def test_wg_genpsk_parses():
    for _ in range(3):
        result = wg("genpsk")
        assert result.returncode == 0, result.stderr
        text = result.stdout.strip()
        psk = wgpy.PresharedKey.from_base64(text)
        assert psk.to_base64() == text
        assert base64.b64decode(text) == psk.to_bytes()


GOOD = base64.b64encode(bytes(range(1, 33))).decode()
ZERO = "A" * 43 + "="

BAD_OR_ODD_INPUTS = [
    ZERO,
    GOOD,
    "A" * 42 + "B=",  # non-canonical: leftover bits set
    "A" * 42 + "E=",  # canonical: 0b000100 (the last 2 bits are padding)
    "A" * 42 + "/=",
    "/" * 42 + "8=",
    "A" * 43,  # 43 chars
    "A" * 44,  # no '='
    "A" * 42 + "==",  # two pads: 31 bytes
    "A" * 44 + "=",  # 45 chars
    "A" * 41 + "A=",  # 43 chars
    "A" * 41 + "!A=",
    "A" * 41 + "-A=",  # URL-safe alphabet
    "A" * 41 + "_A=",
    "A" * 20 + "=" + "A" * 22 + "=",
    " " + "A" * 42 + "=",
    "A" * 21 + " " + "A" * 21 + "=",
    GOOD[:-2] + "Z=",
    "",
    "=",
    "A" * 42 + "\u00e9=",
]


@needs_wg
@pytest.mark.parametrize("text", BAD_OR_ODD_INPUTS)
def test_we_accept_exactly_what_wg_accepts(text):
    expected_pub = wg_pubkey(text)
    for cls in KEY_CLASSES:
        assert accepts(cls, text) == (expected_pub is not None), (cls, text)
    if expected_pub is not None:
        assert wgpy.PrivateKey.from_base64(text).public_key().to_base64() == expected_pub


@needs_wg
def test_every_last_character_like_wg():
    prefix = base64.b64encode(os.urandom(32)).decode()[:42]
    verdicts = {}
    for ch in B64_ALPHABET:
        text = prefix + ch + "="
        expected_pub = wg_pubkey(text)
        verdicts[ch] = expected_pub is not None
        for cls in KEY_CLASSES:
            assert accepts(cls, text) == verdicts[ch], (cls, text)
        if expected_pub is not None:
            key = wgpy.PrivateKey.from_base64(text)
            assert key.public_key().to_base64() == expected_pub
            assert key.to_base64() == text
    # Sanity of the oracle: only the 16 characters with the two low bits clear are canonical.
    assert sum(verdicts.values()) == 16


@needs_wg
def test_wg_rejects_trailing_garbage_and_so_do_we():
    key = wgpy.PrivateKey.generate().to_base64()
    for text in (key + "A", key + "=", key + "x" * 3):
        assert wg_pubkey(text) is None
        for cls in KEY_CLASSES:
            assert not accepts(cls, text)
