//! The one error type of the protocol core.
//!
//! Every fallible function of the crate returns `Result<_, Error>`; nothing that
//! depends on input panics. The variants are grouped the way a caller reacts to
//! them: malformed input, failed authentication, replay/rate rules, state
//! mismatches and exhausted or expired keys.

use crate::messages::MessageError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed message: {0}")]
    Message(#[from] MessageError),
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("Diffie-Hellman result is all zeros (low-order or invalid public key)")]
    ZeroDh,
    #[error("invalid mac1")]
    InvalidMac1,
    #[error("authentication failed")]
    Decrypt,
    #[error("initiation is from a different peer than this handshake's")]
    WrongPeer,
    #[error("handshake timestamp is not newer than the last accepted one")]
    ReplayedTimestamp,
    #[error("initiations from this peer arrive faster than 50 per second")]
    Flood,
    #[error("message does not match the handshake state")]
    UnexpectedMessage,
    #[error("receiver index does not match")]
    IndexMismatch,
    #[error("counter already seen or outside the replay window")]
    Replay,
    #[error("keypair is older than REJECT_AFTER_TIME")]
    KeyExpired,
    #[error("keypair counter reached REJECT_AFTER_MESSAGES")]
    CounterExhausted,
    #[error("buffer too small: need {needed} bytes, have {have}")]
    BufferTooSmall { needed: usize, have: usize },
    #[error("no cookie reply is expected for this handshake")]
    UnexpectedCookie,
    #[error("invalid prefix length /{cidr}: at most {max} for this address family")]
    InvalidPrefix { cidr: u8, max: u8 },
}

pub type Result<T> = core::result::Result<T, Error>;
