//! Transport keypairs: the data-phase encryption after a handshake.
//!
//! - Each keypair has a send key and a receive key, the local and remote
//!   32-bit indices, its birth time and whether this side initiated it.
//! - Sending: counter = next 64-bit value, nonce = 4 zero bytes || LE64(counter);
//!   the plaintext is zero-padded to a multiple of 16 but never past the MTU;
//!   a keepalive is an empty plaintext (32 bytes on the wire).
//! - A send counter reaching REJECT_AFTER_MESSAGES, or a key older than
//!   REJECT_AFTER_TIME, is refused; REKEY_AFTER_MESSAGES, or REKEY_AFTER_TIME on
//!   the initiator's side only, asks for a new handshake.
//! - Receiving: refuse expired keys and counters past the limit, open the
//!   AEAD, and only then mark the counter in the replay window.
//! - Keys are overwritten when the keypair is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ring::aead::LessSafeKey;
use zeroize::Zeroizing;

use crate::clock::has_expired;
use crate::crypto::{aead_key, aead_open_in_place, aead_seal_in_place, KEY_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::messages::{TransportHeader, TRANSPORT_HEADER_LEN};
use crate::replay::{ReplayWindow, WINDOW_SIZE};
use crate::sync::lock;

pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - WINDOW_SIZE - 1;
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Receive-side rekey age for the initiator: REJECT - KEEPALIVE - REKEY_TIMEOUT.
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(165);
pub const PADDING_MULTIPLE: usize = 16;

/// Bytes of zero padding the kernel adds to a `len`-byte packet for `mtu`
/// (`calculate_skb_padding`); `mtu == 0` means "no cap".
pub fn padding_for(len: usize, mtu: usize) -> usize {
    // min(mtu, align16(n)) - n, written so that no step can overflow.
    let to_multiple = |n: usize| (PADDING_MULTIPLE - n % PADDING_MULTIPLE) % PADDING_MULTIPLE;
    if mtu == 0 {
        return to_multiple(len);
    }
    let last_unit = if len > mtu { len % mtu } else { len };
    (mtu - last_unit).min(to_multiple(last_unit))
}

/// Wire size of a transport message carrying a `len`-byte packet
/// (`usize::MAX` if that does not fit in a `usize`).
pub fn encrypted_len(len: usize, mtu: usize) -> usize {
    checked_encrypted_len(len, mtu).unwrap_or(usize::MAX)
}

fn checked_encrypted_len(len: usize, mtu: usize) -> Option<usize> {
    len.checked_add(padding_for(len, mtu))?
        .checked_add(TRANSPORT_HEADER_LEN + TAG_LEN)
}

/// Why the data plane asks for a new handshake while a keypair still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RekeyTrigger {
    OnSend = 1,
    OnReceive = 2,
}

pub struct Keypair {
    send: LessSafeKey,
    recv: LessSafeKey,
    send_counter: AtomicU64,
    send_valid: AtomicBool,
    rekey_requested: AtomicU8,
    replay: Mutex<ReplayWindow>,
    pub local_index: u32,
    pub remote_index: u32,
    pub birth: Duration,
    pub is_initiator: bool,
}

impl core::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .finish_non_exhaustive()
    }
}

impl Drop for Keypair {
    fn drop(&mut self) {
        // ring keeps no zeroize-on-drop for its keys, so overwrite them in
        // place with keys made from zeros; black_box keeps the stores alive.
        if let Ok(z) = aead_key(&[0u8; KEY_LEN]) {
            self.send = z;
        }
        if let Ok(z) = aead_key(&[0u8; KEY_LEN]) {
            self.recv = z;
        }
        std::hint::black_box(&self.send);
        std::hint::black_box(&self.recv);
    }
}

impl Keypair {
    pub fn new(
        send: &Zeroizing<[u8; KEY_LEN]>,
        recv: &Zeroizing<[u8; KEY_LEN]>,
        local_index: u32,
        remote_index: u32,
        birth: Duration,
        is_initiator: bool,
    ) -> Result<Self> {
        Ok(Self {
            send: aead_key(send)?,
            recv: aead_key(recv)?,
            send_counter: AtomicU64::new(0),
            send_valid: AtomicBool::new(true),
            rekey_requested: AtomicU8::new(0),
            replay: Mutex::new(ReplayWindow::new()),
            local_index,
            remote_index,
            birth,
            is_initiator,
        })
    }

    /// The next counter this keypair will send with.
    pub fn sending_counter(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// The greatest counter received and authenticated so far.
    pub fn greatest_received(&self) -> Option<u64> {
        lock(&self.replay).greatest()
    }

    pub fn is_expired(&self, now: Duration) -> bool {
        has_expired(self.birth, REJECT_AFTER_TIME, now)
    }

    /// Whether sending with this keypair should trigger a new handshake
    /// (kernel `send.c:keep_key_fresh`): too many messages, or too old and we
    /// initiated it. The responder never rekeys on time.
    pub fn needs_rekey_on_send(&self, now: Duration) -> bool {
        self.sending_counter() > REKEY_AFTER_MESSAGES
            || (self.is_initiator && has_expired(self.birth, REKEY_AFTER_TIME, now))
    }

    /// Whether receiving on this keypair should trigger a handshake
    /// (kernel `receive.c:keep_key_fresh`): initiator only, past 165 s.
    pub fn needs_rekey_on_receive(&self, now: Duration) -> bool {
        self.is_initiator && has_expired(self.birth, REKEY_ON_RECEIVE_AGE, now)
    }

    /// Stops this keypair from sending (kernel `sending.is_valid = false`,
    /// used when keys are expired by a private key change); it still receives.
    pub fn invalidate_sending(&self) {
        self.send_valid.store(false, Ordering::Relaxed);
    }

    /// Whether a packet could be sent with this keypair now.
    pub fn can_send(&self, now: Duration) -> bool {
        self.send_valid.load(Ordering::Relaxed)
            && !self.is_expired(now)
            && self.sending_counter() < REJECT_AFTER_MESSAGES
    }

    /// True the first time it is called for `trigger`: lets the data plane
    /// ask for a rekey once per keypair and trigger instead of once per packet.
    pub fn claim_rekey_request(&self, trigger: RekeyTrigger) -> bool {
        let bit = trigger as u8;
        self.rekey_requested.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// Takes the next send counter, or fails if the key may no longer send.
    pub fn next_counter(&self, now: Duration) -> Result<u64> {
        self.next_counters(1, now).map(|r| r.start)
    }

    /// Takes up to `n` consecutive send counters for a batch (fewer when the
    /// keypair reaches its message limit), or fails if it can send none.
    pub fn next_counters(&self, n: usize, now: Duration) -> Result<core::ops::Range<u64>> {
        if !self.send_valid.load(Ordering::Relaxed) || self.is_expired(now) {
            return Err(Error::KeyExpired);
        }
        let start = self.send_counter.fetch_add(n as u64, Ordering::Relaxed);
        let end = start.saturating_add(n as u64);
        if end > REJECT_AFTER_MESSAGES {
            // Keep the counter pinned at the limit so it can never wrap.
            self.send_counter
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            if start >= REJECT_AFTER_MESSAGES {
                return Err(Error::CounterExhausted);
            }
            return Ok(start..REJECT_AFTER_MESSAGES);
        }
        Ok(start..end)
    }

    /// Encrypts in place. `buf` is laid out as 16 header bytes, `len` bytes of
    /// plaintext, then room for padding and the tag; returns the wire length.
    pub fn seal_in_place(
        &self,
        buf: &mut [u8],
        len: usize,
        mtu: usize,
        now: Duration,
    ) -> Result<usize> {
        let total = Self::sealed_len(buf, len, mtu)?;
        let counter = self.next_counter(now)?;
        self.seal(buf, len, total, counter)
    }

    /// Encrypts in place with a counter taken earlier (`next_counters`), so a
    /// batch can be sealed on several threads and still go out in order.
    pub fn seal_with_counter(
        &self,
        buf: &mut [u8],
        len: usize,
        mtu: usize,
        counter: u64,
    ) -> Result<usize> {
        let total = Self::sealed_len(buf, len, mtu)?;
        self.seal(buf, len, total, counter)
    }

    fn sealed_len(buf: &[u8], len: usize, mtu: usize) -> Result<usize> {
        match checked_encrypted_len(len, mtu) {
            Some(total) if total <= buf.len() => Ok(total),
            _ => Err(Error::BufferTooSmall {
                needed: encrypted_len(len, mtu),
                have: buf.len(),
            }),
        }
    }

    fn seal(&self, buf: &mut [u8], len: usize, total: usize, counter: u64) -> Result<usize> {
        let padded = total - TRANSPORT_HEADER_LEN - TAG_LEN;
        buf[TRANSPORT_HEADER_LEN + len..TRANSPORT_HEADER_LEN + padded].fill(0);
        let mut header = [0u8; TRANSPORT_HEADER_LEN];
        TransportHeader {
            receiver: self.remote_index,
            counter,
        }
        .write(&mut header);
        buf[..TRANSPORT_HEADER_LEN].copy_from_slice(&header);
        aead_seal_in_place(
            &self.send,
            counter,
            &[],
            &mut buf[TRANSPORT_HEADER_LEN..total],
        )?;
        Ok(total)
    }

    /// Encrypts `plaintext` into a new transport message.
    pub fn encrypt(&self, plaintext: &[u8], mtu: usize, now: Duration) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; encrypted_len(plaintext.len(), mtu)];
        buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plaintext.len()]
            .copy_from_slice(plaintext);
        let n = self.seal_in_place(&mut buf, plaintext.len(), mtu, now)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Authenticates and decrypts a transport message in place; on success
    /// returns the range of `msg` holding the (still padded) plaintext.
    pub fn open_in_place(&self, msg: &mut [u8], now: Duration) -> Result<core::ops::Range<usize>> {
        let header = TransportHeader::parse(msg)?;
        if header.receiver != self.local_index {
            return Err(Error::IndexMismatch);
        }
        if self.is_expired(now) {
            return Err(Error::KeyExpired);
        }
        // Cheap pre-check so obvious replays skip the AEAD; the authoritative
        // update happens after the tag verifies.
        {
            let w = lock(&self.replay);
            if !w.check(header.counter) {
                return Err(if header.counter >= REJECT_AFTER_MESSAGES {
                    Error::CounterExhausted
                } else {
                    Error::Replay
                });
            }
        }
        let n = aead_open_in_place(
            &self.recv,
            header.counter,
            &[],
            &mut msg[TRANSPORT_HEADER_LEN..],
        )?;
        let mut w = lock(&self.replay);
        if !w.update(header.counter) {
            return Err(Error::Replay);
        }
        Ok(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n)
    }

    /// Decrypts a transport message into a new buffer (padding included).
    pub fn decrypt(&self, msg: &[u8], now: Duration) -> Result<Vec<u8>> {
        let mut buf = msg.to_vec();
        let range = self.open_in_place(&mut buf, now)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }
}

/// Length of the IP packet at the start of a decrypted, padded plaintext, as
/// its header states it (IPv4 total length, IPv6 payload length + 40). `None`
/// if it is not an IP packet or claims more bytes than there are.
pub fn inner_packet_len(plain: &[u8]) -> Option<usize> {
    let version = plain.first()? >> 4;
    let len = match version {
        4 if plain.len() >= 20 => usize::from(u16::from_be_bytes([plain[2], plain[3]])),
        6 if plain.len() >= 40 => usize::from(u16::from_be_bytes([plain[4], plain[5]])) + 40,
        _ => return None,
    };
    (len <= plain.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: Duration) -> (Keypair, Keypair) {
        let a = Zeroizing::new([1u8; 32]);
        let b = Zeroizing::new([2u8; 32]);
        let init = Keypair::new(&a, &b, 10, 20, now, true).expect("keypair");
        let resp = Keypair::new(&b, &a, 20, 10, now, false).expect("keypair");
        (init, resp)
    }

    #[test]
    fn padding_matches_the_kernel() {
        assert_eq!(padding_for(0, 1420), 0);
        assert_eq!(padding_for(1, 1420), 15);
        assert_eq!(padding_for(16, 1420), 0);
        assert_eq!(padding_for(1419, 1420), 1);
        assert_eq!(padding_for(1412, 1420), 8);
        assert_eq!(padding_for(1408, 1420), 0);
        assert_eq!(padding_for(1410, 1420), 10);
        assert_eq!(padding_for(1420, 1420), 0);
        // Over the MTU (GSO-sized): pad the last MTU-sized unit.
        assert_eq!(padding_for(1421, 1420), 15);
        assert_eq!(padding_for(17, 0), 15);
        assert_eq!(encrypted_len(0, 1420), 32);
    }

    #[test]
    fn padding_equals_the_kernel_formula() {
        // calculate_skb_padding as written in the kernel, for lengths that cannot overflow.
        let kernel = |len: usize, mtu: usize| {
            let align = |n: usize| n.div_ceil(PADDING_MULTIPLE) * PADDING_MULTIPLE;
            if mtu == 0 {
                return align(len) - len;
            }
            let last_unit = if len > mtu { len % mtu } else { len };
            mtu.min(align(last_unit)) - last_unit
        };
        for mtu in [0, 1, 15, 16, 17, 1280, 1420, 1500, 65535] {
            for len in 0..4000 {
                assert_eq!(
                    padding_for(len, mtu),
                    kernel(len, mtu),
                    "len {len} mtu {mtu}"
                );
            }
        }
    }

    #[test]
    fn absurd_lengths_are_errors_not_panics() {
        // Found by fuzz/fuzz_targets/transport_decrypt.rs: len near usize::MAX overflowed.
        let (i, _) = pair(Duration::ZERO);
        let mut buf = [0u8; 64];
        for len in [usize::MAX, usize::MAX - 15, usize::MAX - 40, 49] {
            for mtu in [0, 1420, usize::MAX] {
                let got = i.seal_in_place(&mut buf, len, mtu, Duration::ZERO);
                assert!(
                    matches!(got, Err(Error::BufferTooSmall { .. })),
                    "len {len} mtu {mtu}: {got:?}"
                );
            }
        }
        assert_eq!(padding_for(usize::MAX, 0), 1);
        assert_eq!(encrypted_len(usize::MAX, 0), usize::MAX);
        assert_eq!(
            i.sending_counter(),
            0,
            "no counter is used by a refused seal"
        );
    }

    #[test]
    fn round_trip_and_wire_format() {
        let now = Duration::from_secs(1);
        let (i, r) = pair(now);
        let msg = i.encrypt(b"hello", 1420, now).expect("encrypt");
        assert_eq!(msg.len(), 16 + 16 + 16);
        assert_eq!(&msg[..4], &[4, 0, 0, 0]);
        assert_eq!(&msg[4..8], &20u32.to_le_bytes());
        assert_eq!(&msg[8..16], &0u64.to_le_bytes());
        let plain = r.decrypt(&msg, now).expect("decrypt");
        assert_eq!(&plain[..5], b"hello");
        assert_eq!(&plain[5..], &[0u8; 11]);
        let ka = i.encrypt(&[], 1420, now).expect("keepalive");
        assert_eq!(ka.len(), 32);
        assert_eq!(&ka[8..16], &1u64.to_le_bytes());
        assert!(r.decrypt(&ka, now).expect("decrypt").is_empty());
    }

    #[test]
    fn replays_and_forgeries_rejected_without_moving_the_window() {
        let now = Duration::ZERO;
        let (i, r) = pair(now);
        let m0 = i.encrypt(b"a", 0, now).expect("encrypt");
        assert!(r.decrypt(&m0, now).is_ok());
        assert_eq!(r.decrypt(&m0, now), Err(Error::Replay));
        // A forged packet with a far-ahead counter must not advance the window.
        let mut forged = m0.clone();
        forged[8..16].copy_from_slice(&100_000u64.to_le_bytes());
        assert_eq!(r.decrypt(&forged, now), Err(Error::Decrypt));
        assert_eq!(r.greatest_received(), Some(0));
        let m1 = i.encrypt(b"b", 0, now).expect("encrypt");
        assert!(r.decrypt(&m1, now).is_ok());
        let mut wrong_index = m1.clone();
        wrong_index[4] ^= 1;
        assert_eq!(r.decrypt(&wrong_index, now), Err(Error::IndexMismatch));
    }

    #[test]
    fn expiry_and_rekey_rules() {
        let (i, r) = pair(Duration::ZERO);
        let t121 = Duration::from_secs(121);
        assert!(i.needs_rekey_on_send(t121));
        assert!(
            !r.needs_rekey_on_send(t121),
            "the responder never rekeys on time"
        );
        assert!(!i.needs_rekey_on_receive(t121));
        assert!(i.needs_rekey_on_receive(Duration::from_secs(166)));
        assert!(!r.needs_rekey_on_receive(Duration::from_secs(166)));
        let msg = i
            .encrypt(b"x", 0, Duration::from_secs(179))
            .expect("still valid");
        let late = Duration::from_secs(181);
        assert_eq!(i.encrypt(b"x", 0, late), Err(Error::KeyExpired));
        assert_eq!(r.decrypt(&msg, late), Err(Error::KeyExpired));
    }

    #[test]
    fn counter_limits() {
        let (i, r) = pair(Duration::ZERO);
        i.send_counter
            .store(REKEY_AFTER_MESSAGES + 1, Ordering::Relaxed);
        assert!(!r.needs_rekey_on_send(Duration::ZERO));
        assert!(i.needs_rekey_on_send(Duration::ZERO));
        i.send_counter
            .store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        let last = i.encrypt(b"x", 0, Duration::ZERO).expect("last allowed");
        assert_eq!(
            i.encrypt(b"x", 0, Duration::ZERO),
            Err(Error::CounterExhausted)
        );
        assert_eq!(
            i.encrypt(b"x", 0, Duration::ZERO),
            Err(Error::CounterExhausted)
        );
        assert_eq!(i.sending_counter(), REJECT_AFTER_MESSAGES);
        assert!(r.decrypt(&last, Duration::ZERO).is_ok());
    }

    #[test]
    fn batch_counters_and_sealing_with_them() {
        let now = Duration::ZERO;
        let (i, r) = pair(now);
        assert_eq!(i.next_counters(5, now), Ok(0..5));
        assert_eq!(i.next_counter(now), Ok(5));
        // Sealed out of order with their counters, they open in order and
        // carry exactly those counters.
        let mut bufs: Vec<Vec<u8>> = (0..3).map(|_| vec![0u8; 128]).collect();
        let counters = i.next_counters(3, now).expect("counters");
        for k in [2usize, 0, 1] {
            bufs[k][TRANSPORT_HEADER_LEN] = k as u8;
            let n = i
                .seal_with_counter(&mut bufs[k], 1, 0, counters.start + k as u64)
                .expect("seal");
            bufs[k].truncate(n);
        }
        for (k, b) in bufs.iter().enumerate() {
            assert_eq!(
                TransportHeader::parse(b).expect("hdr").counter,
                6 + k as u64
            );
            assert_eq!(r.decrypt(b, now).expect("open")[0], k as u8);
        }
        // Near the limit a batch gets what is left, then nothing.
        i.send_counter
            .store(REJECT_AFTER_MESSAGES - 2, Ordering::Relaxed);
        assert_eq!(
            i.next_counters(64, now),
            Ok(REJECT_AFTER_MESSAGES - 2..REJECT_AFTER_MESSAGES)
        );
        assert_eq!(i.next_counters(1, now), Err(Error::CounterExhausted));
        assert_eq!(i.sending_counter(), REJECT_AFTER_MESSAGES);
        i.invalidate_sending();
        assert_eq!(i.next_counters(1, now), Err(Error::KeyExpired));
    }

    #[test]
    fn inner_length() {
        let mut v4 = vec![0u8; 48];
        v4[0] = 0x45;
        v4[3] = 40;
        assert_eq!(inner_packet_len(&v4), Some(40));
        v4[3] = 49;
        assert_eq!(inner_packet_len(&v4), None);
        let mut v6 = vec![0u8; 64];
        v6[0] = 0x60;
        v6[5] = 8;
        assert_eq!(inner_packet_len(&v6), Some(48));
        assert_eq!(inner_packet_len(&[0x10; 40]), None);
        assert_eq!(inner_packet_len(&[]), None);
    }
}
