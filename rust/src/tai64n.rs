//! TAI64N handshake timestamps.
//!
//! - 12 bytes: BE64(2^62 + 10 + unix seconds) || BE32(nanoseconds).
//! - Nanoseconds are rounded down to a multiple of 2^24 (about 16.8 ms) so the
//!   timestamp does not leak a precise clock (kernel `tai64n_now`).
//! - A responder accepts an initiation only if its timestamp is strictly
//!   greater, byte for byte, than the greatest one accepted from that peer.

use std::time::Duration;

pub const TIMESTAMP_LEN: usize = 12;
const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
const WHITENER_MASK: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64N(pub [u8; TIMESTAMP_LEN]);

impl Tai64N {
    pub fn from_unix(t: Duration) -> Self {
        let mut b = [0u8; TIMESTAMP_LEN];
        b[..8].copy_from_slice(&TAI64_EPOCH.wrapping_add(t.as_secs()).to_be_bytes());
        b[8..].copy_from_slice(&(t.subsec_nanos() & !WHITENER_MASK).to_be_bytes());
        Self(b)
    }

    /// Strictly later, compared as bytes (equal to comparing the big-endian numbers).
    pub fn is_after(&self, other: &Tai64N) -> bool {
        self.0 > other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let t = Tai64N::from_unix(Duration::new(1, 0x0123_4567));
        assert_eq!(&t.0[..8], &0x4000_0000_0000_000bu64.to_be_bytes());
        assert_eq!(&t.0[8..], &0x0100_0000u32.to_be_bytes());
    }

    // wireguard-go tai64n_test.go: stamps within one whitening step of the
    // start are not after it; 20 ms later is.
    #[test]
    fn whitening_monotonicity() {
        let start = Duration::new(0, 123_456_789);
        let base = Tai64N::from_unix(start);
        for d in [
            Duration::from_nanos(10),
            Duration::from_micros(10),
            Duration::from_millis(1),
            Duration::from_millis(10),
        ] {
            assert!(!Tai64N::from_unix(start + d).is_after(&base), "{d:?}");
        }
        assert!(Tai64N::from_unix(start + Duration::from_millis(20)).is_after(&base));
        assert!(!base.is_after(&base));
    }
}
