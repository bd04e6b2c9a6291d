//! What the control plane's timers are driven by: timestamps and counters of
//! one peer, written by the data plane, read by the control plane.
//!
//! - Packets: last authenticated send and receive, first data send since the
//!   last authenticated receive, first data receive since the last
//!   authenticated send, last data send and receive, bytes both ways.
//!   Replaying these in time order gives the kernel's timer hooks
//!   (any_authenticated_packet_sent/received, data_sent/received).
//! - Handshakes: when the last initiation was sent, the last session
//!   derived, the last handshake completed (also as wall-clock time, what
//!   `wg show` reports), and how many initiations were asked for other than
//!   as retries (each one resets the retry count, kernel send.c).
//! - Times are CLOCK_MONOTONIC nanoseconds, 0 meaning never.
//! - Waking the control plane: while a peer is busy the control plane reads
//!   this about once a second; when it finds the peer idle it stops
//!   watching, and the next authenticated packet wakes it again: one wake per
//!   idle-to-active change, never one per packet. Handshake events always
//!   wake it (they are rare and change timers at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Activity {
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    last_tx_auth: AtomicU64,
    last_rx_auth: AtomicU64,
    first_tx_data_since_rx: AtomicU64,
    first_rx_data_since_tx: AtomicU64,
    last_rx_data: AtomicU64,
    last_tx_data: AtomicU64,
    invalid_source: AtomicU64,
    initiation_sent: AtomicU64,
    session_derived: AtomicU64,
    handshake_complete: AtomicU64,
    handshake_wall_ns: AtomicU64,
    handshake_requests: AtomicU64,
    watch: AtomicBool,
}

/// A consistent-enough reading of `Activity` (times in ns, 0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivitySnapshot {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub last_tx_auth: u64,
    pub last_rx_auth: u64,
    pub first_tx_data_since_rx: u64,
    pub first_rx_data_since_tx: u64,
    pub last_rx_data: u64,
    pub last_tx_data: u64,
    pub invalid_source: u64,
    pub initiation_sent: u64,
    pub session_derived: u64,
    pub handshake_complete: u64,
    /// Unix time of the last completed handshake, in ns (0 = never).
    pub handshake_wall_ns: u64,
    pub handshake_requests: u64,
}

impl Activity {
    /// True if the control plane was not watching: it must be woken.
    fn wake_if_unwatched(&self) -> bool {
        !self.watch.load(Ordering::Relaxed) && !self.watch.swap(true, Ordering::AcqRel)
    }

    fn mark_first(slot: &AtomicU64, now: u64) {
        if slot.load(Ordering::Relaxed) == 0 {
            let _ = slot.compare_exchange(0, now, Ordering::SeqCst, Ordering::Relaxed);
        }
    }

    /// An authenticated packet of `bytes` left (`data`: it carried a
    /// payload): returns true if the control plane must be woken.
    pub fn sent(&self, now: u64, bytes: u64, data: bool) -> bool {
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_tx_auth.store(now, Ordering::Relaxed);
        if self.first_rx_data_since_tx.load(Ordering::Relaxed) != 0 {
            self.first_rx_data_since_tx.store(0, Ordering::SeqCst);
        }
        if data {
            self.last_tx_data.store(now, Ordering::Relaxed);
            Self::mark_first(&self.first_tx_data_since_rx, now);
        }
        self.wake_if_unwatched()
    }

    /// An authenticated packet arrived: returns true if the control plane must be woken.
    pub fn received(&self, now: u64, bytes: u64, data: bool) -> bool {
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_rx_auth.store(now, Ordering::Relaxed);
        if self.first_tx_data_since_rx.load(Ordering::Relaxed) != 0 {
            self.first_tx_data_since_rx.store(0, Ordering::SeqCst);
        }
        if data {
            self.last_rx_data.store(now, Ordering::Relaxed);
            Self::mark_first(&self.first_rx_data_since_tx, now);
        }
        self.wake_if_unwatched()
    }

    /// A data packet whose inner source belongs to another peer was dropped.
    pub fn invalid_source(&self) {
        self.invalid_source.fetch_add(1, Ordering::Relaxed);
    }

    pub fn initiation_sent(&self, now: u64) {
        self.initiation_sent.store(now, Ordering::Relaxed);
    }

    pub fn session_derived(&self, now: u64) {
        self.session_derived.store(now, Ordering::Relaxed);
    }

    pub fn handshake_complete(&self, now: u64, wall_ns: u64) {
        self.handshake_complete.store(now, Ordering::Relaxed);
        self.handshake_wall_ns.store(wall_ns, Ordering::Relaxed);
    }

    /// An initiation was asked for other than as a retry.
    pub fn handshake_requested(&self) {
        self.handshake_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The control plane found the peer idle and stops reading: the next
    /// authenticated packet wakes it. It reads once more after this, so a
    /// packet that raced with it is not missed.
    pub fn unwatch(&self) {
        self.watch.store(false, Ordering::SeqCst);
    }

    /// The control plane reads the activity again on its own.
    pub fn watch(&self) {
        self.watch.store(true, Ordering::SeqCst);
    }

    pub fn snapshot(&self) -> ActivitySnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        ActivitySnapshot {
            tx_bytes: get(&self.tx_bytes),
            rx_bytes: get(&self.rx_bytes),
            last_tx_auth: get(&self.last_tx_auth),
            last_rx_auth: get(&self.last_rx_auth),
            first_tx_data_since_rx: get(&self.first_tx_data_since_rx),
            first_rx_data_since_tx: get(&self.first_rx_data_since_tx),
            last_rx_data: get(&self.last_rx_data),
            last_tx_data: get(&self.last_tx_data),
            invalid_source: get(&self.invalid_source),
            initiation_sent: get(&self.initiation_sent),
            session_derived: get(&self.session_derived),
            handshake_complete: get(&self.handshake_complete),
            handshake_wall_ns: get(&self.handshake_wall_ns),
            handshake_requests: get(&self.handshake_requests),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_only_from_idle() {
        let a = Activity::default();
        assert!(
            a.sent(10, 100, true),
            "the first packet wakes the control plane"
        );
        assert!(!a.sent(11, 100, true), "it is watching now");
        assert!(!a.received(12, 32, false));
        let s = a.snapshot();
        assert_eq!(
            s.first_tx_data_since_rx, 0,
            "any authenticated receive clears it"
        );
        assert_eq!(
            s.first_rx_data_since_tx, 0,
            "a keepalive never arms the passive keepalive"
        );
        a.unwatch();
        assert!(
            a.received(14, 100, true),
            "after going idle the next packet wakes"
        );
        assert!(!a.sent(15, 100, true));
        let s = a.snapshot();
        assert_eq!(
            s.first_rx_data_since_tx, 0,
            "any authenticated send clears it"
        );
        assert_eq!(s.first_tx_data_since_rx, 15);
        assert_eq!(
            (s.rx_bytes, s.tx_bytes, s.last_rx_data, s.last_tx_data),
            (132, 300, 14, 15)
        );
        a.unwatch();
        a.watch();
        assert!(!a.sent(16, 1, false), "watching again on its own");
    }

    #[test]
    fn handshake_times_and_requests() {
        let a = Activity::default();
        a.initiation_sent(5);
        a.session_derived(6);
        a.handshake_complete(6, 1_700_000_000_000_000_000);
        a.handshake_requested();
        a.handshake_requested();
        let s = a.snapshot();
        assert_eq!(
            (s.initiation_sent, s.session_derived, s.handshake_complete),
            (5, 6, 6)
        );
        assert_eq!(s.handshake_wall_ns, 1_700_000_000_000_000_000);
        assert_eq!(s.handshake_requests, 2);
    }
}
