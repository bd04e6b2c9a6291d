//! One peer as the data plane sees it (kernel peer.h): its endpoint, keypair
//! slots, staged packets, activity and handshake state, each in its own
//! type with its own rules, and the few flags that tie them together.
//!
//! - Handshake rate (kernel `last_sent_handshake`): at most one initiation
//!   per REKEY_TIMEOUT; a response we send counts too. A new private key
//!   lets the next one go at once.
//! - "Wants a handshake" (kernel: the queued `transmit_handshake_work`): set
//!   when an initiation is queued for the handshake thread, cleared when that
//!   thread takes it, whatever it then does. It only merges requests; it can
//!   never stay set. "Wants a flush" merges the control plane's requests to
//!   send what is staged in the same way.
//! - The receive-side rekey (kernel `sent_lastminute_handshake`): asked for
//!   once until the next completed handshake.
//! - "Event pending": at most one notification of this peer waits in the
//!   event queue; the control plane re-reads everything about the peer when
//!   it takes it, so further ones would add nothing.
//! - Send order: data read from the TUN device goes out in the order its
//!   send counters were taken, whichever lane or worker sealed it
//!   (sequence.rs, tx.rs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::keys::PublicKey;
use crate::noise::Handshake;
use crate::session::REKEY_TIMEOUT;

use super::activity::Activity;
use super::endpoint::PeerEndpoint;
use super::events::{Event, EventQueue};
use super::keypairs::Keypairs;
use super::sequence::Sequencer;
use super::staged::Staged;
use super::tx::Sealed;
use super::PeerId;
use crate::sync::lock;

pub struct Peer {
    id: PeerId,
    public_key: PublicKey,
    endpoint: PeerEndpoint,
    keypairs: Keypairs,
    staged: Staged,
    activity: Activity,
    handshake: Mutex<Handshake>,
    /// CLOCK_MONOTONIC ns of the last handshake message we sent; 0 = never.
    last_sent_handshake: AtomicU64,
    initiation_queued: AtomicBool,
    flush_queued: AtomicBool,
    sent_lastminute_handshake: AtomicBool,
    event_pending: AtomicBool,
    send_order: Sequencer<Sealed, ()>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

impl Peer {
    pub fn new(id: PeerId, handshake: Handshake) -> Self {
        Self {
            id,
            public_key: handshake.remote_public_key(),
            endpoint: PeerEndpoint::default(),
            keypairs: Keypairs::default(),
            staged: Staged::default(),
            activity: Activity::default(),
            handshake: Mutex::new(handshake),
            last_sent_handshake: AtomicU64::new(0),
            initiation_queued: AtomicBool::new(false),
            flush_queued: AtomicBool::new(false),
            sent_lastminute_handshake: AtomicBool::new(false),
            event_pending: AtomicBool::new(false),
            send_order: Sequencer::new(()),
        }
    }

    pub fn id(&self) -> PeerId {
        self.id
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    pub fn endpoint(&self) -> &PeerEndpoint {
        &self.endpoint
    }

    pub fn keypairs(&self) -> &Keypairs {
        &self.keypairs
    }

    pub fn staged(&self) -> &Staged {
        &self.staged
    }

    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    pub(crate) fn send_order(&self) -> &Sequencer<Sealed, ()> {
        &self.send_order
    }

    pub fn handshake(&self) -> MutexGuard<'_, Handshake> {
        lock(&self.handshake)
    }

    /// Whether REKEY_TIMEOUT has passed since our last handshake message.
    pub fn may_send_initiation(&self, now: Duration) -> bool {
        let last = self.last_sent_handshake.load(Ordering::Acquire);
        last == 0 || now.saturating_sub(Duration::from_nanos(last)) >= REKEY_TIMEOUT
    }

    /// Records a handshake message sent (or about to be).
    pub fn handshake_sent(&self, now: Duration) {
        self.last_sent_handshake.store(ns(now), Ordering::Release);
    }

    /// The next initiation may go at once (our private key changed; a path
    /// came back after initiations that could not leave).
    pub fn reset_handshake_rate(&self) {
        self.last_sent_handshake.store(0, Ordering::Release);
    }

    /// True if no initiation request was queued: the caller queues one.
    pub fn claim_initiation_request(&self) -> bool {
        !self.initiation_queued.swap(true, Ordering::AcqRel)
    }

    /// The handshake thread took the queued request.
    pub fn initiation_request_taken(&self) {
        self.initiation_queued.store(false, Ordering::Release);
    }

    /// True if no flush of the staged packets was queued: the caller queues one.
    pub fn claim_flush_request(&self) -> bool {
        !self.flush_queued.swap(true, Ordering::AcqRel)
    }

    /// The handshake thread took the queued flush.
    pub fn flush_request_taken(&self) {
        self.flush_queued.store(false, Ordering::Release);
    }

    /// True the first time after a completed handshake: the receive path's
    /// last-minute rekey.
    pub fn claim_lastminute_handshake(&self) -> bool {
        !self.sent_lastminute_handshake.swap(true, Ordering::AcqRel)
    }

    /// A handshake completed: the last-minute rekey may be asked for again.
    pub fn handshake_completed(&self) {
        self.sent_lastminute_handshake
            .store(false, Ordering::Release);
    }

    /// Tells the control plane to re-read this peer (one pending event at most).
    pub fn notify(self: &Arc<Self>, events: &EventQueue) {
        if !self.event_pending.swap(true, Ordering::AcqRel) {
            events.push(Event::Peer(self.clone()));
        }
    }

    /// The control plane took this peer's notification.
    pub fn notification_taken(&self) {
        self.event_pending.store(false, Ordering::Release);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::keys::PrivateKey;
    use crate::noise::Identity;

    pub(crate) fn peer(id: PeerId) -> Arc<Peer> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let me = Arc::new(Identity::new(PrivateKey::generate()));
        let remote = PrivateKey::generate().public_key();
        Arc::new(Peer::new(id, Handshake::new(me, remote, None, clock)))
    }

    #[test]
    fn one_initiation_per_rekey_timeout() {
        let p = peer(1);
        let t = Duration::from_secs(100);
        assert!(p.may_send_initiation(t));
        p.handshake_sent(t);
        assert!(!p.may_send_initiation(t + Duration::from_millis(4999)));
        assert!(p.may_send_initiation(t + REKEY_TIMEOUT));
        p.reset_handshake_rate();
        assert!(p.may_send_initiation(t));
    }

    #[test]
    fn requests_merge_until_taken() {
        let p = peer(1);
        assert!(p.claim_initiation_request());
        assert!(!p.claim_initiation_request(), "merged with the queued one");
        p.initiation_request_taken();
        assert!(p.claim_initiation_request());
    }

    #[test]
    fn lastminute_rekey_once_per_handshake() {
        let p = peer(1);
        assert!(p.claim_lastminute_handshake());
        assert!(!p.claim_lastminute_handshake());
        p.handshake_completed();
        assert!(p.claim_lastminute_handshake());
    }

    #[test]
    fn one_pending_notification() {
        let events = EventQueue::new().expect("queue");
        let p = peer(7);
        p.notify(&events);
        p.notify(&events);
        assert_eq!(events.take(16).len(), 1);
        p.notification_taken();
        p.notify(&events);
        assert_eq!(events.take(16).len(), 1);
    }
}
