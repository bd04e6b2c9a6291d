"""The protocol's limits and timer constants (whitepaper 6.1; kernel `messages.h`).

- Times are in seconds (floats), counts are ints.
- Every value the Rust core also uses comes from `wgpy._core`, so the data
  plane and the control plane cannot disagree; only the timers' own values
  are defined here.
- Derived values are spelled as the formulas the kernel uses, so a change to
  a base value cannot leave them stale.
"""

from wgpy._core import (
    COOKIE_SECRET_MAX_AGE,
    INITIATIONS_PER_SECOND,
    KEEPALIVE_TIMEOUT,
    MAX_QUEUED_HANDSHAKES,
    MAX_STAGED_PACKETS,
    RATELIMITER_PACKETS_BURSTABLE,
    RATELIMITER_PACKETS_PER_SECOND,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    UNDER_LOAD_AFTER_TIME,
    UNDER_LOAD_QUEUE_LENGTH,
)

# Retransmit and new-handshake timers add up to HZ/3 of jitter (kernel
# REKEY_TIMEOUT_JITTER_MAX_JIFFIES), so peers that started together drift apart.
REKEY_TIMEOUT_JITTER_MAX: float = 1 / 3

# Retries of an unanswered initiation: 90 / 5 = 18, so 1 + 19 = 20 initiations
# go out before giving up (kernel: MAX_TIMER_HANDSHAKES = 90 / REKEY_TIMEOUT).
MAX_TIMER_HANDSHAKES: int = int(REKEY_ATTEMPT_TIME // REKEY_TIMEOUT)

# Sent data with no reply at all for this long means the session is dead.
NEW_HANDSHAKE_TIMEOUT: float = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT

# With no new session for this long (540 s), all key material is erased.
ZERO_KEY_MATERIAL_TIME: float = REJECT_AFTER_TIME * 3

__all__ = [
    "COOKIE_SECRET_MAX_AGE",
    "INITIATIONS_PER_SECOND",
    "KEEPALIVE_TIMEOUT",
    "MAX_QUEUED_HANDSHAKES",
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
