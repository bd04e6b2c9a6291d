//! The four WireGuard messages on the wire (little-endian integers).
//!
//! - Every message starts with a type byte and three reserved bytes that must
//!   be zero (the kernel compares the whole header as one `__le32`).
//! - Types 1, 2 and 3 are accepted only at their exact sizes (148, 92, 64);
//!   type 4 at 32 bytes or more (16-byte header + at least the 16-byte tag).
//! - mac1 covers everything before the two MACs; mac2 everything before mac2.
//! - Parsing never panics: any other input is a typed `MessageError`.

use crate::crypto::{MAC_LEN, TAG_LEN, XNONCE_LEN};

pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_COOKIE_REPLY: u8 = 3;
pub const TYPE_TRANSPORT: u8 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const TRANSPORT_HEADER_LEN: usize = 16;
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + TAG_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message is {0} bytes; a header needs 4")]
    TooShort(usize),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("reserved header bytes are not zero")]
    NonZeroReserved,
    #[error("message type {kind} must be {expected} bytes, got {got}")]
    WrongLength {
        kind: u8,
        expected: usize,
        got: usize,
    },
    #[error("transport message must be at least 32 bytes, got {0}")]
    TransportTooShort(usize),
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

fn header(kind: u8) -> [u8; 4] {
    [kind, 0, 0, 0]
}

/// Checks the header and the size rule for its type; returns the type.
pub fn message_type(b: &[u8]) -> Result<u8, MessageError> {
    if b.len() < 4 {
        return Err(MessageError::TooShort(b.len()));
    }
    if b[1..4] != [0, 0, 0] {
        return Err(MessageError::NonZeroReserved);
    }
    let kind = b[0];
    let expected = match kind {
        TYPE_INITIATION => INITIATION_LEN,
        TYPE_RESPONSE => RESPONSE_LEN,
        TYPE_COOKIE_REPLY => COOKIE_REPLY_LEN,
        TYPE_TRANSPORT => {
            return if b.len() >= TRANSPORT_MIN_LEN {
                Ok(kind)
            } else {
                Err(MessageError::TransportTooShort(b.len()))
            };
        }
        other => return Err(MessageError::UnknownType(other)),
    };
    if b.len() != expected {
        return Err(MessageError::WrongLength {
            kind,
            expected,
            got: b.len(),
        });
    }
    Ok(kind)
}

fn expect_type(b: &[u8], kind: u8) -> Result<(), MessageError> {
    let got = message_type(b)?;
    if got != kind {
        return Err(MessageError::UnknownType(got));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiation {
    pub sender: u32,
    pub ephemeral: [u8; 32],
    pub encrypted_static: [u8; 32 + TAG_LEN],
    pub encrypted_timestamp: [u8; 12 + TAG_LEN],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl Initiation {
    pub fn parse(b: &[u8]) -> Result<Self, MessageError> {
        expect_type(b, TYPE_INITIATION)?;
        Ok(Self {
            sender: u32_at(b, 4),
            ephemeral: array_at(b, 8),
            encrypted_static: array_at(b, 40),
            encrypted_timestamp: array_at(b, 88),
            mac1: array_at(b, 116),
            mac2: array_at(b, 132),
        })
    }

    pub fn to_bytes(&self) -> [u8; INITIATION_LEN] {
        let mut b = [0u8; INITIATION_LEN];
        b[0..4].copy_from_slice(&header(TYPE_INITIATION));
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..40].copy_from_slice(&self.ephemeral);
        b[40..88].copy_from_slice(&self.encrypted_static);
        b[88..116].copy_from_slice(&self.encrypted_timestamp);
        b[116..132].copy_from_slice(&self.mac1);
        b[132..148].copy_from_slice(&self.mac2);
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub sender: u32,
    pub receiver: u32,
    pub ephemeral: [u8; 32],
    pub encrypted_nothing: [u8; TAG_LEN],
    pub mac1: [u8; MAC_LEN],
    pub mac2: [u8; MAC_LEN],
}

impl Response {
    pub fn parse(b: &[u8]) -> Result<Self, MessageError> {
        expect_type(b, TYPE_RESPONSE)?;
        Ok(Self {
            sender: u32_at(b, 4),
            receiver: u32_at(b, 8),
            ephemeral: array_at(b, 12),
            encrypted_nothing: array_at(b, 44),
            mac1: array_at(b, 60),
            mac2: array_at(b, 76),
        })
    }

    pub fn to_bytes(&self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0..4].copy_from_slice(&header(TYPE_RESPONSE));
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..12].copy_from_slice(&self.receiver.to_le_bytes());
        b[12..44].copy_from_slice(&self.ephemeral);
        b[44..60].copy_from_slice(&self.encrypted_nothing);
        b[60..76].copy_from_slice(&self.mac1);
        b[76..92].copy_from_slice(&self.mac2);
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieReply {
    pub receiver: u32,
    pub nonce: [u8; XNONCE_LEN],
    pub encrypted_cookie: [u8; MAC_LEN + TAG_LEN],
}

impl CookieReply {
    pub fn parse(b: &[u8]) -> Result<Self, MessageError> {
        expect_type(b, TYPE_COOKIE_REPLY)?;
        Ok(Self {
            receiver: u32_at(b, 4),
            nonce: array_at(b, 8),
            encrypted_cookie: array_at(b, 32),
        })
    }

    pub fn to_bytes(&self) -> [u8; COOKIE_REPLY_LEN] {
        let mut b = [0u8; COOKIE_REPLY_LEN];
        b[0..4].copy_from_slice(&header(TYPE_COOKIE_REPLY));
        b[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        b[8..32].copy_from_slice(&self.nonce);
        b[32..64].copy_from_slice(&self.encrypted_cookie);
        b
    }
}

/// The fixed part of a transport message; the ciphertext follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportHeader {
    pub receiver: u32,
    pub counter: u64,
}

impl TransportHeader {
    pub fn parse(b: &[u8]) -> Result<Self, MessageError> {
        expect_type(b, TYPE_TRANSPORT)?;
        Ok(Self {
            receiver: u32_at(b, 4),
            counter: u64::from_le_bytes(array_at(b, 8)),
        })
    }

    pub fn write(&self, out: &mut [u8; TRANSPORT_HEADER_LEN]) {
        out[0..4].copy_from_slice(&header(TYPE_TRANSPORT));
        out[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        out[8..16].copy_from_slice(&self.counter.to_le_bytes());
    }
}

/// The receiver index of a type 2, 3 or 4 message (the index this side chose).
pub fn receiver_index(b: &[u8]) -> Result<u32, MessageError> {
    match message_type(b)? {
        TYPE_RESPONSE => Ok(u32_at(b, 8)),
        TYPE_COOKIE_REPLY | TYPE_TRANSPORT => Ok(u32_at(b, 4)),
        other => Err(MessageError::UnknownType(other)),
    }
}

/// Byte offsets of mac1 and mac2 in a message of `len` bytes.
pub fn mac_offsets(len: usize) -> (usize, usize) {
    (len - 2 * MAC_LEN, len - MAC_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_accepted() {
        let mut b = vec![0u8; 148];
        b[0] = 1;
        assert_eq!(message_type(&b), Ok(1));
        let mut b = vec![0u8; 92];
        b[0] = 2;
        assert_eq!(message_type(&b), Ok(2));
        let mut b = vec![0u8; 64];
        b[0] = 3;
        assert_eq!(message_type(&b), Ok(3));
        for n in [32, 33, 48, 1500, 65535] {
            let mut b = vec![0u8; n];
            b[0] = 4;
            assert_eq!(message_type(&b), Ok(4));
        }
    }

    #[test]
    fn wrong_sizes_rejected() {
        for (kind, good) in [(1u8, 148usize), (2, 92), (3, 64)] {
            for n in [4, good - 1, good + 1, 200] {
                let mut b = vec![0u8; n];
                b[0] = kind;
                assert_eq!(
                    message_type(&b),
                    Err(MessageError::WrongLength {
                        kind,
                        expected: good,
                        got: n
                    })
                );
            }
        }
        let mut b = vec![0u8; 31];
        b[0] = 4;
        assert_eq!(message_type(&b), Err(MessageError::TransportTooShort(31)));
        assert_eq!(message_type(&[1, 0, 0]), Err(MessageError::TooShort(3)));
        assert_eq!(message_type(&[]), Err(MessageError::TooShort(0)));
    }

    #[test]
    fn reserved_and_unknown_rejected() {
        for r in 1..4 {
            let mut b = vec![0u8; 148];
            b[0] = 1;
            b[r] = 1;
            assert_eq!(message_type(&b), Err(MessageError::NonZeroReserved));
        }
        for t in [0u8, 5, 255] {
            let mut b = vec![0u8; 148];
            b[0] = t;
            assert_eq!(message_type(&b), Err(MessageError::UnknownType(t)));
        }
    }

    #[test]
    fn round_trips() {
        let i = Initiation {
            sender: 0x01020304,
            ephemeral: [1; 32],
            encrypted_static: [2; 48],
            encrypted_timestamp: [3; 28],
            mac1: [4; 16],
            mac2: [5; 16],
        };
        let b = i.to_bytes();
        assert_eq!(&b[..8], &[1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(Initiation::parse(&b), Ok(i));
        let r = Response {
            sender: 7,
            receiver: 9,
            ephemeral: [1; 32],
            encrypted_nothing: [2; 16],
            mac1: [3; 16],
            mac2: [4; 16],
        };
        let b = r.to_bytes();
        assert_eq!(Response::parse(&b), Ok(r));
        assert_eq!(receiver_index(&b), Ok(9));
        let c = CookieReply {
            receiver: 11,
            nonce: [1; 24],
            encrypted_cookie: [2; 32],
        };
        let b = c.to_bytes();
        assert_eq!(CookieReply::parse(&b), Ok(c));
        assert_eq!(receiver_index(&b), Ok(11));
        let mut t = [0u8; 32];
        let mut h = [0u8; 16];
        TransportHeader {
            receiver: 13,
            counter: 0x1122334455667788,
        }
        .write(&mut h);
        t[..16].copy_from_slice(&h);
        assert_eq!(
            TransportHeader::parse(&t),
            Ok(TransportHeader {
                receiver: 13,
                counter: 0x1122334455667788
            })
        );
        assert_eq!(receiver_index(&t), Ok(13));
        assert!(Response::parse(
            &Initiation::parse(&i_bytes())
                .map(|i| i.to_bytes())
                .unwrap_or([0; 148])
        )
        .is_err());
    }

    fn i_bytes() -> [u8; 148] {
        let mut b = [0u8; 148];
        b[0] = 1;
        b
    }

    #[test]
    fn mac_offsets_match_the_kernel() {
        assert_eq!(mac_offsets(INITIATION_LEN), (116, 132));
        assert_eq!(mac_offsets(RESPONSE_LEN), (60, 76));
    }
}
