"""wgpy: WireGuard with a Rust protocol core and a Python control plane.

The names below are the sans-I/O protocol API: keys, handshakes, transport
sessions and cookies. They need no privileges and do no I/O; the caller
moves the bytes.
"""

from wgpy._core import (
    COOKIE_REPLY_LEN,
    COOKIE_SECRET_MAX_AGE,
    INITIATION_LEN,
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REPLAY_WINDOW_SIZE,
    RESPONSE_LEN,
    TRANSPORT_MIN_LEN,
    AuthenticationError,
    CookieChecker,
    Handshake,
    HandshakeStateError,
    Initiation,
    InvalidKeyError,
    ManualClock,
    MessageFormatError,
    PresharedKey,
    PrivateKey,
    ProtocolError,
    PublicKey,
    RateLimitError,
    ReplayError,
    Session,
    SessionExpiredError,
    inner_packet_len,
    message_type,
    open_initiation,
    receiver_index,
)

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

__all__ = [
    "COOKIE_REPLY_LEN",
    "COOKIE_SECRET_MAX_AGE",
    "INITIATION_LEN",
    "KEEPALIVE_TIMEOUT",
    "MESSAGE_COOKIE_REPLY",
    "MESSAGE_INITIATION",
    "MESSAGE_RESPONSE",
    "MESSAGE_TRANSPORT",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "REPLAY_WINDOW_SIZE",
    "RESPONSE_LEN",
    "TRANSPORT_MIN_LEN",
    "AuthenticationError",
    "CookieChecker",
    "Handshake",
    "HandshakeStateError",
    "Initiation",
    "InvalidKeyError",
    "ManualClock",
    "MessageFormatError",
    "PresharedKey",
    "PrivateKey",
    "ProtocolError",
    "PublicKey",
    "RateLimitError",
    "ReplayError",
    "Session",
    "SessionExpiredError",
    "inner_packet_len",
    "message_type",
    "open_initiation",
    "receiver_index",
]
