//! The receive side: datagrams from the UDP sockets.
//!
//! - Types 1-3 go to the handshake thread (handshake.rs), with their source
//!   and the local address they arrived on; initiations and responses only
//!   if their mac1 is right.
//! - Type 4: keypair by receiver index; open (the replay window moves only
//!   after the tag verifies); roam the endpoint to the packet's source; key
//!   confirmation of a pending next keypair (then the handshake is complete
//!   and the staged packets go); receive-side rekey request (initiator,
//!   keypair past 165 s, once per handshake); timer activity; a keepalive
//!   stops here; otherwise trim the padding to the IP length, require that
//!   the inner source address routes back to this same peer (longest-prefix
//!   match; else count and drop), and write it to TUN.
//! - Bookkeeping is per batch, not per packet (`Batch`): one clock reading,
//!   one lookup of each receiver index under one lock, key confirmation and
//!   the rekey check once per keypair, roaming only when the source differs
//!   from the last packet's, activity added up per run of one keypair, the
//!   allowed-IPs table read-locked once, the last route remembered.
//! - A lane (lanes.rs) receives a batch into buffers it owns (recycle.rs),
//!   passes the handshake messages on, looks the keypairs up and hands the
//!   batch to the crypto pipeline (pipeline.rs) with a ticket of the lane's
//!   receive order (sequence.rs). Opened batches are accepted and delivered
//!   in ticket order, one thread at a time, through a coalescer that borrows
//!   the batch's buffers (no copies) into the lane's TUN queue: a peer's
//!   packets (one source address, so one socket of the port's group, so one
//!   lane) reach the inside in the order they arrived. With no workers the
//!   lane does it all itself, at once.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, RwLockReadGuard};
use std::time::Duration;

use crate::allowedips::AllowedIps;
use crate::clock::monotonic_now;
use crate::error::Error;
use crate::messages::{self, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT};
use crate::session::{inner_packet_len, Keypair};
use crate::sync::{read, write};

use super::endpoint::Source;
use super::handshake::{handshake_complete, request_initiation};
use super::offload;
use super::peer::Peer;
use super::recycle::{Recycled, Recycler};
use super::sequence::Sequencer;
use super::stats::DeviceCounters;
use super::sys::{self, RecvBatch};
use super::{inner_source, tx, DataJob, PeerId, Shared, UdpSocket, MAX_PACKET};

const BATCH: usize = 64;
/// Batches received per turn at most, so the lane's other work is never starved.
const MAX_RECVS: usize = 2;

/// A lane's receive order and where it delivers: the lane's TUN queue (or
/// the stack).
pub(crate) type Delivery = Sequencer<OpenJob, Deliverer>;

pub(crate) struct Deliverer {
    tun: RawFd,
}

impl Deliverer {
    /// Delivers into the TUN queue `tun` (-1 with a userspace stack).
    pub(crate) fn new(tun: RawFd) -> Self {
        Self { tun }
    }
}

/// One of a lane's UDP sockets.
pub(crate) struct SocketReader {
    sock: Arc<UdpSocket>,
    batches: Recycler<RecvBatch>,
    delivery: Arc<Delivery>,
}

fn new_recv_batch() -> RecvBatch {
    RecvBatch::new(BATCH, MAX_PACKET)
}

impl SocketReader {
    /// At most `batches` batches in flight at once.
    pub(crate) fn new(sock: Arc<UdpSocket>, delivery: Arc<Delivery>, batches: usize) -> Self {
        Self {
            sock,
            batches: Recycler::new(batches, new_recv_batch),
            delivery,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }

    /// Receives what waits (at most MAX_RECVS batches) and hands it on;
    /// false when nothing waited. An error means the socket is dead.
    pub(crate) fn service(&mut self, shared: &Arc<Shared>) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..MAX_RECVS {
            let mut batch = self.batches.get();
            let n = match batch.recv(self.fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors (ECONNREFUSED etc.) also surface here and are not fatal.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK)) => {
                    return Err(e)
                }
                Err(_) => break,
            };
            any |= n > 0;
            self.hand_over(shared, batch, n);
            if n < BATCH {
                break;
            }
        }
        Ok(any)
    }

    /// Sorts the batch and hands its transport messages to the pipeline.
    fn hand_over(&self, shared: &Arc<Shared>, mut batch: Recycled<RecvBatch>, n: usize) {
        let now = monotonic_now();
        let mut transport = sort_batch(shared, &mut batch, n, self.sock.gro);
        if transport.is_empty() {
            return;
        }
        let keys = Keys::look_up(shared, &batch, &mut transport);
        shared.pipeline.submit(DataJob::Open(OpenJob {
            shared: shared.clone(),
            ticket: self.delivery.ticket(),
            delivery: self.delivery.clone(),
            batch,
            transport,
            keys,
            now,
        }));
    }
}

/// A received batch to open, then accept and deliver in the lane's order.
pub(crate) struct OpenJob {
    shared: Arc<Shared>,
    delivery: Arc<Delivery>,
    ticket: u64,
    batch: Recycled<RecvBatch>,
    transport: Vec<Transport>,
    keys: Keys,
    now: Duration,
}

impl OpenJob {
    pub(crate) fn run(mut self) {
        for t in &mut self.transport {
            let msg = &mut self.batch.bufs[t.buf][t.at.clone()];
            t.opened = open(&self.shared, &self.keys, t.key, msg, self.now);
        }
        let delivery = self.delivery.clone();
        delivery.complete(self.ticket, Some(self), |d, job| job.deliver(d));
    }

    /// What follows opening, in arrival order; then the coalescer is flushed:
    /// nothing waits in it across batches (latency first), and it borrows
    /// the batch's buffers.
    fn deliver(self, d: &mut Deliverer) {
        let shared = &*self.shared;
        let tun = d.tun;
        let mut coalescer = offload::Coalescer::new(shared.udp_offload);
        let mut accepting = Accepting::new(shared, &self.keys, self.now);
        for t in &self.transport {
            let msg = &self.batch.bufs[t.buf][t.at.clone()];
            if let Some(range) = accepting.accept(t, msg) {
                deliver(shared, &msg[range], tun, &mut coalescer);
            }
        }
        accepting.finish();
        coalescer.flush(&mut |iov: &[IoSlice<'_>]| tun_write(shared, tun, iov));
        if let Some(stack) = shared.inside.stack() {
            stack.batch_done();
        }
    }
}

/// A transport message of the batch (`bufs[buf][at]`) and what opening it gave.
struct Transport {
    buf: usize,
    at: Range<usize>,
    src: SocketAddr,
    local: Option<Source>,
    /// Its keypair in the batch's `Keys`, if the receiver index named one.
    key: Option<usize>,
    /// The plaintext's range within the message, once it authenticated.
    opened: Option<Range<usize>>,
}

/// Splits the batch into datagrams: handshake messages go to the handshake
/// thread at once, transport messages are returned in arrival order.
fn sort_batch(shared: &Shared, batch: &mut RecvBatch, n: usize, gro: bool) -> Vec<Transport> {
    let mut transport = Vec::with_capacity(n);
    for (i, (buf, meta)) in batch.bufs.iter_mut().zip(&batch.meta).take(n).enumerate() {
        let Some(src) = meta.src else { continue };
        let len = meta.len.min(buf.len());
        // With UDP GRO one buffer can hold a train of datagrams.
        let step = if gro && meta.segment > 0 {
            meta.segment
        } else {
            len.max(1)
        };
        for (k, msg) in buf[..len].chunks_mut(step).enumerate() {
            match messages::message_type(msg) {
                Ok(TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY) => {
                    shared
                        .handshakes
                        .receive(msg, src, meta.local, &shared.counters);
                }
                Ok(TYPE_TRANSPORT) => transport.push(Transport {
                    buf: i,
                    at: k * step..k * step + msg.len(),
                    src,
                    local: meta.local,
                    key: None,
                    opened: None,
                }),
                _ => DeviceCounters::one(&shared.counters.rx_malformed),
            }
        }
    }
    transport
}

/// The keypairs the batch's receiver indices name, each looked up once.
struct Keys {
    found: Vec<(u32, Arc<Peer>, Arc<Keypair>)>,
}

impl Keys {
    fn look_up(shared: &Shared, batch: &RecvBatch, transport: &mut [Transport]) -> Self {
        let mut found: Vec<(u32, Arc<Peer>, Arc<Keypair>)> = Vec::new();
        let indices = read(&shared.indices);
        for t in transport.iter_mut() {
            let Ok(index) = messages::receiver_index(&batch.bufs[t.buf][t.at.clone()]) else {
                continue;
            };
            t.key = match found.iter().position(|(i, _, _)| *i == index) {
                Some(k) => Some(k),
                None => indices.keypair(index).map(|(peer, kp)| {
                    found.push((index, peer, kp));
                    found.len() - 1
                }),
            };
        }
        Self { found }
    }

    fn get(&self, key: usize) -> (&Arc<Peer>, &Arc<Keypair>) {
        let (_, peer, kp) = &self.found[key];
        (peer, kp)
    }
}

/// Authenticates and decrypts in place (the replay window moves only after
/// the tag verifies). Safe to run on any thread.
fn open(
    shared: &Shared,
    keys: &Keys,
    key: Option<usize>,
    msg: &mut [u8],
    now: Duration,
) -> Option<Range<usize>> {
    let counters = &shared.counters;
    let Some(key) = key else {
        DeviceCounters::one(&counters.rx_unknown_index);
        return None;
    };
    match keys.get(key).1.open_in_place(msg, now) {
        Ok(range) => Some(range),
        Err(Error::Replay) => {
            DeviceCounters::one(&counters.rx_replayed);
            None
        }
        Err(_) => {
            DeviceCounters::one(&counters.rx_auth_failed);
            None
        }
    }
}

/// What follows decryption, in arrival order, with the batch's bookkeeping.
struct Accepting<'s> {
    shared: &'s Shared,
    keys: &'s Keys,
    now: Duration,
    now_ns: u64,
    allowed: RwLockReadGuard<'s, AllowedIps<PeerId>>,
    /// Keys whose confirmation and rekey checks are done.
    checked: Vec<bool>,
    last_roam: Option<(usize, SocketAddr, Option<Source>)>,
    last_route: Option<(IpAddr, Option<PeerId>)>,
    /// Activity of the current run of one keypair: (key, bytes, any data).
    run: Option<(usize, u64, bool)>,
}

impl<'s> Accepting<'s> {
    fn new(shared: &'s Shared, keys: &'s Keys, now: Duration) -> Self {
        Self {
            shared,
            keys,
            now,
            now_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            allowed: read(&shared.allowed),
            checked: vec![false; keys.found.len()],
            last_roam: None,
            last_route: None,
            run: None,
        }
    }

    /// Roaming, key confirmation, rekey request, timers; then the inner
    /// packet's range if it goes to TUN.
    fn accept(&mut self, t: &Transport, msg: &[u8]) -> Option<Range<usize>> {
        let (Some(range), Some(key)) = (t.opened.clone(), t.key) else {
            return None;
        };
        let (peer, _) = self.keys.get(key);
        self.roam(key, t);
        self.check_key(key);
        let plain = &msg[range.clone()];
        self.count(key, msg.len() as u64, !plain.is_empty());
        if plain.is_empty() {
            return None; // a keepalive
        }
        let Some(len) = inner_packet_len(plain) else {
            DeviceCounters::one(&self.shared.counters.rx_invalid_packet);
            return None;
        };
        if self.route(&plain[..len]) != Some(peer.id()) {
            peer.activity().invalid_source();
            DeviceCounters::one(&self.shared.counters.rx_invalid_packet);
            return None;
        }
        Some(range.start..range.start + len)
    }

    fn roam(&mut self, key: usize, t: &Transport) {
        let this = Some((key, t.src, t.local));
        if self.last_roam == this {
            return;
        }
        self.last_roam = this;
        let peer = self.keys.get(key).0;
        if peer.endpoint().roam(t.src, t.local) {
            peer.notify(&self.shared.events);
        }
    }

    /// Once per keypair and batch: key confirmation, the receive-side rekey.
    fn check_key(&mut self, key: usize) {
        if std::mem::replace(&mut self.checked[key], true) {
            return;
        }
        let (peer, kp) = self.keys.get(key);
        if let Some(dropped) = peer.keypairs().confirm(kp) {
            write(&self.shared.indices).free(dropped);
            handshake_complete(self.shared, peer, self.now_ns);
            tx::flush_staged(self.shared, peer);
        }
        if kp.needs_rekey_on_receive(self.now) && peer.claim_lastminute_handshake() {
            request_initiation(self.shared, peer, false);
        }
    }

    /// Adds a packet to the current run's activity.
    fn count(&mut self, key: usize, bytes: u64, data: bool) {
        match &mut self.run {
            Some((k, b, d)) if *k == key => {
                *b += bytes;
                *d |= data;
            }
            _ => {
                self.finish();
                self.run = Some((key, bytes, data));
            }
        }
    }

    /// Records the current run's activity (one update for many packets).
    fn finish(&mut self) {
        if let Some((key, bytes, data)) = self.run.take() {
            let peer = self.keys.get(key).0;
            if peer.activity().received(self.now_ns, bytes, data) {
                peer.notify(&self.shared.events);
            }
        }
    }

    /// The peer the packet's source address routes to (longest-prefix match).
    fn route(&mut self, packet: &[u8]) -> Option<PeerId> {
        let source = inner_source(packet)?;
        match self.last_route {
            Some((s, peer)) if s == source => peer,
            _ => {
                let peer = self.allowed.lookup(source);
                self.last_route = Some((source, peer));
                peer
            }
        }
    }
}

/// Writes one packet (gathered from `iov`) to the TUN queue; a failure is
/// counted, and the packet is dropped.
fn tun_write(shared: &Shared, tun: RawFd, iov: &[IoSlice<'_>]) {
    if sys::writev(tun, iov).is_err() {
        DeviceCounters::one(&shared.counters.rx_tun_errors);
    }
}

/// Hands a packet to a userspace stack, or writes it to the lane's TUN
/// queue: straight from the receive buffer without offloads, through the
/// coalescer with them.
fn deliver<'a>(
    shared: &Shared,
    packet: &'a [u8],
    tun: RawFd,
    coalescer: &mut offload::Coalescer<'a>,
) {
    if let Some(stack) = shared.inside.stack() {
        stack.deliver(packet);
    } else if shared.vnet_hdr {
        coalescer.push(packet, &mut |iov: &[IoSlice<'_>]| {
            tun_write(shared, tun, iov)
        });
    } else {
        tun_write(shared, tun, &[IoSlice::new(packet)]);
    }
}
