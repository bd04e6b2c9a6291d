//! The send side: TUN packets and control-plane requests become encrypted
//! datagrams to a peer's endpoint.
//!
//! - Route by the destination address (longest-prefix match); no peer: drop.
//! - Encrypt in place in the read buffer (the packet is read 16 bytes in, so
//!   header, padding and tag fit around it).
//! - Staged packets go out before new ones once a keypair can send. No
//!   usable keypair: stage the packets and ask for an initiation.
//! - After sending, ask for a rekey when the keypair is old enough (as the
//!   initiator) or has sent enough (kernel `keep_key_fresh`); the request is
//!   rate-limited and merged by the handshake thread's rules.
//! - A full socket buffer is waited for at most SEND_PATIENCE; then the
//!   datagrams are dropped: no sender hangs on a wedged socket.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::monotonic_now;
use crate::messages::TRANSPORT_HEADER_LEN;
use crate::session::Keypair;

use super::endpoint::{Endpoint, Source};
use super::events::Event;
use super::handshake::request_initiation;
use super::hold;
use super::offload;
use super::peer::Peer;
use super::stats::DeviceCounters;
use super::sys::{self, EventFd, Readiness, SendError};
use super::thread::Faults;
use super::{inner_destination, now_ns, PeerId, Shared};
use crate::sync::read;

/// How long a sender waits for room in a full socket buffer before dropping.
pub(crate) const SEND_PATIENCE: Duration = Duration::from_millis(100);

const BATCH: usize = 64;
/// Largest packet read from the TUN device (IP packets are at most 65535 bytes).
const MAX_INNER: usize = 65535;
/// Largest TSO packet the kernel hands over (GSO_MAX_SIZE plus headers).
const MAX_TSO: usize = 65536 + 256;
/// A batch buffer: the transport header, then the largest read, then room
/// for padding and the tag (sealing happens in place).
const BUF_LEN: usize = TRANSPORT_HEADER_LEN + offload::VNET_HDR_LEN + MAX_TSO + 64;
/// Reads per wake-up at most, so sending is never starved.
const MAX_READS: usize = 32;

/// Packets read from the TUN device, each 16 bytes into its buffer so it is
/// sealed where it lies. A packet read with a virtio-net header lands with
/// the header just before it, so an ordinary packet is never copied; a GSO
/// packet is moved aside (`gso`) and cut straight into the next buffers.
struct Batch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    n: usize,
    gso: Vec<u8>,
}

impl Batch {
    fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect(),
            lens: [0; BATCH],
            n: 0,
            gso: vec![0u8; BUF_LEN],
        }
    }

    /// Routes, seals and sends what the batch holds, and empties it.
    fn send(&mut self, shared: &Shared) {
        route_and_send(shared, &mut self.bufs[..self.n], &self.lens[..self.n]);
        self.n = 0;
    }

    fn make_room(&mut self, shared: &Shared) {
        if self.n == BATCH {
            self.send(shared);
        }
    }

    /// Reads one packet from the TUN device into the batch; false when the
    /// device has nothing more to read now.
    fn read(&mut self, shared: &Shared, fd: RawFd) -> io::Result<bool> {
        self.make_room(shared);
        let at = if shared.vnet_hdr {
            TRANSPORT_HEADER_LEN - offload::VNET_HDR_LEN
        } else {
            TRANSPORT_HEADER_LEN
        };
        let buf = &mut self.bufs[self.n];
        let len = match sys::read(fd, &mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        if !shared.vnet_hdr {
            self.push(len.min(MAX_INNER));
        } else if is_gso(&buf[at..at + len]) {
            std::mem::swap(buf, &mut self.gso);
            self.cut(shared, at, len);
        } else {
            let packet = match offload::read_packets(&mut buf[at..at + len]) {
                Ok(offload::Read::One(packet)) => Some(packet.len()),
                _ => None,
            };
            match packet {
                Some(len) => self.push(len),
                None => DeviceCounters::one(&shared.counters.tx_dropped),
            }
        }
        Ok(true)
    }

    fn push(&mut self, len: usize) {
        self.lens[self.n] = len;
        self.n += 1;
    }

    /// Cuts the GSO packet at `gso[at..at + len]` into the batch's buffers.
    fn cut(&mut self, shared: &Shared, at: usize, len: usize) {
        let Batch { bufs, lens, n, gso } = self;
        let Ok(offload::Read::Pieces(pieces)) = offload::read_packets(&mut gso[at..at + len])
        else {
            DeviceCounters::one(&shared.counters.tx_dropped);
            return;
        };
        for i in 0..pieces.count() {
            if *n == BATCH {
                route_and_send(shared, &mut bufs[..*n], &lens[..*n]);
                *n = 0;
            }
            match pieces.write(i, &mut bufs[*n][TRANSPORT_HEADER_LEN..]) {
                Ok(piece) => {
                    lens[*n] = piece;
                    *n += 1;
                }
                Err(_) => DeviceCounters::one(&shared.counters.tx_dropped),
            }
        }
    }
}

fn is_gso(read: &[u8]) -> bool {
    offload::VnetHdr::parse(read).is_some_and(|h| h.gso_type & !offload::GSO_ECN != 0)
}

pub(crate) fn tun_loop(shared: &Shared, stop: &EventFd, faults: &mut Faults) {
    let mut batch = Batch::new();
    let fd = shared.tun_fd();
    loop {
        match sys::wait_readable(fd, stop) {
            Ok(Readiness::Readable) => faults.woke(),
            Ok(Readiness::Stop) => return,
            Ok(Readiness::Error) => {
                return tun_closed(shared, "TUN device reported an error (deleted?)")
            }
            Err(e) => return tun_closed(shared, &e.to_string()),
        }
        for _ in 0..MAX_READS {
            match batch.read(shared, fd) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return tun_closed(shared, &e.to_string()),
            }
        }
        batch.send(shared);
    }
}

fn tun_closed(shared: &Shared, error: &str) {
    shared.events.push(Event::TunClosed {
        error: error.to_string(),
    });
}

pub(crate) fn route_and_send(shared: &Shared, bufs: &mut [Vec<u8>], lens: &[usize]) {
    let routes: Vec<Option<PeerId>> = {
        let table = read(&shared.allowed);
        bufs.iter()
            .zip(lens)
            .map(|(buf, &len)| {
                let packet = &buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len];
                inner_destination(packet).and_then(|d| table.lookup(d))
            })
            .collect()
    };
    let peers = read(&shared.peers);
    let mut start = 0;
    while start < routes.len() {
        let id = routes[start];
        let mut end = start + 1;
        while end < routes.len() && routes[end] == id {
            end += 1;
        }
        match id.and_then(|id| peers.get(&id).cloned()) {
            Some(peer) => send_run(shared, &peer, &mut bufs[start..end], &lens[start..end]),
            None => DeviceCounters::add(&shared.counters.tx_no_route, (end - start) as u64),
        }
        start = end;
    }
}

/// Sends packets that sit at offset 16 of their buffers, all for one peer.
fn send_run(shared: &Shared, peer: &Arc<Peer>, bufs: &mut [Vec<u8>], lens: &[usize]) {
    if hold::stage_if_held(peer, bufs, lens) {
        return;
    }
    let now = monotonic_now();
    let Some(kp) = peer.keypairs().sending(now) else {
        stage_from(shared, peer, bufs, lens, 0);
        return;
    };
    if !peer.staged().is_empty() {
        flush_staged(shared, peer);
    }
    let Ok(counters) = kp.next_counters(bufs.len(), now) else {
        stage_from(shared, peer, bufs, lens, 0);
        return;
    };
    let sealable = (counters.end - counters.start) as usize;
    let mtu = shared.mtu.load(Ordering::Relaxed);
    let mut jobs: Vec<SealJob> = bufs[..sealable]
        .iter_mut()
        .zip(lens)
        .map(|(buf, &len)| SealJob { buf, len, wire: 0 })
        .collect();
    shared.pool.for_each_chunk(&mut jobs, |offset, chunk| {
        for (k, job) in chunk.iter_mut().enumerate() {
            let counter = counters.start + (offset + k) as u64;
            // Cannot fail: every buffer has room for the largest message.
            job.wire = kp
                .seal_with_counter(job.buf, job.len, mtu, counter)
                .unwrap_or(0);
        }
    });
    let mut sealed: Vec<&[u8]> = Vec::with_capacity(jobs.len());
    let mut plain: Vec<usize> = Vec::with_capacity(jobs.len());
    for job in jobs.iter().filter(|j| j.wire > 0) {
        sealed.push(&job.buf[..job.wire]);
        plain.push(job.len);
    }
    let failed = (jobs.len() - sealed.len()) as u64;
    DeviceCounters::add(&shared.counters.tx_dropped, failed);
    finish_send(shared, peer, &kp, &sealed, &plain);
    if sealable < bufs.len() {
        // The keypair ran out of counters mid-batch: keep the rest for the next one.
        stage_from(shared, peer, bufs, lens, sealable);
    }
}

/// A packet of a batch being sealed (possibly on a helper thread).
struct SealJob<'a> {
    buf: &'a mut Vec<u8>,
    len: usize,
    wire: usize,
}

/// Stages the packets of a batch from `first` on and asks for a handshake.
fn stage_from(shared: &Shared, peer: &Arc<Peer>, bufs: &[Vec<u8>], lens: &[usize], first: usize) {
    peer.staged().stage(
        bufs[first..]
            .iter()
            .zip(&lens[first..])
            .map(|(b, &l)| &b[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + l]),
    );
    request_initiation(shared, peer, false);
}

/// Sends sealed messages and does the bookkeeping that follows every send.
fn finish_send(
    shared: &Shared,
    peer: &Arc<Peer>,
    kp: &Keypair,
    sealed: &[&[u8]],
    plain_lens: &[usize],
) {
    let Some(ep) = peer.endpoint().get() else {
        DeviceCounters::add(&shared.counters.tx_dropped, sealed.len() as u64);
        return;
    };
    if let Err(e) = send_to_endpoint(shared, peer, ep, sealed) {
        hold::send_failed(shared, peer, sealed.len(), &e);
        return;
    }
    let now = now_ns();
    let mut wake = false;
    for (m, &plain) in sealed.iter().zip(plain_lens) {
        wake |= peer.activity().sent(now, m.len() as u64, plain > 0);
    }
    if wake {
        peer.notify(&shared.events);
    }
    if kp.needs_rekey_on_send(monotonic_now()) {
        request_initiation(shared, peer, false);
    }
}

/// Sends datagrams to a peer's endpoint from its sticky source, falling back
/// to the routing table's source at once if that address is gone.
pub(crate) fn send_to_endpoint(
    shared: &Shared,
    peer: &Peer,
    ep: Endpoint,
    messages: &[&[u8]],
) -> io::Result<()> {
    match send_datagrams(shared, ep.addr, ep.src, messages) {
        Ok(()) => Ok(()),
        Err(SendError { sent, error })
            if ep.src.is_some() && sys::is_stale_source_error(&error) =>
        {
            peer.endpoint().forget_source(ep.src);
            send_datagrams(shared, ep.addr, None, &messages[sent..]).map_err(|e| e.error)
        }
        Err(e) => Err(e.error),
    }
}

pub(crate) fn send_datagrams(
    shared: &Shared,
    dst: SocketAddr,
    src: Option<Source>,
    messages: &[&[u8]],
) -> Result<(), SendError> {
    let Some(sock) = shared.socket_for(&dst) else {
        return Err(SendError {
            sent: 0,
            error: io::Error::new(
                io::ErrorKind::NotConnected,
                "no socket for that address family",
            ),
        });
    };
    sys::send_batch(
        sock.fd.as_raw_fd(),
        &dst,
        src,
        messages,
        &sock.gso,
        SEND_PATIENCE,
    )
}

/// Sends whatever is staged if a keypair can send (else asks for a
/// handshake); returns how many packets went out.
pub(crate) fn flush_staged(shared: &Shared, peer: &Arc<Peer>) -> usize {
    let staged = peer.staged();
    if staged.is_held() || staged.is_empty() {
        return 0;
    }
    let now = monotonic_now();
    let Some(kp) = peer.keypairs().sending(now) else {
        request_initiation(shared, peer, false);
        return 0;
    };
    let packets = staged.take();
    let mtu = shared.mtu.load(Ordering::Relaxed);
    let mut sealed = Vec::with_capacity(packets.len());
    let mut lens = Vec::with_capacity(packets.len());
    for (i, p) in packets.iter().enumerate() {
        match kp.encrypt(p, mtu, now) {
            Ok(m) => {
                sealed.push(m);
                lens.push(p.len());
            }
            Err(_) => {
                // The keypair ran out: the rest waits for the next one.
                staged.requeue(packets[i..].to_vec());
                request_initiation(shared, peer, false);
                break;
            }
        }
    }
    let slices: Vec<&[u8]> = sealed.iter().map(|m| m.as_slice()).collect();
    finish_send(shared, peer, &kp, &slices, &lens);
    slices.len()
}

/// Kernel `wg_packet_send_keepalive`: an empty packet joins the staged queue
/// if it is empty, then the queue is sent (or a handshake requested).
pub(crate) fn send_keepalive(shared: &Shared, peer: &Arc<Peer>) {
    peer.staged().stage_keepalive();
    flush_staged(shared, peer);
}
