//! One peer as the data plane sees it.
//!
//! - Endpoint: the peer's address and the local address we last heard it on
//!   (sticky source), both updated from every authenticated packet.
//! - Three keypair slots (kernel noise.c): the initiator's new keypair becomes
//!   current at once (old current -> previous, a pending next -> previous);
//!   the responder's goes to next and is promoted only when the first packet
//!   arrives under it (key confirmation), dropping the old previous.
//! - Staged packets: at most MAX_STAGED (128) wait for a usable key, oldest
//!   dropped first.
//! - Activity: the timestamps the control plane's timers are driven by, kept
//!   so that replaying them in time order gives the kernel's timer events:
//!   last authenticated send/receive, first data send since the last
//!   authenticated receive, first data receive since the last authenticated
//!   send, last data send and receive. While a peer is active the control
//!   plane reads these about once a second; when it finds the peer idle it
//!   clears the "watch" flag, and the next authenticated packet sets it
//!   again and wakes the control plane: one wake per idle-to-active change,
//!   never one per packet.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::session::Keypair;

use super::events::{Event, EventQueue, HandshakeReason};
use super::pin;
use super::PeerId;

pub const MAX_STAGED: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Local address (and interface) to send from, learned from the peer's packets.
    pub src: Option<(IpAddr, u32)>,
}

#[derive(Default)]
pub struct Slots {
    pub current: Option<Arc<Keypair>>,
    pub previous: Option<Arc<Keypair>>,
    pub next: Option<Arc<Keypair>>,
}

impl Slots {
    fn indices(kps: &[Option<Arc<Keypair>>]) -> Vec<u32> {
        kps.iter().flatten().map(|k| k.local_index).collect()
    }

    /// Installs a keypair fresh from a handshake; returns the local indices
    /// of the keypairs it pushed out.
    pub fn install(&mut self, new: Arc<Keypair>) -> Vec<u32> {
        if new.is_initiator {
            let dropped = if let Some(next) = self.next.take() {
                let old = [self.current.take(), self.previous.replace(next)];
                Self::indices(&old)
            } else {
                let old = [self.previous.take()];
                self.previous = self.current.take();
                Self::indices(&old)
            };
            self.current = Some(new);
            dropped
        } else {
            let old = [self.next.replace(new), self.previous.take()];
            Self::indices(&old)
        }
    }

    /// Key confirmation: if `kp` is the pending next keypair, it becomes
    /// current. Returns the dropped index (old previous), or None if `kp` was
    /// not next.
    pub fn confirm(&mut self, kp: &Arc<Keypair>) -> Option<Vec<u32>> {
        if !self.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, kp)) {
            return None;
        }
        let next = self.next.take();
        let old_previous = std::mem::replace(&mut self.previous, self.current.take());
        self.current = next;
        Some(Self::indices(&[old_previous]))
    }

    pub fn clear(&mut self) -> Vec<u32> {
        let all = [self.current.take(), self.previous.take(), self.next.take()];
        Self::indices(&all)
    }
}

#[derive(Default)]
pub struct Activity {
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub last_tx_auth: AtomicU64,
    pub last_rx_auth: AtomicU64,
    pub first_tx_data_since_rx: AtomicU64,
    pub first_rx_data_since_tx: AtomicU64,
    pub last_rx_data: AtomicU64,
    pub last_tx_data: AtomicU64,
    /// Data packets whose inner source address belongs to another peer.
    pub invalid_source: AtomicU64,
    watch: AtomicBool,
}

/// A consistent-enough reading of `Activity` (times in ns, 0 = never).
#[derive(Debug, Clone, Copy, Default)]
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

    /// An authenticated packet left: returns true if the control plane must be woken.
    pub fn sent(&self, now: u64, bytes: u64, is_data: bool) -> bool {
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_tx_auth.store(now, Ordering::Relaxed);
        if self.first_rx_data_since_tx.load(Ordering::Relaxed) != 0 {
            self.first_rx_data_since_tx.store(0, Ordering::SeqCst);
        }
        if is_data {
            self.last_tx_data.store(now, Ordering::Relaxed);
            Self::mark_first(&self.first_tx_data_since_rx, now);
        }
        self.wake_if_unwatched()
    }

    /// An authenticated packet arrived: returns true if the control plane must be woken.
    pub fn received(&self, now: u64, bytes: u64, is_data: bool) -> bool {
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_rx_auth.store(now, Ordering::Relaxed);
        if self.first_tx_data_since_rx.load(Ordering::Relaxed) != 0 {
            self.first_tx_data_since_rx.store(0, Ordering::SeqCst);
        }
        if is_data {
            self.last_rx_data.store(now, Ordering::Relaxed);
            Self::mark_first(&self.first_rx_data_since_tx, now);
        }
        self.wake_if_unwatched()
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
        ActivitySnapshot {
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            last_tx_auth: self.last_tx_auth.load(Ordering::Relaxed),
            last_rx_auth: self.last_rx_auth.load(Ordering::Relaxed),
            first_tx_data_since_rx: self.first_tx_data_since_rx.load(Ordering::SeqCst),
            first_rx_data_since_tx: self.first_rx_data_since_tx.load(Ordering::SeqCst),
            last_rx_data: self.last_rx_data.load(Ordering::Relaxed),
            last_tx_data: self.last_tx_data.load(Ordering::Relaxed),
            invalid_source: self.invalid_source.load(Ordering::Relaxed),
        }
    }
}

pub struct Peer {
    pub id: PeerId,
    pub endpoint: RwLock<Option<Endpoint>>,
    pub slots: RwLock<Slots>,
    pub staged: Mutex<VecDeque<Vec<u8>>>,
    pub activity: Activity,
    handshake_wanted: AtomicBool,
    /// No path to the endpoint: packets are staged, not sent (see hold.rs).
    pub held: AtomicBool,
    /// The sticky source was set by the control plane after a path change
    /// and is kept until the peer answers at it (see pin.rs).
    pub source_pinned: AtomicBool,
}

impl Peer {
    pub fn new(id: PeerId) -> Self {
        Self {
            id,
            endpoint: RwLock::new(None),
            slots: RwLock::new(Slots::default()),
            staged: Mutex::new(VecDeque::new()),
            activity: Activity::default(),
            handshake_wanted: AtomicBool::new(false),
            held: AtomicBool::new(false),
            source_pinned: AtomicBool::new(false),
        }
    }

    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint.read().ok().and_then(|e| *e)
    }

    /// The keypair to send with, if one may send now.
    pub fn sending_keypair(&self, now: std::time::Duration) -> Option<Arc<Keypair>> {
        let slots = self.slots.read().ok()?;
        slots.current.as_ref().filter(|k| k.can_send(now)).cloned()
    }

    /// Queues packets for when a key exists, dropping the oldest past the bound.
    pub fn stage<'a>(&self, packets: impl IntoIterator<Item = &'a [u8]>) {
        if let Ok(mut q) = self.staged.lock() {
            for p in packets {
                if q.len() >= MAX_STAGED {
                    q.pop_front();
                }
                q.push_back(p.to_vec());
            }
        }
    }

    pub fn take_staged(&self) -> Vec<Vec<u8>> {
        self.staged
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }

    pub fn staged_is_empty(&self) -> bool {
        self.staged.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    /// Asks the control plane for a handshake, once until it answers.
    pub fn want_handshake(&self, events: &EventQueue, reason: HandshakeReason) {
        if !self.handshake_wanted.swap(true, Ordering::AcqRel) {
            events.push(Event::NeedHandshake {
                peer: self.id,
                reason,
            });
        }
    }

    /// The control plane has acted on (or settled) the last request.
    pub fn handshake_request_done(&self) {
        self.handshake_wanted.store(false, Ordering::Release);
    }

    /// Updates the endpoint from an authenticated packet (roaming); returns
    /// the new address if it changed.
    pub fn roam(&self, src: SocketAddr, local: Option<(IpAddr, u32)>) -> Option<SocketAddr> {
        let current = self.endpoint();
        let new = Endpoint {
            addr: src,
            src: pin::sticky_source(self, current, local),
        };
        if current == Some(new) {
            return None;
        }
        let mut e = self.endpoint.write().ok()?;
        let changed = e.map(|old| old.addr) != Some(src);
        *e = Some(new);
        changed.then_some(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use zeroize::Zeroizing;

    fn kp(index: u32, initiator: bool) -> Arc<Keypair> {
        let k = Zeroizing::new([index as u8; 32]);
        Arc::new(
            Keypair::new(&k, &k, index, 1000 + index, Duration::ZERO, initiator).expect("keypair"),
        )
    }

    #[test]
    fn initiator_keypair_becomes_current_at_once() {
        let mut s = Slots::default();
        assert!(s.install(kp(1, true)).is_empty());
        assert_eq!(s.current.as_ref().map(|k| k.local_index), Some(1));
        assert!(s.install(kp(2, true)).is_empty());
        assert_eq!(s.previous.as_ref().map(|k| k.local_index), Some(1));
        assert_eq!(s.install(kp(3, true)), vec![1], "old previous is dropped");
        assert_eq!(
            (
                s.current.as_ref().map(|k| k.local_index),
                s.previous.as_ref().map(|k| k.local_index)
            ),
            (Some(3), Some(2))
        );
    }

    #[test]
    fn responder_keypair_waits_for_confirmation() {
        let mut s = Slots::default();
        s.install(kp(1, true));
        s.install(kp(2, true));
        let n = kp(3, false);
        assert_eq!(
            s.install(n.clone()),
            vec![1],
            "responder install drops previous"
        );
        assert_eq!(
            s.current.as_ref().map(|k| k.local_index),
            Some(2),
            "still sends with the old key"
        );
        assert!(s.confirm(&kp(9, false)).is_none());
        assert_eq!(s.confirm(&n), Some(vec![]));
        assert_eq!(s.current.as_ref().map(|k| k.local_index), Some(3));
        assert_eq!(s.previous.as_ref().map(|k| k.local_index), Some(2));
        assert!(s.next.is_none());
        assert!(s.confirm(&n).is_none(), "confirmed only once");
    }

    #[test]
    fn initiator_install_demotes_pending_next() {
        let mut s = Slots::default();
        s.install(kp(1, true));
        s.install(kp(2, false));
        let dropped = s.install(kp(3, true));
        assert_eq!(
            dropped,
            vec![1],
            "old current is dropped, next becomes previous"
        );
        assert_eq!(s.previous.as_ref().map(|k| k.local_index), Some(2));
        assert_eq!(s.current.as_ref().map(|k| k.local_index), Some(3));
        let mut all = s.clear();
        all.sort();
        assert_eq!(all, vec![2, 3]);
    }

    #[test]
    fn activity_wakes_only_from_idle() {
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
    fn staging_is_bounded() {
        let p = Peer::new(1);
        for i in 0..200u32 {
            p.stage([&i.to_le_bytes()[..]]);
        }
        let q = p.take_staged();
        assert_eq!(q.len(), MAX_STAGED);
        assert_eq!(q[0], 72u32.to_le_bytes().to_vec(), "oldest dropped first");
        assert!(p.staged_is_empty());
    }
}
