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
//! - A lane (lanes.rs) reads its TUN queue into a batch it owns (recycle.rs),
//!   routes it, takes each peer's send counters together with a ticket of
//!   that peer's send order (sequence.rs), and hands the batch to the crypto
//!   pipeline (pipeline.rs; with no workers it seals the batch itself, at
//!   once). Sealed runs go out in ticket order, so a peer's datagrams leave
//!   in counter order whichever lane read them and whichever thread sealed
//!   them.
//! - A userspace stack's packets (inside.rs) are sealed and sent at once on
//!   the stack's thread, the only thread that sends its data.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::monotonic_now;
use crate::messages::TRANSPORT_HEADER_LEN;
use crate::session::Keypair;

use super::endpoint::{Endpoint, Source};
use super::handshake::request_initiation;
use super::hold;
use super::offload;
use super::peer::Peer;
use super::recycle::{Recycled, Recycler};
use super::stats::DeviceCounters;
use super::sys::{self, SendError};
use super::{inner_destination, now_ns, DataJob, PeerId, Shared};
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
/// Reads per wake-up at most, so the lane's other work is never starved.
const MAX_READS: usize = 32;

/// Packets read from the TUN device, each 16 bytes into its buffer so it is
/// sealed where it lies (`wire`: its sealed length, 0 if sealing failed).
pub(crate) struct TxBatch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    wire: [usize; BATCH],
    n: usize,
}

impl TxBatch {
    pub(crate) fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect(),
            lens: [0; BATCH],
            wire: [0; BATCH],
            n: 0,
        }
    }

    fn push(&mut self, len: usize) {
        self.lens[self.n] = len;
        self.n += 1;
    }
}

/// A lane's TUN queue: packets read with a virtio-net header land with the
/// header just before them, so an ordinary packet is never copied; a GSO
/// packet is read aside (`gso`) and cut straight into the batch's buffers.
pub(crate) struct TunReader {
    fd: RawFd,
    lane: usize,
    batches: Recycler<TxBatch>,
    batch: Option<Recycled<TxBatch>>,
    gso: Vec<u8>,
}

impl TunReader {
    /// At most `batches` batches in flight at once.
    pub(crate) fn new(fd: RawFd, lane: usize, batches: usize) -> Self {
        Self {
            fd,
            lane,
            batches: Recycler::new(batches, TxBatch::new),
            batch: None,
            gso: vec![0u8; BUF_LEN],
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Reads what the queue holds (at most MAX_READS packets) and sends it
    /// on; false when there was nothing to read.
    pub(crate) fn service(&mut self, shared: &Arc<Shared>) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..MAX_READS {
            if !self.read(shared)? {
                break;
            }
            any = true;
        }
        self.flush(shared);
        Ok(any)
    }

    /// Hands the batch being filled to the pipeline.
    fn flush(&mut self, shared: &Arc<Shared>) {
        flush(&mut self.batch, shared, self.lane);
    }

    /// Reads one packet into the batch; false when the queue has nothing
    /// more to read now.
    fn read(&mut self, shared: &Arc<Shared>) -> io::Result<bool> {
        let fd = self.fd;
        let at = if shared.vnet_hdr {
            TRANSPORT_HEADER_LEN - offload::VNET_HDR_LEN
        } else {
            TRANSPORT_HEADER_LEN
        };
        let batch = room(&mut self.batch, &mut self.batches, shared, self.lane);
        let buf = &mut batch.bufs[batch.n];
        let len = match sys::read(fd, &mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        if !shared.vnet_hdr {
            batch.push(len.min(MAX_INNER));
        } else if is_gso(&buf[at..at + len]) {
            std::mem::swap(buf, &mut self.gso);
            self.cut(shared, at, len);
        } else {
            match offload::read_packets(&mut buf[at..at + len]) {
                Ok(offload::Read::One(packet)) => {
                    let len = packet.len();
                    batch.push(len);
                }
                _ => DeviceCounters::one(&shared.counters.tx_dropped),
            }
        }
        Ok(true)
    }

    /// Cuts the GSO packet at `gso[at..at + len]` into batch buffers.
    fn cut(&mut self, shared: &Arc<Shared>, at: usize, len: usize) {
        let mut gso = std::mem::take(&mut self.gso);
        let Ok(offload::Read::Pieces(pieces)) = offload::read_packets(&mut gso[at..at + len])
        else {
            DeviceCounters::one(&shared.counters.tx_dropped);
            self.gso = gso;
            return;
        };
        for i in 0..pieces.count() {
            let batch = room(&mut self.batch, &mut self.batches, shared, self.lane);
            match pieces.write(i, &mut batch.bufs[batch.n][TRANSPORT_HEADER_LEN..]) {
                Ok(piece) => batch.push(piece),
                Err(_) => DeviceCounters::one(&shared.counters.tx_dropped),
            }
        }
        self.gso = gso;
    }
}

/// Hands the batch being filled, if it holds anything, to the pipeline.
fn flush(batch: &mut Option<Recycled<TxBatch>>, shared: &Arc<Shared>, lane: usize) {
    if let Some(full) = batch.take_if(|b| b.n > 0) {
        dispatch(shared, full, lane);
    }
}

/// The batch being filled, with room for one more packet (a full one is
/// sent first).
fn room<'a>(
    batch: &'a mut Option<Recycled<TxBatch>>,
    batches: &mut Recycler<TxBatch>,
    shared: &Arc<Shared>,
    lane: usize,
) -> &'a mut TxBatch {
    if batch.as_ref().is_some_and(|b| b.n == BATCH) {
        flush(batch, shared, lane);
    }
    batch.get_or_insert_with(|| {
        let mut fresh = batches.get();
        fresh.n = 0; // a batch that came back still counts its old packets
        fresh
    })
}

fn is_gso(read: &[u8]) -> bool {
    offload::VnetHdr::parse(read).is_some_and(|h| h.gso_type & !offload::GSO_ECN != 0)
}

/// The runs of consecutive packets that go to one peer (None: no route).
type Runs = Vec<(Range<usize>, Option<Arc<Peer>>)>;

fn runs(shared: &Shared, bufs: &[Vec<u8>], lens: &[usize]) -> Runs {
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
    let mut runs = Vec::new();
    let mut start = 0;
    while start < routes.len() {
        let id = routes[start];
        let mut end = start + 1;
        while end < routes.len() && routes[end] == id {
            end += 1;
        }
        runs.push((start..end, id.and_then(|id| peers.get(&id).cloned())));
        start = end;
    }
    runs
}

/// Routes a full batch, takes each run's keypair, counters and ticket, and
/// hands it to the pipeline to be sealed and sent.
fn dispatch(shared: &Arc<Shared>, batch: Recycled<TxBatch>, lane: usize) {
    let n = batch.n;
    let mut seal = Vec::new();
    for (range, peer) in runs(shared, &batch.bufs[..n], &batch.lens[..n]) {
        let Some(peer) = peer else {
            DeviceCounters::add(&shared.counters.tx_no_route, range.len() as u64);
            continue;
        };
        let (bufs, lens) = (&batch.bufs[range.clone()], &batch.lens[range.clone()]);
        if let Some(p) = prepare(shared, &peer, bufs, lens, true) {
            let count = (p.counters.end - p.counters.start) as usize;
            seal.push(SealRun {
                peer,
                prepared: p,
                packets: range.start..range.start + count,
            });
        }
    }
    if !seal.is_empty() {
        shared.pipeline.submit(DataJob::Seal(SealJob {
            shared: shared.clone(),
            batch,
            runs: seal,
            lane,
        }));
    }
}

/// A run's keypair and send counters (and ticket of the peer's send order).
struct Prepared {
    kp: Arc<Keypair>,
    counters: Range<u64>,
    ticket: Option<u64>,
}

/// Everything before sealing a run of one peer's packets: held or no
/// keypair: staged; staged packets flushed first; counters taken (with a
/// ticket when `ordered`); packets beyond the keypair's last counter staged.
fn prepare(
    shared: &Shared,
    peer: &Arc<Peer>,
    bufs: &[Vec<u8>],
    lens: &[usize],
    ordered: bool,
) -> Option<Prepared> {
    if hold::stage_if_held(peer, bufs, lens) {
        return None;
    }
    let now = monotonic_now();
    let Some(kp) = peer.keypairs().sending(now) else {
        stage_from(shared, peer, bufs, lens, 0);
        return None;
    };
    if !peer.staged().is_empty() {
        flush_staged(shared, peer);
    }
    let n = bufs.len();
    let taken = if ordered {
        let order = peer.send_order();
        order
            .ticket_with(|| kp.next_counters(n, now).ok())
            .map(|(t, c)| (Some(t), c))
    } else {
        kp.next_counters(n, now).ok().map(|c| (None, c))
    };
    let Some((ticket, counters)) = taken else {
        stage_from(shared, peer, bufs, lens, 0);
        return None;
    };
    let sealable = (counters.end - counters.start) as usize;
    if sealable < n {
        // The keypair ran out of counters mid-batch: keep the rest for the next one.
        stage_from(shared, peer, bufs, lens, sealable);
    }
    Some(Prepared {
        kp,
        counters,
        ticket,
    })
}

/// Seals `bufs[i]` (`lens[i]` bytes at offset 16) with counter `first + i`,
/// recording each sealed length (0 if it failed, which cannot happen: every
/// buffer has room for the largest message).
fn seal_all(
    kp: &Keypair,
    bufs: &mut [Vec<u8>],
    lens: &[usize],
    wire: &mut [usize],
    first: u64,
    mtu: usize,
) {
    for (k, ((buf, &len), w)) in bufs.iter_mut().zip(lens).zip(wire).enumerate() {
        *w = kp
            .seal_with_counter(buf, len, mtu, first + k as u64)
            .unwrap_or(0);
    }
}

struct SealRun {
    peer: Arc<Peer>,
    prepared: Prepared,
    packets: Range<usize>,
}

/// A routed batch to seal and send (on a pipeline worker, or inline).
pub(crate) struct SealJob {
    shared: Arc<Shared>,
    batch: Recycled<TxBatch>,
    runs: Vec<SealRun>,
    lane: usize,
}

impl SealJob {
    pub(crate) fn run(self) {
        let SealJob {
            shared,
            mut batch,
            runs,
            lane,
        } = self;
        let mtu = shared.mtu.load(Ordering::Relaxed);
        let b = &mut *batch;
        for run in &runs {
            let r = run.packets.clone();
            let first = run.prepared.counters.start;
            seal_all(
                &run.prepared.kp,
                &mut b.bufs[r.clone()],
                &b.lens[r.clone()],
                &mut b.wire[r],
                first,
                mtu,
            );
        }
        let batch = Arc::new(batch);
        for run in runs {
            let sealed = Sealed {
                batch: batch.clone(),
                kp: run.prepared.kp,
                packets: run.packets,
                lane,
            };
            let peer = run.peer;
            match run.prepared.ticket {
                Some(t) => peer
                    .send_order()
                    .complete(t, Some(sealed), |_, s| s.send(&shared, &peer)),
                None => sealed.send(&shared, &peer),
            }
        }
    }
}

/// A sealed run of one peer's packets, waiting for its turn to be sent.
pub(crate) struct Sealed {
    batch: Arc<Recycled<TxBatch>>,
    kp: Arc<Keypair>,
    packets: Range<usize>,
    lane: usize,
}

impl Sealed {
    fn send(&self, shared: &Shared, peer: &Arc<Peer>) {
        let b = &**self.batch;
        let r = self.packets.clone();
        let (sealed, plain) = sealed_messages(&b.bufs[r.clone()], &b.lens[r.clone()], &b.wire[r]);
        let failed = (self.packets.len() - sealed.len()) as u64;
        DeviceCounters::add(&shared.counters.tx_dropped, failed);
        finish_send(shared, peer, &self.kp, &sealed, &plain, self.lane);
    }
}

/// The sealed messages of a run and their plaintext lengths.
fn sealed_messages<'a>(
    bufs: &'a [Vec<u8>],
    lens: &[usize],
    wire: &[usize],
) -> (Vec<&'a [u8]>, Vec<usize>) {
    let mut sealed = Vec::with_capacity(bufs.len());
    let mut plain = Vec::with_capacity(bufs.len());
    for ((buf, &len), &w) in bufs.iter().zip(lens).zip(wire) {
        if w > 0 {
            sealed.push(&buf[..w]);
            plain.push(len);
        }
    }
    (sealed, plain)
}

/// A userspace stack's packets (at offset 16 of their buffers): routed,
/// sealed and sent at once on the calling thread.
pub(crate) fn route_and_send(shared: &Shared, bufs: &mut [Vec<u8>], lens: &[usize]) {
    for (range, peer) in runs(shared, bufs, lens) {
        match peer {
            Some(peer) => send_now(shared, &peer, &mut bufs[range.clone()], &lens[range]),
            None => DeviceCounters::add(&shared.counters.tx_no_route, range.len() as u64),
        }
    }
}

fn send_now(shared: &Shared, peer: &Arc<Peer>, bufs: &mut [Vec<u8>], lens: &[usize]) {
    let Some(p) = prepare(shared, peer, bufs, lens, false) else {
        return;
    };
    let count = (p.counters.end - p.counters.start) as usize;
    let mtu = shared.mtu.load(Ordering::Relaxed);
    let mut wire = vec![0usize; count];
    seal_all(
        &p.kp,
        &mut bufs[..count],
        &lens[..count],
        &mut wire,
        p.counters.start,
        mtu,
    );
    let (sealed, plain) = sealed_messages(&bufs[..count], &lens[..count], &wire);
    DeviceCounters::add(&shared.counters.tx_dropped, (count - sealed.len()) as u64);
    finish_send(shared, peer, &p.kp, &sealed, &plain, 0);
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
    lane: usize,
) {
    let Some(ep) = peer.endpoint().get() else {
        DeviceCounters::add(&shared.counters.tx_dropped, sealed.len() as u64);
        return;
    };
    if let Err(e) = send_to_endpoint_on(shared, lane, peer, ep, sealed) {
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
    send_to_endpoint_on(shared, 0, peer, ep, messages)
}

/// `send_to_endpoint` through the socket of `lane` (any socket of the
/// port's group sends from the same port).
fn send_to_endpoint_on(
    shared: &Shared,
    lane: usize,
    peer: &Peer,
    ep: Endpoint,
    messages: &[&[u8]],
) -> io::Result<()> {
    match send_datagrams_on(shared, lane, ep.addr, ep.src, messages) {
        Ok(()) => Ok(()),
        Err(SendError { sent, error })
            if ep.src.is_some() && sys::is_stale_source_error(&error) =>
        {
            peer.endpoint().forget_source(ep.src);
            send_datagrams_on(shared, lane, ep.addr, None, &messages[sent..]).map_err(|e| e.error)
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
    send_datagrams_on(shared, 0, dst, src, messages)
}

fn send_datagrams_on(
    shared: &Shared,
    lane: usize,
    dst: SocketAddr,
    src: Option<Source>,
    messages: &[&[u8]],
) -> Result<(), SendError> {
    let Some(sock) = shared.socket_for(&dst, lane) else {
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
    finish_send(shared, peer, &kp, &slices, &lens, 0);
    slices.len()
}

/// Kernel `wg_packet_send_keepalive`: an empty packet joins the staged queue
/// if it is empty, then the queue is sent (or a handshake requested).
pub(crate) fn send_keepalive(shared: &Shared, peer: &Arc<Peer>) {
    peer.staged().stage_keepalive();
    flush_staged(shared, peer);
}
