//! Handshakes in the data plane: one thread, fed by the receive threads and
//! by requests for initiations (kernel receive.c `wg_receive_handshake_packet`,
//! send.c `wg_packet_send_handshake_*`, noise.c's use of the index table).
//!
//! - The receive threads check the mac1 of every initiation and response
//!   (against our public key) before queueing it: junk from anyone never
//!   reaches the queue. No private key: nothing is queued.
//! - At most MAX_QUEUED_HANDSHAKES messages wait; more are dropped. The
//!   device is under load while 1/8 of that wait, and for 1 s after.
//! - Under load, an initiation or response without a valid mac2 gets a
//!   cookie reply; one with a valid mac2 must pass the per-source rate
//!   limiter (ratelimiter.rs).
//! - An initiation is opened, matched to a peer by its static key, and
//!   accepted only if its timestamp is newer than any accepted from that
//!   peer and it comes 20 ms or more after the last one consumed. A refused
//!   initiation changes nothing: no index, no state, our own initiation in
//!   flight stays valid. An accepted one is answered at once; its keypair
//!   waits in "next" until the initiator uses it.
//! - A response is matched by its receiver index to our initiation in
//!   flight; its keypair becomes current at once, and the staged packets
//!   follow, or else a keepalive to confirm the key.
//! - A cookie reply is matched by its receiver index to our handshake or
//!   keypair; its cookie goes into the mac2 of our next messages.
//! - The endpoint follows every authenticated handshake message.
//! - Initiations are sent on request (from the data plane: no key, rekey;
//!   from the timers: retries, new handshakes): at most one per
//!   REKEY_TIMEOUT per peer, none without a private key. With no endpoint or
//!   no route it goes nowhere but still counts, and the retransmit timer
//!   retries it (kernel send.c); releasing a peer held for lack of a path
//!   lets the next one go at once (hold.rs).
//! - The control plane's sends (keepalives, staged packets after a
//!   configuration change) are made here too: it never waits on a socket.
//! - Each initiation sent, session derived and handshake completed is
//!   recorded in the peer's activity with its time, and the control plane
//!   is told, for the timers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::clock::{monotonic_now, Clock, SystemClock};
use crate::cookie::CookieChecker;
use crate::keys::PrivateKey;
use crate::messages::{self, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE};
use crate::noise::Identity;
use crate::ratelimiter::Ratelimiter;
use crate::session::Keypair;

use super::endpoint::Source;
use super::peer::Peer;
use super::stats::DeviceCounters;
use super::sys::{self, EventFd, Readiness};
use super::thread::Faults;
use super::{now_ns, tx, Shared};
use crate::sync::{lock, read, write};

pub const MAX_QUEUED_HANDSHAKES: usize = 4096;
pub const UNDER_LOAD_QUEUE_LENGTH: usize = MAX_QUEUED_HANDSHAKES / 8;
pub const UNDER_LOAD_AFTER_TIME: Duration = Duration::from_secs(1);
/// Messages handled between two looks at the initiation requests.
const BATCH: usize = 64;

/// Our static key with what is derived from it once: mac1 checks, cookies.
pub(crate) struct DeviceIdentity {
    pub(crate) identity: Arc<Identity>,
    checker: Mutex<CookieChecker>,
}

impl DeviceIdentity {
    pub(crate) fn new(key: PrivateKey) -> Self {
        let identity = Arc::new(Identity::new(key));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let checker = Mutex::new(CookieChecker::new(&identity.public_key(), clock));
        Self { identity, checker }
    }
}

/// A handshake message as it arrived.
struct Inbound {
    message: Vec<u8>,
    source: SocketAddr,
    local: Option<Source>,
}

/// The handshake thread's inputs, and our identity.
pub(crate) struct Handshakes {
    identity: RwLock<Option<Arc<DeviceIdentity>>>,
    inbound: Mutex<VecDeque<Inbound>>,
    initiations: Mutex<VecDeque<Arc<Peer>>>,
    flushes: Mutex<VecDeque<Arc<Peer>>>,
    wake: EventFd,
    under_load: AtomicBool,
}

impl Handshakes {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            identity: RwLock::new(None),
            inbound: Mutex::new(VecDeque::new()),
            initiations: Mutex::new(VecDeque::new()),
            flushes: Mutex::new(VecDeque::new()),
            wake: EventFd::new()?,
            under_load: AtomicBool::new(false),
        })
    }

    pub(crate) fn identity(&self) -> Option<Arc<DeviceIdentity>> {
        read(&self.identity).clone()
    }

    pub(crate) fn set_identity(&self, identity: Option<Arc<DeviceIdentity>>) {
        *write(&self.identity) = identity;
    }

    pub(crate) fn queue_len(&self) -> usize {
        lock(&self.inbound).len()
    }

    pub(crate) fn under_load(&self) -> bool {
        self.under_load.load(Ordering::Relaxed)
    }

    /// A receive thread's handshake message: checked and queued, or dropped.
    pub(crate) fn receive(
        &self,
        message: &[u8],
        source: SocketAddr,
        local: Option<Source>,
        counters: &DeviceCounters,
    ) {
        let Some(id) = self.identity() else {
            return;
        };
        let needs_mac1 = matches!(
            messages::message_type(message),
            Ok(TYPE_INITIATION | TYPE_RESPONSE)
        );
        if needs_mac1 && id.identity.verify_mac1(message).is_err() {
            DeviceCounters::one(&counters.handshake_bad_mac1);
            return;
        }
        let mut q = lock(&self.inbound);
        if q.len() >= MAX_QUEUED_HANDSHAKES {
            DeviceCounters::one(&counters.handshake_queue_full);
            return;
        }
        q.push_back(Inbound {
            message: message.to_vec(),
            source,
            local,
        });
        drop(q);
        self.wake.signal();
    }

    /// Queues an initiation for `peer` (the caller checked rate and merging).
    fn queue_initiation(&self, peer: Arc<Peer>) {
        lock(&self.initiations).push_back(peer);
        self.wake.signal();
    }

    fn queue_flush(&self, peer: Arc<Peer>) {
        lock(&self.flushes).push_back(peer);
        self.wake.signal();
    }
}

/// Asks for an initiation to `peer` (kernel
/// `wg_packet_send_queued_handshake_initiation`): anything but a retry
/// restarts the retry count; a request within REKEY_TIMEOUT of the last
/// handshake message sent, or while one is queued, changes nothing else.
pub(crate) fn request_initiation(shared: &Shared, peer: &Arc<Peer>, retry: bool) {
    if !retry {
        peer.activity().handshake_requested();
    }
    if peer.may_send_initiation(monotonic_now()) && peer.claim_initiation_request() {
        shared.handshakes.queue_initiation(peer.clone());
    }
}

/// The handshake thread.
pub(crate) fn handshake_loop(shared: &Shared, stop: &EventFd, faults: &mut Faults) {
    let hs = &shared.handshakes;
    let mut load = Load::default();
    loop {
        match sys::wait_readable(hs.wake.raw(), stop) {
            Ok(Readiness::Readable) => {}
            Ok(Readiness::Stop | Readiness::Error) | Err(_) => return,
        }
        faults.woke();
        // Cleared before draining: a signal from now on wakes us again.
        hs.wake.clear();
        while work(shared, &mut load) {}
    }
}

/// Under-load state and the rate limiter, owned by the handshake thread.
#[derive(Default)]
struct Load {
    limiter: Ratelimiter,
    last_under_load: Option<Duration>,
}

impl Load {
    fn under_load(&mut self, backlog: usize, now: Duration) -> bool {
        if backlog >= UNDER_LOAD_QUEUE_LENGTH {
            self.last_under_load = Some(now);
            return true;
        }
        self.last_under_load
            .is_some_and(|t| now.saturating_sub(t) < UNDER_LOAD_AFTER_TIME)
    }
}

/// One round: every queued flush and initiation request, then up to BATCH
/// messages. Returns whether there was anything to do.
fn work(shared: &Shared, load: &mut Load) -> bool {
    let hs = &shared.handshakes;
    let flushes: Vec<Arc<Peer>> = lock(&hs.flushes).drain(..).collect();
    for peer in &flushes {
        peer.flush_request_taken();
        tx::flush_staged(shared, peer);
    }
    let requests: Vec<Arc<Peer>> = lock(&hs.initiations).drain(..).collect();
    for peer in &requests {
        peer.initiation_request_taken();
        send_initiation(shared, peer);
    }
    let (backlog, batch) = {
        let mut q = lock(&hs.inbound);
        let backlog = q.len();
        let n = backlog.min(BATCH);
        (backlog, q.drain(..n).collect::<Vec<_>>())
    };
    if batch.is_empty() {
        return !requests.is_empty() || !flushes.is_empty();
    }
    let under_load = load.under_load(backlog, monotonic_now());
    hs.under_load.store(under_load, Ordering::Relaxed);
    let Some(id) = hs.identity() else {
        return true;
    };
    for m in &batch {
        if !under_load || admitted(shared, &id, load, m) {
            consume(shared, &id, m);
        }
    }
    true
}

/// Under load: a cookie reply for a message without a valid mac2, else the
/// rate limiter decides. Cookie replies themselves pass.
fn admitted(shared: &Shared, id: &DeviceIdentity, load: &mut Load, m: &Inbound) -> bool {
    if messages::message_type(&m.message) == Ok(TYPE_COOKIE_REPLY) {
        return true;
    }
    let counters = &shared.counters;
    let mut checker = lock(&id.checker);
    if !checker.verify_mac2(&m.message, &m.source).unwrap_or(false) {
        if let Ok(reply) = checker.create_reply(&m.message, &m.source) {
            if tx::send_datagrams(shared, m.source, m.local, &[&reply]).is_ok() {
                DeviceCounters::one(&counters.cookie_replies_sent);
            }
        }
        return false;
    }
    drop(checker);
    if !load.limiter.allow(m.source.ip(), monotonic_now()) {
        DeviceCounters::one(&counters.handshake_rate_limited);
        return false;
    }
    true
}

fn consume(shared: &Shared, id: &DeviceIdentity, m: &Inbound) {
    let counters = &shared.counters;
    let accepted = match messages::message_type(&m.message) {
        Ok(TYPE_INITIATION) => consume_initiation(shared, id, m),
        Ok(TYPE_RESPONSE) => consume_response(shared, m),
        Ok(TYPE_COOKIE_REPLY) => {
            if consume_cookie_reply(shared, m) {
                DeviceCounters::one(&counters.cookie_replies_received);
            }
            return;
        }
        _ => return,
    };
    DeviceCounters::one(if accepted {
        &counters.handshake_accepted
    } else {
        &counters.handshake_rejected
    });
}

/// Kernel `wg_noise_handshake_consume_initiation` + `wg_packet_send_handshake_response`.
fn consume_initiation(shared: &Shared, id: &DeviceIdentity, m: &Inbound) -> bool {
    let Ok(initiation) = id.identity.open_initiation(&m.message) else {
        return false;
    };
    let Some(peer) = shared.peer_by_key(&initiation.peer) else {
        return false;
    };
    let (response, keypair) = {
        let mut hs = peer.handshake();
        let in_flight = hs.pending_index();
        // Every check first: a refused initiation leaves everything as it was.
        if hs.consume_initiation(&initiation).is_err() {
            return false;
        }
        let index = {
            let mut indices = write(&shared.indices);
            indices.free(in_flight);
            indices.allocate(&peer)
        };
        match hs.create_response_at(index) {
            Ok(made) => made,
            Err(_) => {
                write(&shared.indices).free([index]);
                return false;
            }
        }
    };
    let now = monotonic_now();
    authenticated_from(&peer, m);
    install(shared, &peer, Arc::new(keypair));
    peer.activity().session_derived(now_ns());
    peer.handshake_sent(now);
    if let Some(ep) = peer.endpoint().get() {
        if tx::send_to_endpoint(shared, &peer, ep, &[&response]).is_ok() {
            peer.activity().sent(now_ns(), response.len() as u64, false);
        }
    }
    peer.notify(&shared.events);
    true
}

/// Kernel `wg_noise_handshake_consume_response` and what receive.c does next.
fn consume_response(shared: &Shared, m: &Inbound) -> bool {
    let Ok(index) = messages::receiver_index(&m.message) else {
        return false;
    };
    let Some(peer) = read(&shared.indices).handshake_peer(index) else {
        return false;
    };
    let keypair = {
        let mut hs = peer.handshake();
        if hs.pending_index() != Some(index) {
            return false;
        }
        match hs.consume_response(&m.message) {
            Ok(kp) => Arc::new(kp),
            Err(_) => return false,
        }
    };
    authenticated_from(&peer, m);
    install(shared, &peer, keypair);
    let now = now_ns();
    peer.activity().session_derived(now);
    handshake_complete(shared, &peer, now);
    // The staged packets, or else a keepalive, confirm the key to the responder.
    tx::send_keepalive(shared, &peer);
    true
}

fn consume_cookie_reply(shared: &Shared, m: &Inbound) -> bool {
    let Ok(index) = messages::receiver_index(&m.message) else {
        return false;
    };
    let Some(peer) = read(&shared.indices).peer(index) else {
        return false;
    };
    let accepted = peer.handshake().consume_cookie_reply(&m.message).is_ok();
    accepted
}

/// Sends what `peer` has staged (a keepalive, packets after a configuration
/// change), on this thread, so the control plane never waits on a socket.
pub(crate) fn request_flush(shared: &Shared, peer: &Arc<Peer>) {
    if peer.claim_flush_request() {
        shared.handshakes.queue_flush(peer.clone());
    }
}

/// An authenticated handshake message from the peer: roam, count it (the
/// caller notifies the control plane).
fn authenticated_from(peer: &Peer, m: &Inbound) {
    peer.endpoint().roam(m.source, m.local);
    peer.activity()
        .received(now_ns(), m.message.len() as u64, false);
}

/// A new keypair into its peer's slots and the index table.
fn install(shared: &Shared, peer: &Arc<Peer>, keypair: Arc<Keypair>) {
    write(&shared.indices).name_keypair(peer, &keypair);
    let dropped = peer.keypairs().install(keypair);
    write(&shared.indices).free(dropped);
}

/// Kernel `wg_timers_handshake_complete`: for the initiator when the response
/// is consumed, for the responder at key confirmation (rx.rs).
pub(crate) fn handshake_complete(shared: &Shared, peer: &Arc<Peer>, now: u64) {
    let wall = SystemClock::new().unix_time();
    let wall_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
    peer.activity().handshake_complete(now, wall_ns);
    peer.handshake_completed();
    peer.notify(&shared.events);
}

/// Kernel `wg_packet_send_handshake_initiation`.
fn send_initiation(shared: &Shared, peer: &Arc<Peer>) {
    let now = monotonic_now();
    if !peer.may_send_initiation(now) {
        return;
    }
    peer.handshake_sent(now);
    if shared.handshakes.identity().is_none() {
        return;
    }
    let message = {
        let mut hs = peer.handshake();
        let in_flight = hs.pending_index();
        let index = {
            let mut indices = write(&shared.indices);
            indices.free(in_flight);
            indices.allocate(peer)
        };
        match hs.create_initiation_at(index) {
            Ok(message) => message,
            Err(_) => {
                write(&shared.indices).free([index]);
                return;
            }
        }
    };
    DeviceCounters::one(&shared.counters.handshake_initiations_sent);
    // Sent or not (no endpoint, no route), it counts for the timers: the
    // retransmit timer retries it (kernel send.c); only bytes that left count.
    let sent = peer
        .endpoint()
        .get()
        .is_some_and(|ep| tx::send_to_endpoint(shared, peer, ep, &[&message]).is_ok());
    let at = now_ns();
    peer.activity().initiation_sent(at);
    let bytes = if sent { message.len() as u64 } else { 0 };
    peer.activity().sent(at, bytes, false);
    peer.notify(&shared.events);
}
