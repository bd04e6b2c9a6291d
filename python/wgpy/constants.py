"""The protocol's limits and timer constants (whitepaper 6.1; kernel `messages.h`).

- Times are in seconds (floats), counts are ints.
- The values the Rust core also uses come from `wgpy._core`, so the data
  plane and the control plane cannot disagree; only the control-plane-only
  values are defined here.
- Derived values are spelled as the formulas the kernel uses, so a change to
  a base value cannot leave them stale.
"""

from wgpy._core import (
    COOKIE_SECRET_MAX_AGE,
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)

# Retransmit and new-handshake timers add up to HZ/3 of jitter (kernel
# REKEY_TIMEOUT_JITTER_MAX_JIFFIES), so peers that started together drift apart.
REKEY_TIMEOUT_JITTER_MAX: float = 1 / 3

# Retries of an unanswered initiation: 90 / 5 = 18, so 1 + 19 = 20 initiations
# go out before giving up (kernel: MAX_TIMER_HANDSHAKES = 90 / REKEY_TIMEOUT).
MAX_TIMER_HANDSHAKES: int = int(REKEY_ATTEMPT_TIME // REKEY_TIMEOUT)

# Sent data with no reply at all for this long means the session is dead.
NEW_HANDSHAKE_TIMEOUT: float = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT

# The initiator rekeys from the receive path once, this close to REJECT_AFTER_TIME
# (165 s), so that the reply it is waiting for can still be decrypted.
REKEY_ON_RECEIVE_AGE: float = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT

# With no new session for this long (540 s), all key material is erased.
ZERO_KEY_MATERIAL_TIME: float = REJECT_AFTER_TIME * 3

# Packets waiting for a handshake, per peer.
MAX_STAGED_PACKETS: int = 128

# A peer's initiations are consumed at most this often (one per 20 ms).
INITIATIONS_PER_SECOND: int = 50

# The device's queue of received handshake messages.
MAX_QUEUED_INCOMING_HANDSHAKES: int = 4096

# "Under load" starts at 1/8 of that queue and lasts this long after the last
# time the queue was that full (kernel receive.c).
UNDER_LOAD_QUEUE_LENGTH: int = MAX_QUEUED_INCOMING_HANDSHAKES // 8
UNDER_LOAD_AFTER_TIME: float = 1.0

# The per-source-IP limit on handshake messages processed under load
# (kernel ratelimiter.c).
RATELIMITER_PACKETS_PER_SECOND: int = 20
RATELIMITER_PACKETS_BURSTABLE: int = 5

__all__ = [
    "COOKIE_SECRET_MAX_AGE",
    "INITIATIONS_PER_SECOND",
    "KEEPALIVE_TIMEOUT",
    "MAX_QUEUED_INCOMING_HANDSHAKES",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "NEW_HANDSHAKE_TIMEOUT",
    "RATELIMITER_PACKETS_BURSTABLE",
    "RATELIMITER_PACKETS_PER_SECOND",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_ON_RECEIVE_AGE",
    "REKEY_TIMEOUT",
    "REKEY_TIMEOUT_JITTER_MAX",
    "UNDER_LOAD_AFTER_TIME",
    "UNDER_LOAD_QUEUE_LENGTH",
    "ZERO_KEY_MATERIAL_TIME",
]
