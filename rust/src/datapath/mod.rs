//! The data plane: moves packets between the inside (a TUN device or a
//! userspace stack, inside.rs) and the UDP sockets
//! and runs the handshakes, in native threads, never calling into Python.
//!
//! Threads (thread.rs: a thread that panics takes the process down):
//! - `wgpy-laneN` (lanes.rs), the I/O threads, one per lane: a lane is one
//!   queue of the TUN device and one UDP socket per address family, served
//!   in both directions by one thread. Send (tx.rs): TUN -> longest-prefix
//!   match on the destination -> the peer's current keypair -> seal -> UDP
//!   to its endpoint, from its sticky source address; no usable keypair:
//!   stage the packets and ask for an initiation. Receive (rx.rs):
//!   handshake messages (mac1 checked) to the handshake thread; transport
//!   messages -> keypair by receiver index -> open (replay window after the
//!   tag) -> roam the endpoint -> key confirmation -> the inner source must
//!   route back to the same peer (longest-prefix match) -> TUN.
//! - `wgpy-cryptoN` (pipeline.rs), none by default: persistent workers that
//!   seal and open whole batches the lanes hand over, then send or deliver
//!   them in order.
//! - `wgpy-handshake` (handshake.rs): consumes initiations, responses and
//!   cookie replies, answers them, sends initiations on request, and makes
//!   the control plane's sends (keepalives, staged packets).
//!
//! Scaling over cores (how many lanes and workers: scaling.rs):
//! - Lanes spread the I/O and the crypto by flow and by peer. With
//!   `WGPY_QUEUES=N` (N > 1) the control plane opens the TUN device with
//!   IFF_MULTI_QUEUE and N sockets per family on the listen port, an
//!   SO_REUSEPORT group (python/wgpy/tun.py); the data plane opens the other
//!   N - 1 queues itself (`Datapath::new`). The kernel hashes each flow
//!   read from the TUN device to a queue, and each sender's address to one
//!   socket of the group, so many flows and many peers use every lane, with
//!   no hand-over between threads at all.
//! - The pipeline spreads even one flow of one peer: with
//!   `WGPY_CRYPTO_THREADS=W`, a lane reads and routes a batch, takes each
//!   peer's send counters, and hands the batch to the workers; it goes back
//!   to reading at once. Workers stay busy while batches keep coming (they
//!   sleep only on an empty queue), instead of being woken and joined per
//!   batch as the helper pool before them was.
//! - Order: a peer's datagrams leave in send-counter order whichever lane
//!   read them and whichever thread sealed them: each run of a batch takes
//!   its counters and a ticket of the peer's send order under one lock, and
//!   sealed runs are sent in ticket order (sequence.rs). Received batches
//!   are delivered in the order their lane received them (a peer's
//!   datagrams come to one socket of the group, so to one lane).
//! - Memory and back-pressure: each lane owns a few batch buffers
//!   (recycle.rs) that come back when the work is done; a lane with all of
//!   them out waits for one, so the queue to the workers never grows past
//!   them.
//! - Defaults: one lane and no workers on machines of up to two cores,
//!   where every core is already busy with the sender, the receiver and
//!   the kernel, and hand-overs only add work (measured: bench/README.md,
//!   "Scaling over cores"); above that a lane per two cores, up to 8 (not
//!   yet measured on a larger machine; scaling.rs).
//!
//! Who owns what (one owner each):
//! - Here: receiver indices (index.rs), keypairs (keypairs.rs), handshake
//!   state, endpoints and sticky sources (endpoint.rs), staged packets and
//!   holding (staged.rs, hold.rs), the handshake rate and "wants a
//!   handshake" (peer.rs), packet and handshake activity (activity.rs),
//!   device counters (stats.rs).
//! - The control plane (Python): the configuration (peers, their keys and
//!   allowed IPs, the private key, the MTU it follows) and the timers. It
//!   reads the activity to drive them and asks for keepalives, initiations,
//!   purges and key erasure; it is told, through the event queue
//!   (events.rs), when to read a peer again.
//!
//! Send errors: a send from a vanished source address (ENETUNREACH, EINVAL,
//! EADDRNOTAVAIL) forgets that source and is retried at once from the
//! routing table's choice; a send that finds no path at all can hold the
//! peer's packets (hold.rs); a full socket buffer is waited for at most
//! tx::SEND_PATIENCE. Locks follow one rule (rust/src/sync.rs).

mod activity;
mod endpoint;
mod error;
mod events;
mod handshake;
mod hold;
mod index;
mod inside;
mod keypairs;
mod lanes;
pub mod offload;
mod peer;
pub mod pipeline;
pub mod recycle;
mod rx;
pub mod scaling;
pub mod sequence;
mod staged;
mod stats;
mod sys;
pub(crate) mod thread;
mod tx;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use activity::ActivitySnapshot;
pub use endpoint::{Endpoint, Source};
pub use error::DatapathError;
pub use events::Event;
pub use handshake::{MAX_QUEUED_HANDSHAKES, UNDER_LOAD_AFTER_TIME, UNDER_LOAD_QUEUE_LENGTH};
pub use inside::{send_buffer_len, InsideSender, PacketSink, SEND_HEADROOM};
pub use staged::MAX_STAGED;
pub use stats::DeviceStats;
pub use thread::TEST_PANIC_ENV;

use crate::allowedips::AllowedIps;
use crate::clock::{monotonic_now, Clock, SystemClock};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::noise::{Handshake, Identity};
use crate::sync::{lock, read, write};
use events::EventQueue;
use handshake::{DeviceIdentity, Handshakes};
use index::IndexTable;
use inside::Inside;
use lanes::Lane;
use peer::Peer;
use pipeline::{Job, Pipeline, Workers};
use stats::DeviceCounters;
use thread::Worker;

pub type PeerId = u64;
type Result<T> = std::result::Result<T, DatapathError>;

/// Largest datagram or TUN packet handled (an IPv4/IPv6 packet of MTU 65535
/// plus the transport overhead).
pub const MAX_PACKET: usize = 65535 + 64;

/// The address at `v4` (IPv4) or `v6` (IPv6) bytes into an IP packet.
fn address_at(packet: &[u8], v4: usize, v6: usize) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            Some(IpAddr::from(<[u8; 4]>::try_from(&packet[v4..v4 + 4]).ok()?))
        }
        6 if packet.len() >= 40 => Some(IpAddr::from(
            <[u8; 16]>::try_from(&packet[v6..v6 + 16]).ok()?,
        )),
        _ => None,
    }
}

/// The source address of an IP packet (what the receive check routes).
pub(crate) fn inner_source(packet: &[u8]) -> Option<IpAddr> {
    address_at(packet, 12, 8)
}

/// The destination address of an IP packet (what the send path routes).
pub(crate) fn inner_destination(packet: &[u8]) -> Option<IpAddr> {
    address_at(packet, 16, 24)
}

pub(crate) fn now_ns() -> u64 {
    u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX)
}

/// A UDP socket of the device and whether UDP GSO still works on it.
pub(crate) struct UdpSocket {
    fd: OwnedFd,
    gso: AtomicBool,
    gro: bool,
}

/// The UDP sockets, per address family: one per lane (an SO_REUSEPORT
/// group on one port), or a single one.
#[derive(Default)]
struct Sockets {
    v4: Vec<Arc<UdpSocket>>,
    v6: Vec<Arc<UdpSocket>>,
}

/// Work for the crypto pipeline (pipeline.rs): a batch to seal and send, or
/// to open and deliver.
pub(crate) enum DataJob {
    Seal(tx::SealJob),
    Open(rx::OpenJob),
}

impl Job for DataJob {
    fn run(self) {
        match self {
            DataJob::Seal(job) => job.run(),
            DataJob::Open(job) => job.run(),
        }
    }
}

pub(crate) struct Shared {
    peers: RwLock<HashMap<PeerId, Arc<Peer>>>,
    by_key: RwLock<HashMap<PublicKey, Arc<Peer>>>,
    indices: RwLock<IndexTable>,
    allowed: RwLock<AllowedIps<PeerId>>,
    handshakes: Handshakes,
    /// Stands in for our identity in peers' handshakes while we have no
    /// private key; never used, since nothing is sent or accepted then.
    placeholder: Arc<Identity>,
    events: EventQueue,
    mtu: AtomicUsize,
    /// The TUN device or a userspace stack (inside.rs).
    inside: Inside,
    sockets: RwLock<Sockets>,
    counters: DeviceCounters,
    vnet_hdr: bool,
    /// The TUN device takes UDP GSO writes (TUN_F_USO4/6 accepted).
    udp_offload: bool,
    /// Hold a peer's packets when no path to it exists (hold.rs).
    hold_unreachable: AtomicBool,
    /// Sealing and opening beside the lanes (pipeline.rs).
    pipeline: Pipeline<DataJob>,
}

impl Shared {
    fn peer(&self, id: PeerId) -> Result<Arc<Peer>> {
        read(&self.peers)
            .get(&id)
            .cloned()
            .ok_or(DatapathError::UnknownPeer(id))
    }

    fn peer_by_key(&self, key: &PublicKey) -> Option<Arc<Peer>> {
        read(&self.by_key).get(key).cloned()
    }

    fn all_peers(&self) -> Vec<Arc<Peer>> {
        read(&self.peers).values().cloned().collect()
    }

    /// The socket of `dst`'s family that `lane` sends from (any socket of
    /// a group sends from the same port).
    fn socket_for(&self, dst: &SocketAddr, lane: usize) -> Option<Arc<UdpSocket>> {
        let s = read(&self.sockets);
        let family = match dst {
            SocketAddr::V4(_) => &s.v4,
            SocketAddr::V6(_) => &s.v6,
        };
        family.get(lane % family.len().max(1)).cloned()
    }

    fn tun_fd(&self) -> RawFd {
        self.inside.tun_fd()
    }

    /// Our identity as peers' handshakes hold it.
    fn peer_identity(&self) -> Arc<Identity> {
        self.handshakes
            .identity()
            .map_or_else(|| self.placeholder.clone(), |d| d.identity.clone())
    }

    /// Forgets the handshake in progress and its index.
    fn clear_handshake(&self, peer: &Peer) {
        let mut hs = peer.handshake();
        let pending = hs.pending_index();
        hs.clear();
        write(&self.indices).free(pending);
    }
}

/// Everything the control plane reads about one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerSnapshot {
    pub activity: ActivitySnapshot,
    pub endpoint: Option<Endpoint>,
    pub source_pinned: bool,
    pub held: bool,
    pub staged: usize,
    /// A keypair can send now.
    pub can_send: bool,
}

#[derive(Default)]
struct Threads {
    handshake: Option<Worker>,
    crypto: Option<Workers<DataJob>>,
    lanes: Vec<Worker>,
}

pub struct Datapath {
    shared: Arc<Shared>,
    threads: Mutex<Threads>,
}

impl Datapath {
    /// Takes a copy of the TUN descriptor (the caller keeps its own); when
    /// the device is multi-queue (IFF_MULTI_QUEUE) and more than one lane is
    /// configured (scaling.rs), opens a queue for each further lane.
    /// `vnet_hdr`: the TUN device was opened with IFF_VNET_HDR, so every
    /// read and write carries a virtio-net header (and reads may be GSO
    /// packets). `udp_offload`: the device also accepted UDP segmentation
    /// offload (TUN_F_USO4/6), so datagrams may be coalesced on writes.
    pub fn new(tun_fd: RawFd, mtu: usize, vnet_hdr: bool, udp_offload: bool) -> Result<Self> {
        let tun = sys::dup(tun_fd)?;
        sys::set_nonblocking(tun.as_fd())?;
        let queues = Self::open_queues(&tun, scaling::get().queues)?;
        let queues = std::iter::once(tun).chain(queues).collect();
        Self::with_inside(Inside::Tun(queues), mtu, vnet_hdr, udp_offload)
    }

    /// The further queues of a multi-queue TUN device, up to `lanes` in all;
    /// none for a single-queue device.
    fn open_queues(tun: &OwnedFd, lanes: usize) -> Result<Vec<OwnedFd>> {
        let Ok((name, flags)) = sys::tun_name_and_flags(tun.as_fd()) else {
            return Ok(Vec::new()); // not a TUN device (tests use /dev/null)
        };
        if flags & libc::IFF_MULTI_QUEUE == 0 {
            return Ok(Vec::new());
        }
        // IFF_PERSIST is reported, not requested.
        let flags = flags & !libc::IFF_PERSIST;
        (1..lanes)
            .map(|_| sys::tun_open_queue(&name, flags).map_err(DatapathError::from))
            .collect()
    }

    /// A data plane whose inside is a userspace stack (inside.rs): there is
    /// no TUN device, and the lanes serve only their sockets; the stack
    /// sends through `sender()`.
    pub fn with_stack(sink: Arc<dyn PacketSink>, mtu: usize) -> Result<Self> {
        Self::with_inside(Inside::Stack(sink), mtu, false, false)
    }

    fn with_inside(inside: Inside, mtu: usize, vnet_hdr: bool, udp_offload: bool) -> Result<Self> {
        let scaling = scaling::get();
        let events = EventQueue::new()?;
        for message in &scaling.notices {
            events.push(Event::Notice {
                message: message.clone(),
            });
        }
        Ok(Self {
            shared: Arc::new(Shared {
                peers: RwLock::new(HashMap::new()),
                by_key: RwLock::new(HashMap::new()),
                indices: RwLock::new(IndexTable::default()),
                allowed: RwLock::new(AllowedIps::new()),
                handshakes: Handshakes::new()?,
                placeholder: Arc::new(Identity::new(PrivateKey::generate())),
                events,
                mtu: AtomicUsize::new(mtu),
                inside,
                sockets: RwLock::new(Sockets::default()),
                counters: DeviceCounters::default(),
                hold_unreachable: AtomicBool::new(false),
                vnet_hdr,
                udp_offload: vnet_hdr && udp_offload,
                pipeline: Pipeline::new(scaling.workers),
            }),
            threads: Mutex::new(Threads::default()),
        })
    }

    /// Starts the handshake thread, the crypto workers and the lanes.
    pub fn start(&self) -> Result<()> {
        let mut threads = lock(&self.threads);
        if threads.handshake.is_none() {
            let shared = self.shared.clone();
            threads.handshake = Some(Worker::spawn("wgpy-handshake", move |stop, faults| {
                handshake::handshake_loop(&shared, stop, faults)
            })?);
            threads.crypto = Some(self.shared.pipeline.start("wgpy-crypto")?);
            self.start_lanes(&mut threads)?;
        }
        Ok(())
    }

    /// Stops every thread and waits for them: the lanes first, so the
    /// workers finish every batch the lanes handed over.
    pub fn stop(&self) {
        let mut threads = lock(&self.threads);
        for w in threads.lanes.drain(..) {
            w.stop();
        }
        if let Some(crypto) = threads.crypto.take() {
            crypto.stop();
        }
        if let Some(w) = threads.handshake.take() {
            w.stop();
        }
    }

    /// Replaces the UDP sockets (copies of the caller's descriptors, in
    /// lane order within each family); running lanes restart with them.
    pub fn set_sockets(&self, fds: &[RawFd]) -> Result<()> {
        let mut new = Sockets::default();
        for &fd in fds {
            let (family, sock) = self.udp_socket(fd)?;
            if family == libc::AF_INET {
                new.v4.push(sock);
            } else {
                new.v6.push(sock);
            }
        }
        let mut threads = lock(&self.threads);
        let running = threads.handshake.is_some();
        for w in threads.lanes.drain(..) {
            w.stop();
        }
        *write(&self.shared.sockets) = new;
        if running {
            self.start_lanes(&mut threads)?;
        }
        Ok(())
    }

    /// One lane per TUN queue or per socket of a family, whichever are more.
    fn start_lanes(&self, threads: &mut Threads) -> Result<()> {
        let queues = self.shared.inside.tun_queues();
        let lanes = {
            let sockets = read(&self.shared.sockets);
            let count = queues.len().max(sockets.v4.len()).max(sockets.v6.len());
            (0..count)
                .map(|i| Lane {
                    index: i,
                    tun: queues.get(i).map(|q| q.as_raw_fd()),
                    sockets: sockets
                        .v4
                        .get(i)
                        .into_iter()
                        .chain(sockets.v6.get(i))
                        .cloned()
                        .collect(),
                })
                .collect::<Vec<_>>()
        };
        let count = lanes.len();
        for lane in lanes {
            let shared = self.shared.clone();
            threads.lanes.push(Worker::spawn(
                &format!("wgpy-lane{}", lane.index),
                move |stop, faults| lanes::lane_loop(&shared, lane, count, stop, faults),
            )?);
        }
        Ok(())
    }

    fn udp_socket(&self, fd: RawFd) -> Result<(libc::c_int, Arc<UdpSocket>)> {
        let owned = sys::dup(fd)?;
        let family = sys::socket_family(owned.as_fd())?;
        match family {
            libc::AF_INET => {
                sys::set_int_opt(owned.as_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?
            }
            libc::AF_INET6 => {
                sys::set_int_opt(owned.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?
            }
            other => {
                return Err(DatapathError::InvalidArgument(format!(
                    "not an IP socket (family {other})"
                )))
            }
        }
        // Coalesced receive (UDP GRO) is an optimisation: without it every
        // datagram simply arrives on its own.
        let gro = sys::set_int_opt(owned.as_fd(), libc::SOL_UDP, sys::UDP_GRO, 1).is_ok();
        if !gro {
            self.shared.events.push(Event::Notice {
                message: "UDP GRO refused by the kernel; receiving datagrams one by one".into(),
            });
        }
        let sock = UdpSocket {
            fd: owned,
            gso: AtomicBool::new(true),
            gro,
        };
        Ok((family, Arc::new(sock)))
    }

    /// How a userspace stack inside sends packets into the tunnel.
    pub fn sender(&self) -> InsideSender {
        InsideSender::new(self.shared.clone())
    }

    /// Crypto pipeline workers sealing and opening beside the lanes.
    pub fn crypto_helpers(&self) -> usize {
        self.shared.pipeline.workers()
    }

    /// The lanes: TUN queues, or sockets per family, whichever are more.
    pub fn queues(&self) -> usize {
        let sockets = read(&self.shared.sockets);
        let queues = self.shared.inside.tun_queues().len();
        queues.max(sockets.v4.len()).max(sockets.v6.len()).max(1)
    }

    /// The interface's MTU, which padding never exceeds (the control plane
    /// follows the interface).
    pub fn set_mtu(&self, mtu: usize) {
        self.shared.mtu.store(mtu, Ordering::Relaxed);
    }

    pub fn mtu(&self) -> usize {
        self.shared.mtu.load(Ordering::Relaxed)
    }

    pub fn event_fd(&self) -> RawFd {
        self.shared.events.fd()
    }

    /// Up to `max` events; taking a peer's event lets the next one be queued.
    pub fn take_events(&self, max: usize) -> Vec<Event> {
        let events = self.shared.events.take(max);
        for e in &events {
            if let Event::Peer(p) = e {
                p.notification_taken();
            }
        }
        events
    }

    pub fn stats(&self) -> DeviceStats {
        let shared = &self.shared;
        DeviceStats {
            indices: read(&shared.indices).len() as u64,
            handshake_queue: shared.handshakes.queue_len() as u64,
            under_load: shared.handshakes.under_load(),
            ..shared.counters.snapshot()
        }
    }

    // --- identity and peers ---------------------------------------------------------

    /// Our static key (None: none). Every peer's handshake in progress is
    /// forgotten and its keypairs stop sending (kernel
    /// `wg_noise_expire_current_peer_keypairs`), so the next initiation may
    /// go at once; each peer's replay state is kept. Staged packets then
    /// start handshakes under the new key.
    pub fn set_private_key(&self, key: Option<PrivateKey>) {
        let shared = &self.shared;
        shared
            .handshakes
            .set_identity(key.map(|k| Arc::new(DeviceIdentity::new(k))));
        let identity = shared.peer_identity();
        for peer in shared.all_peers() {
            let pending = {
                let mut hs = peer.handshake();
                let pending = hs.pending_index();
                hs.set_identity(identity.clone());
                pending
            };
            write(&shared.indices).free(pending);
            peer.keypairs().expire_sending();
            peer.reset_handshake_rate();
            handshake::request_flush(shared, &peer);
        }
    }

    pub fn add_peer(&self, id: PeerId, key: PublicKey, psk: Option<PresharedKey>) -> Result<()> {
        let shared = &self.shared;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let handshake = Handshake::new(shared.peer_identity(), key, psk, clock);
        let mut peers = write(&shared.peers);
        let mut by_key = write(&shared.by_key);
        if peers.contains_key(&id) {
            return Err(DatapathError::PeerExists(id));
        }
        if by_key.contains_key(&key) {
            return Err(DatapathError::DuplicateKey(key.to_base64()));
        }
        let peer = Arc::new(Peer::new(id, handshake));
        by_key.insert(key, peer.clone());
        peers.insert(id, peer);
        Ok(())
    }

    /// Forgets a peer: its allowed IPs, handshake, keypairs, indices, packets.
    pub fn remove_peer(&self, id: PeerId) -> Result<()> {
        let shared = &self.shared;
        let peer = write(&shared.peers)
            .remove(&id)
            .ok_or(DatapathError::UnknownPeer(id))?;
        write(&shared.by_key).remove(peer.public_key());
        write(&shared.allowed).remove_peer(id);
        self.zero_key_material(&peer);
        peer.staged().take();
        Ok(())
    }

    /// Takes effect at the next handshake, as in the kernel.
    pub fn set_preshared_key(&self, id: PeerId, psk: Option<PresharedKey>) -> Result<()> {
        self.shared.peer(id)?.handshake().set_preshared_key(psk);
        Ok(())
    }

    /// The configured endpoint (None: none); no source address is known for it yet.
    pub fn set_endpoint(&self, id: PeerId, addr: Option<SocketAddr>) -> Result<()> {
        self.shared.peer(id)?.endpoint().set(addr);
        Ok(())
    }

    // --- what the timers ask for -----------------------------------------------------

    /// Sends a keepalive, or stages one and starts a handshake (kernel
    /// `wg_packet_send_keepalive`), on the handshake thread.
    pub fn send_keepalive(&self, id: PeerId) -> Result<()> {
        let peer = self.shared.peer(id)?;
        peer.staged().stage_keepalive();
        handshake::request_flush(&self.shared, &peer);
        Ok(())
    }

    /// Sends what is staged, or starts a handshake for it (kernel
    /// `wg_packet_send_staged_packets`, after every configuration change).
    pub fn send_staged(&self, id: PeerId) -> Result<()> {
        let peer = self.shared.peer(id)?;
        handshake::request_flush(&self.shared, &peer);
        Ok(())
    }

    /// Asks for an initiation (`retry`: the retransmit timer's, which keeps
    /// the retry count); rate-limited to one per REKEY_TIMEOUT.
    pub fn request_handshake(&self, id: PeerId, retry: bool) -> Result<()> {
        let peer = self.shared.peer(id)?;
        handshake::request_initiation(&self.shared, &peer, retry);
        Ok(())
    }

    /// Forgets the sticky source address (kernel: on handshake retries).
    pub fn clear_endpoint_source(&self, id: PeerId) -> Result<()> {
        self.shared.peer(id)?.endpoint().clear_source();
        Ok(())
    }

    /// Drops the staged packets (the handshake was given up); returns how many.
    pub fn purge_staged(&self, id: PeerId) -> Result<usize> {
        Ok(self.shared.peer(id)?.staged().take().len())
    }

    /// Erases the handshake state and all keypairs (kernel
    /// `wg_queued_expired_zero_key_material`).
    pub fn erase_keys(&self, id: PeerId) -> Result<()> {
        let peer = self.shared.peer(id)?;
        self.zero_key_material(&peer);
        Ok(())
    }

    fn zero_key_material(&self, peer: &Peer) {
        self.shared.clear_handshake(peer);
        let dropped = peer.keypairs().clear();
        write(&self.shared.indices).free(dropped);
    }

    /// The control plane stops (false) or resumes (true) reading the peer's
    /// activity on its own; while it does not, the next packet notifies it.
    pub fn watch_activity(&self, id: PeerId, watching: bool) -> Result<()> {
        let peer = self.shared.peer(id)?;
        if watching {
            peer.activity().watch();
        } else {
            peer.activity().unwatch();
        }
        Ok(())
    }

    pub fn peer_state(&self, id: PeerId) -> Result<PeerSnapshot> {
        let peer = self.shared.peer(id)?;
        Ok(PeerSnapshot {
            activity: peer.activity().snapshot(),
            endpoint: peer.endpoint().get(),
            source_pinned: peer.endpoint().is_pinned(),
            held: peer.staged().is_held(),
            staged: peer.staged().len(),
            can_send: peer.keypairs().sending(monotonic_now()).is_some(),
        })
    }

    // --- handover ------------------------------------------------------------------

    /// Whether packets of peers with no path are held (staged) rather than
    /// dropped; turning it off releases every held peer.
    pub fn set_hold_unreachable(&self, on: bool) {
        let shared = &self.shared;
        shared.hold_unreachable.store(on, Ordering::Relaxed);
        if !on {
            for peer in shared.all_peers() {
                if peer.staged().release() {
                    handshake::request_flush(shared, &peer);
                }
            }
        }
    }

    /// Holds the peer's packets (no path to it); true if it was not held.
    pub fn hold(&self, id: PeerId) -> Result<bool> {
        Ok(self.shared.peer(id)?.staged().hold())
    }

    /// Stops holding the peer's packets and sends what is staged (on the
    /// handshake thread); returns whether it was held. Initiations made
    /// while it was held never left, so the next one may go at once.
    pub fn release(&self, id: PeerId) -> Result<bool> {
        let peer = self.shared.peer(id)?;
        let was_held = peer.staged().release();
        if was_held {
            peer.reset_handshake_rate();
        }
        handshake::request_flush(&self.shared, &peer);
        Ok(was_held)
    }

    /// Sends from `src` until the peer answers at it, whatever address its
    /// packets still arrive at (endpoint.rs); false if it has no endpoint.
    pub fn pin_source(&self, id: PeerId, src: Source) -> Result<bool> {
        Ok(self.shared.peer(id)?.endpoint().pin(src))
    }

    // --- allowed IPs -------------------------------------------------------------------

    /// Routes `addr/cidr` to `id` (host bits are ignored); another peer's
    /// prefix moves to this one.
    pub fn allowed_ip_insert(&self, addr: IpAddr, cidr: u8, id: PeerId) -> Result<()> {
        self.shared.peer(id)?;
        write(&self.shared.allowed)
            .insert(addr, cidr, id)
            .map_err(|e| DatapathError::InvalidArgument(e.to_string()))
    }

    /// Removes a prefix; with `id`, only if that peer owns it.
    pub fn allowed_ip_remove(&self, addr: IpAddr, cidr: u8, id: Option<PeerId>) -> bool {
        let mut table = write(&self.shared.allowed);
        match id {
            Some(p) => table.remove_for(addr, cidr, p),
            None => table.remove(addr, cidr).is_some(),
        }
    }

    pub fn allowed_ips_remove_peer(&self, id: PeerId) -> usize {
        write(&self.shared.allowed).remove_peer(id)
    }

    pub fn allowed_ip_lookup(&self, addr: IpAddr) -> Option<PeerId> {
        read(&self.shared.allowed).lookup(addr)
    }

    pub fn allowed_ips(&self, id: PeerId) -> Vec<(IpAddr, u8)> {
        read(&self.shared.allowed).entries(id)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A data plane on /dev/null as its "TUN device", with no threads.
    pub(crate) fn datapath() -> (Datapath, std::fs::File) {
        let null = std::fs::File::open("/dev/null").expect("open /dev/null");
        let dp = Datapath::new(null.as_raw_fd(), 1420, false, false).expect("datapath");
        (dp, null)
    }
}
