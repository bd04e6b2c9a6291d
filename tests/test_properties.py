"""Robustness: any bytes fed to the parsers either work or raise a ProtocolError.

A PyO3 panic surfaces as pyo3_runtime.PanicException, which derives from
BaseException, so the checks catch BaseException and fail on anything that is
not a wgpy.ProtocolError.
"""

import struct

import wgpy
import wgref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wgpairs import Inputs, establish

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Fixed inputs, so that every fresh Handshake or Session built from them
# accepts the same pre-computed valid messages.
INPUTS = Inputs(
    i_static=wgpy.PrivateKey.from_bytes(bytes(range(1, 33))),
    r_static=wgpy.PrivateKey.from_bytes(bytes(range(33, 65))),
    i_ephemeral=wgpy.PrivateKey.from_bytes(bytes(range(65, 97))),
    r_ephemeral=wgpy.PrivateKey.from_bytes(bytes(range(97, 129))),
    i_index=0x0A0B0C0D,
    r_index=0x01020304,
    timestamp=wgref.tai64n(1_700_000_000),
    psk=wgpy.PresharedKey.from_bytes(bytes(range(129, 161))),
)
I_PUB = bytes(INPUTS.i_static.public_key())
R_PUB = bytes(INPUTS.r_static.public_key())
SOURCE = ("198.51.100.3", 40000)

BASE = establish(INPUTS)
INITIATION = BASE.initiation
RESPONSE = BASE.response
TRANSPORT = BASE.i_session.encrypt(b"hello, world", 0)
KEEPALIVE = BASE.i_session.keepalive()
COOKIE_REPLY = wgpy.CookieChecker(INPUTS.r_static.public_key()).create_reply(INITIATION, SOURCE)
VALID = [INITIATION, RESPONSE, TRANSPORT, KEEPALIVE, COOKIE_REPLY]

# Curve25519 points whose DH with any scalar is all zeros (or that are non-canonical).
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def fresh_initiator():
    """A Handshake with the initiation in flight that RESPONSE and COOKIE_REPLY answer."""
    hs = wgpy.Handshake(INPUTS.i_static, INPUTS.r_static.public_key(), INPUTS.psk)
    msg = hs.create_initiation(
        sender_index=INPUTS.i_index, ephemeral=INPUTS.i_ephemeral, timestamp=INPUTS.timestamp
    )
    assert msg == INITIATION
    return hs


def fresh_sessions():
    pair = establish(INPUTS)
    return pair.i_session, pair.r_session


# Length-preserving mutations are weighted up so that most inputs reach the crypto.
MUTATIONS = ["flip"] * 5 + ["set"] * 2 + ["low_order"] * 2 + ["truncate", "extend", "header"]


@st.composite
def mutated(draw, pool=tuple(VALID)):
    msg = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "flip" and msg:
            pos = draw(st.integers(0, len(msg) - 1))
            msg[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and msg:
            pos = draw(st.integers(0, len(msg) - 1))
            msg[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del msg[draw(st.integers(0, len(msg))) :]
        elif kind == "extend":
            msg += draw(st.binary(min_size=1, max_size=64))
        elif kind == "low_order" and len(msg) >= 44:
            point = draw(st.sampled_from(LOW_ORDER))
            start = 8 if msg[0] == 1 else 12
            msg[start : start + 32] = point
        elif kind == "header" and len(msg) >= 4:
            msg[0:4] = bytes([draw(st.integers(0, 6)), 0, 0, 0])
    out = bytes(msg)
    if draw(st.booleans()) and len(out) in (148, 92):
        # Repair mac1 so the input reaches the DH and AEAD code.
        out = wgref.with_mac1(out, R_PUB if len(out) == 148 else I_PUB)
    return out


messages = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda t, rest: bytes([t, 0, 0, 0]) + rest, st.integers(0, 5), st.binary(max_size=160)
    ),
    mutated(),
    st.sampled_from(VALID),
)


def focused(*bases):
    """Mostly mutations of the messages the function under test expects."""
    return st.one_of(messages, mutated(bases), mutated(bases))


def safely(fn, *args):
    """Calls fn; returns its result or the ProtocolError it raised. Anything else fails."""
    try:
        return fn(*args)
    except BaseException as exc:  # a PanicException is a BaseException
        if isinstance(exc, wgpy.ProtocolError):
            return exc
        raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__}: {exc}") from exc


def expected_type(msg):
    """The message type by the kernel's rules (receive.c:validate_header_len), or None."""
    if len(msg) < 4 or msg[1:4] != b"\x00\x00\x00":
        return None
    sizes = {1: 148, 2: 92, 3: 64}
    kind = msg[0]
    if kind in sizes:
        return kind if len(msg) == sizes[kind] else None
    if kind == 4:
        return 4 if len(msg) >= 32 else None
    return None


@SETTINGS
@given(messages)
def test_message_type_and_receiver_index(msg):
    kind = expected_type(msg)
    got = safely(wgpy.message_type, msg)
    if kind is None:
        assert isinstance(got, wgpy.MessageFormatError)
    else:
        assert got == kind
    index = safely(wgpy.receiver_index, msg)
    if kind == 2:
        assert index == struct.unpack("<I", msg[8:12])[0]
    elif kind in (3, 4):
        assert index == struct.unpack("<I", msg[4:8])[0]
    else:
        assert isinstance(index, wgpy.MessageFormatError)


@SETTINGS
@given(focused(INITIATION))
def test_open_initiation(msg):
    got = safely(wgpy.open_initiation, INPUTS.r_static, msg)
    if isinstance(got, wgpy.Initiation):
        # Only the genuine Noise body opens; the sender index is covered by mac1 alone.
        assert msg[8:116] == INITIATION[8:116]
        assert msg[-32:-16] == wgref.mac1_of(msg, R_PUB)
        assert got.timestamp == INPUTS.timestamp
        assert got.sender_index == struct.unpack("<I", msg[4:8])[0]
        assert got.peer_public_key == INPUTS.i_static.public_key()
    elif expected_type(msg) != 1:
        assert isinstance(got, wgpy.MessageFormatError)


@SETTINGS
@given(focused(RESPONSE))
def test_consume_response(msg):
    hs = fresh_initiator()
    got = safely(hs.consume_response, msg)
    if isinstance(got, wgpy.Session):
        # Only the genuine Noise body is accepted; the sender index is covered by mac1 alone.
        assert msg[8:60] == RESPONSE[8:60]
        assert msg[-32:-16] == wgref.mac1_of(msg, I_PUB)
        assert got.remote_index == struct.unpack("<I", msg[4:8])[0]
        assert hs.pending_index is None
    else:
        assert isinstance(got, wgpy.ProtocolError)
        # A refused message leaves the handshake waiting for the real response.
        assert hs.pending_index == INPUTS.i_index
        assert isinstance(hs.consume_response(RESPONSE), wgpy.Session)


@SETTINGS
@given(focused(COOKIE_REPLY))
def test_consume_cookie_reply(msg):
    hs = fresh_initiator()
    got = safely(hs.consume_cookie_reply, msg)
    if got is None:
        assert hs.has_cookie
        assert msg[:4] == b"\x03\x00\x00\x00"
        assert msg[8:] == COOKIE_REPLY[8:]
    else:
        assert not hs.has_cookie


@SETTINGS
@given(st.lists(focused(TRANSPORT, KEEPALIVE), max_size=4))
def test_session_decrypt(msgs):
    i_session, r_session = fresh_sessions()
    one_by_one = []
    for msg in msgs:
        got = safely(r_session.decrypt, msg)
        if isinstance(got, bytes):
            assert msg in (TRANSPORT, KEEPALIVE)
            one_by_one.append(got)
        else:
            one_by_one.append(None)
        # Nothing valid was ever sent towards the initiator.
        assert isinstance(safely(i_session.decrypt, msg), wgpy.ProtocolError)
    # The batch form never raises for bad input and agrees with decrypt().
    _, r2 = fresh_sessions()
    assert safely(r2.decrypt_many, list(msgs)) == one_by_one
    # Garbage never moves the replay window: genuine messages not yet seen still open.
    for genuine in (TRANSPORT, KEEPALIVE):
        if genuine not in msgs:
            assert isinstance(safely(r2.decrypt, genuine), bytes)


@SETTINGS
@given(
    focused(INITIATION, RESPONSE),
    st.one_of(
        st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
        st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
    ),
)
def test_cookie_checker(msg, source):
    checker = wgpy.CookieChecker(INPUTS.r_static.public_key())
    ok1 = safely(checker.verify_mac1, msg)
    ok2 = safely(checker.verify_mac2, msg, source)
    reply = safely(checker.create_reply, msg, source)
    kind = expected_type(msg)
    if kind in (1, 2):
        assert isinstance(ok1, bool)
        assert ok1 == (msg[-32:-16] == wgref.mac1_of(msg, R_PUB))
        assert ok2 is False  # no cookie was ever handed out for this checker
        assert isinstance(reply, bytes)
        assert len(reply) == 64
        assert reply[4:8] == msg[4:8]
    else:
        for got in (ok1, ok2, reply):
            assert isinstance(got, wgpy.MessageFormatError)


@SETTINGS
@given(st.binary(max_size=80))
def test_key_parsers(data):
    text = data.decode("latin-1")
    for cls in (wgpy.PrivateKey, wgpy.PublicKey, wgpy.PresharedKey):
        got = safely(cls.from_bytes, data)
        assert (len(data) == 32) != isinstance(got, wgpy.InvalidKeyError)
        got = safely(cls.from_base64, text)
        if not isinstance(got, wgpy.ProtocolError):
            assert got.to_base64() == text
        got = safely(wgpy.inner_packet_len, data)
        assert got is None or 20 <= got <= len(data)


WINDOW = 8192 - 64
REJECT = 2**64 - 1 - WINDOW - 1


class KernelReplayModel:
    """receive.c:counter_validate as a set: accept a counter below REJECT_AFTER_MESSAGES
    that was not seen and is not more than COUNTER_WINDOW_SIZE behind the greatest."""

    def __init__(self):
        self.greatest = None
        self.seen = set()

    def accept(self, counter):
        if counter >= REJECT or counter in self.seen:
            return False
        if self.greatest is not None and counter + WINDOW < self.greatest:
            return False
        self.seen.add(counter)
        self.greatest = counter if self.greatest is None else max(self.greatest, counter)
        return True


@st.composite
def counter_walks(draw):
    """Counters that mostly hover around the window's edges, with some far jumps."""
    counters = []
    top = draw(st.integers(0, 3 * WINDOW))
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["near", "edge", "edge", "ahead", "far", "repeat", "limit"]))
        if kind == "near":
            c = top + draw(st.integers(-200, 200))
        elif kind == "edge":
            c = top - WINDOW + draw(st.integers(-3, 3))
        elif kind == "ahead":
            c = top + draw(st.integers(1, 3 * WINDOW))
        elif kind == "far":
            c = draw(st.integers(0, 2**64 - 1))
        elif kind == "repeat" and counters:
            c = draw(st.sampled_from(counters))
        else:
            c = REJECT + draw(st.integers(-2, 2))
        c = min(max(c, 0), 2**64 - 1)
        counters.append(c)
        top = max(top, c) if c < REJECT else top
    return counters


@SETTINGS
@given(counter_walks())
def test_replay_window_matches_kernel_model(counters):
    _, r_session = fresh_sessions()
    key, index = BASE.reference.initiator_send, r_session.local_index
    model = KernelReplayModel()
    for counter in counters:
        msg = wgref.transport_message(key, index, counter, b"")
        got = safely(r_session.decrypt, msg)
        if model.accept(counter):
            assert got == b"", counter
        else:
            assert isinstance(got, (wgpy.ReplayError, wgpy.SessionExpiredError)), counter
