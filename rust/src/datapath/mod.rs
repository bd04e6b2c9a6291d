//! The data plane: moves packets between the TUN device and the UDP sockets
//! in native threads, never calling into Python per packet.
//!
//! - TUN -> longest-prefix match on the destination -> the peer's current
//!   keypair -> UDP to its endpoint (from its sticky source address). No
//!   usable keypair: stage the packets and ask for a handshake.
//! - UDP -> handshake messages to the control plane; transport messages ->
//!   keypair by receiver index -> decrypt (replay window after the tag) ->
//!   roam the endpoint -> key confirmation -> the inner source must route
//!   back to the same peer (longest-prefix match) -> TUN.
//! - A send from a vanished source address (ENETUNREACH, EINVAL,
//!   EADDRNOTAVAIL) forgets that source and is retried at once from the
//!   routing table's choice.
//! - When no path exists at all, a peer's packets can be held (staged) until
//!   the control plane sees a path return (hold.rs); after a path change the
//!   control plane can pin the new source address (pin.rs).
//! - The control plane owns every decision: peers, keypairs, endpoints and
//!   allowed IPs are installed through this API, and it learns what happened
//!   through the event queue and the per-peer activity counters.

mod events;
mod hold;
pub mod offload;
mod peer;
mod pin;
pub mod pool;
mod rx;
mod sys;
mod tx;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

pub use events::{Event, HandshakeReason, MAX_QUEUED_HANDSHAKES};
pub use peer::{ActivitySnapshot, Endpoint, MAX_STAGED};

use crate::allowedips::AllowedIps;
use crate::clock::monotonic_now;
use crate::session::Keypair;
use events::EventQueue;
use peer::Peer;
use sys::EventFd;

pub type PeerId = u64;

/// Local receiver index -> the keypair it names and its peer.
type IndexTable = HashMap<u32, (Arc<Peer>, Arc<Keypair>)>;

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

#[derive(Default)]
pub struct DeviceCounters {
    pub rx_dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub tx_no_route: AtomicU64,
}

/// A UDP socket of the device and whether UDP GSO still works on it.
pub(crate) struct UdpSocket {
    fd: OwnedFd,
    gso: AtomicBool,
    gro: bool,
}

#[derive(Default)]
struct Sockets {
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
}

pub(crate) struct Shared {
    peers: RwLock<HashMap<PeerId, Arc<Peer>>>,
    indices: RwLock<IndexTable>,
    allowed: RwLock<AllowedIps<PeerId>>,
    events: EventQueue,
    mtu: AtomicUsize,
    tun: OwnedFd,
    sockets: RwLock<Sockets>,
    counters: DeviceCounters,
    vnet_hdr: bool,
    /// The TUN device takes UDP GSO writes (TUN_F_USO4/6 accepted).
    udp_offload: bool,
    /// Hold a peer's packets when no path to it exists (hold.rs).
    hold_unreachable: AtomicBool,
    /// Helper threads for sealing and opening large batches (pool.rs).
    pool: pool::CryptoPool,
}

struct Worker {
    stop: Arc<EventFd>,
    handle: JoinHandle<()>,
}

impl Worker {
    fn spawn(name: &str, f: impl FnOnce(Arc<EventFd>) + Send + 'static) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new()?);
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(s))?;
        Ok(Self { stop, handle })
    }

    fn stop(self) {
        self.stop.signal();
        let _ = self.handle.join();
    }
}

pub struct Datapath {
    shared: Arc<Shared>,
    tun_worker: Mutex<Option<Worker>>,
    rx_workers: Mutex<Vec<Worker>>,
}

fn lock_err() -> io::Error {
    io::Error::other("data plane lock poisoned")
}

impl Datapath {
    /// Takes a copy of the TUN descriptor (the caller keeps its own).
    /// `vnet_hdr`: the TUN device was opened with IFF_VNET_HDR, so every
    /// read and write carries a virtio-net header (and reads may be GSO
    /// packets). `udp_offload`: the device also accepted UDP segmentation
    /// offload (TUN_F_USO4/6), so datagrams may be coalesced on writes.
    pub fn new(tun_fd: RawFd, mtu: usize, vnet_hdr: bool, udp_offload: bool) -> io::Result<Self> {
        let tun = sys::dup(tun_fd)?;
        sys::set_nonblocking(tun.as_fd())?;
        let (pool, notice) = pool::CryptoPool::from_env("wgpy-crypto");
        let events = EventQueue::new()?;
        if let Some(message) = notice {
            events.push(Event::Notice { message });
        }
        Ok(Self {
            shared: Arc::new(Shared {
                peers: RwLock::new(HashMap::new()),
                indices: RwLock::new(HashMap::new()),
                allowed: RwLock::new(AllowedIps::new()),
                events,
                mtu: AtomicUsize::new(mtu),
                tun,
                sockets: RwLock::new(Sockets::default()),
                counters: DeviceCounters::default(),
                hold_unreachable: AtomicBool::new(false),
                vnet_hdr,
                udp_offload: vnet_hdr && udp_offload,
                pool,
            }),
            tun_worker: Mutex::new(None),
            rx_workers: Mutex::new(Vec::new()),
        })
    }

    /// Starts moving packets from the TUN device.
    pub fn start(&self) -> io::Result<()> {
        let mut w = self.tun_worker.lock().map_err(|_| lock_err())?;
        if w.is_none() {
            let shared = self.shared.clone();
            *w = Some(Worker::spawn("wgpy-tun", move |stop| {
                tx::tun_loop(&shared, &stop)
            })?);
        }
        Ok(())
    }

    /// Stops every thread and waits for them.
    pub fn stop(&self) {
        if let Ok(mut w) = self.tun_worker.lock() {
            if let Some(w) = w.take() {
                w.stop();
            }
        }
        if let Ok(mut ws) = self.rx_workers.lock() {
            for w in ws.drain(..) {
                w.stop();
            }
        }
    }

    /// Replaces the UDP sockets (copies of the caller's descriptors): the
    /// receive threads of the old ones stop first.
    pub fn set_sockets(&self, fds: &[RawFd]) -> io::Result<()> {
        let mut new = Sockets::default();
        for &fd in fds {
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
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("not an IP socket (family {other})"),
                    ))
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
            let sock = Arc::new(UdpSocket {
                fd: owned,
                gso: AtomicBool::new(true),
                gro,
            });
            if family == libc::AF_INET {
                new.v4 = Some(sock);
            } else {
                new.v6 = Some(sock);
            }
        }
        let mut workers = self.rx_workers.lock().map_err(|_| lock_err())?;
        for w in workers.drain(..) {
            w.stop();
        }
        let to_start: Vec<Arc<UdpSocket>> = new.v4.iter().chain(new.v6.iter()).cloned().collect();
        *self.shared.sockets.write().map_err(|_| lock_err())? = new;
        for (i, sock) in to_start.into_iter().enumerate() {
            let shared = self.shared.clone();
            workers.push(Worker::spawn(&format!("wgpy-udp{i}"), move |stop| {
                rx::udp_loop(&shared, &sock, &stop)
            })?);
        }
        Ok(())
    }

    /// Helper threads sealing and opening large batches besides the I/O threads.
    pub fn crypto_helpers(&self) -> usize {
        self.shared.pool.helpers()
    }

    pub fn set_mtu(&self, mtu: usize) {
        self.shared.mtu.store(mtu, Ordering::Relaxed);
    }

    pub fn mtu(&self) -> usize {
        self.shared.mtu.load(Ordering::Relaxed)
    }

    pub fn event_fd(&self) -> RawFd {
        self.shared.events.fd()
    }

    pub fn take_events(&self, max: usize) -> Vec<Event> {
        self.shared.events.take(max)
    }

    pub fn handshake_backlog(&self) -> usize {
        self.shared.events.handshake_backlog()
    }

    pub fn counters(&self) -> &DeviceCounters {
        &self.shared.counters
    }

    fn peer(&self, id: PeerId) -> io::Result<Arc<Peer>> {
        self.shared
            .peers
            .read()
            .map_err(|_| lock_err())?
            .get(&id)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no peer {id}")))
    }

    pub fn add_peer(&self, id: PeerId) -> io::Result<()> {
        self.shared
            .peers
            .write()
            .map_err(|_| lock_err())?
            .entry(id)
            .or_insert_with(|| Arc::new(Peer::new(id)));
        Ok(())
    }

    /// Forgets a peer: its allowed IPs, keypairs, staged packets.
    pub fn remove_peer(&self, id: PeerId) -> io::Result<Vec<u32>> {
        let Some(peer) = self
            .shared
            .peers
            .write()
            .map_err(|_| lock_err())?
            .remove(&id)
        else {
            return Ok(Vec::new());
        };
        self.shared
            .allowed
            .write()
            .map_err(|_| lock_err())?
            .remove_peer(id);
        let dropped = peer.slots.write().map_err(|_| lock_err())?.clear();
        self.forget_indices(&dropped)?;
        peer.take_staged();
        Ok(dropped)
    }

    fn forget_indices(&self, indices: &[u32]) -> io::Result<()> {
        if !indices.is_empty() {
            let mut map = self.shared.indices.write().map_err(|_| lock_err())?;
            for i in indices {
                map.remove(i);
            }
        }
        Ok(())
    }

    /// Sets the peer's endpoint; `src` is the local address to send from
    /// (the one the peer's packet arrived on), if known.
    pub fn set_endpoint(
        &self,
        id: PeerId,
        addr: Option<SocketAddr>,
        src: Option<(IpAddr, u32)>,
    ) -> io::Result<()> {
        let peer = self.peer(id)?;
        *peer.endpoint.write().map_err(|_| lock_err())? = addr.map(|addr| Endpoint { addr, src });
        pin::unpin(&peer);
        Ok(())
    }

    pub fn endpoint(&self, id: PeerId) -> io::Result<Option<Endpoint>> {
        Ok(self.peer(id)?.endpoint())
    }

    /// Forgets the sticky source address (kernel: on handshake retries).
    pub fn clear_endpoint_source(&self, id: PeerId) -> io::Result<()> {
        let peer = self.peer(id)?;
        if let Some(e) = peer.endpoint.write().map_err(|_| lock_err())?.as_mut() {
            e.src = None;
        }
        Ok(())
    }

    /// Installs a keypair from a completed handshake; returns the local
    /// indices of the keypairs it displaced (now free).
    pub fn install_keypair(&self, id: PeerId, kp: Arc<Keypair>) -> io::Result<Vec<u32>> {
        let peer = self.peer(id)?;
        self.shared
            .indices
            .write()
            .map_err(|_| lock_err())?
            .insert(kp.local_index, (peer.clone(), kp.clone()));
        let dropped = peer.slots.write().map_err(|_| lock_err())?.install(kp);
        self.forget_indices(&dropped)?;
        Ok(dropped)
    }

    /// Stops current and next keypairs from sending (private key changed).
    pub fn expire_keypairs(&self, id: PeerId) -> io::Result<()> {
        let peer = self.peer(id)?;
        let slots = peer.slots.read().map_err(|_| lock_err())?;
        for k in slots.current.iter().chain(slots.next.iter()) {
            k.invalidate_sending();
        }
        Ok(())
    }

    /// Drops all three keypairs (zero_key_material); returns their indices.
    pub fn clear_keypairs(&self, id: PeerId) -> io::Result<Vec<u32>> {
        let peer = self.peer(id)?;
        let dropped = peer.slots.write().map_err(|_| lock_err())?.clear();
        self.forget_indices(&dropped)?;
        Ok(dropped)
    }

    /// Whether the peer has a keypair that can send now.
    pub fn has_sending_keypair(&self, id: PeerId) -> io::Result<bool> {
        Ok(self.peer(id)?.sending_keypair(monotonic_now()).is_some())
    }

    /// Sends the staged packets if a keypair allows; returns how many went.
    pub fn flush_staged(&self, id: PeerId) -> io::Result<usize> {
        let peer = self.peer(id)?;
        Ok(tx::flush_staged(&self.shared, &peer))
    }

    pub fn purge_staged(&self, id: PeerId) -> io::Result<usize> {
        Ok(self.peer(id)?.take_staged().len())
    }

    pub fn staged_count(&self, id: PeerId) -> io::Result<usize> {
        Ok(self.peer(id)?.staged.lock().map_err(|_| lock_err())?.len())
    }

    /// Sends a keepalive, or stages one and asks for a handshake when no
    /// keypair can send (kernel `wg_packet_send_keepalive`).
    pub fn send_keepalive(&self, id: PeerId) -> io::Result<()> {
        let peer = self.peer(id)?;
        tx::send_keepalive(&self.shared, &peer);
        Ok(())
    }

    /// Sends a handshake or cookie message to the peer's endpoint.
    pub fn send_handshake(&self, id: PeerId, message: &[u8]) -> io::Result<()> {
        let peer = self.peer(id)?;
        let ep = peer
            .endpoint()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "peer has no endpoint"))?;
        tx::send_to_endpoint(&self.shared, &peer, ep, &[message])?;
        peer.activity.sent(now_ns(), message.len() as u64, false);
        Ok(())
    }

    /// Sends a datagram to an address that is not (yet) a peer: cookie replies.
    pub fn send_to(
        &self,
        dst: SocketAddr,
        src: Option<(IpAddr, u32)>,
        message: &[u8],
    ) -> io::Result<()> {
        tx::send_datagrams(&self.shared, dst, src, &[message]).map_err(|e| e.error)
    }

    /// Records an authenticated handshake message received from the peer.
    pub fn note_handshake_received(&self, id: PeerId, bytes: usize) -> io::Result<()> {
        self.peer(id)?
            .activity
            .received(now_ns(), bytes as u64, false);
        Ok(())
    }

    /// Lets the data plane ask for a handshake again.
    pub fn handshake_request_done(&self, id: PeerId) -> io::Result<()> {
        self.peer(id)?.handshake_request_done();
        Ok(())
    }

    /// Whether packets of peers with no path are held (staged) rather than
    /// dropped; turning it off releases every held peer.
    pub fn set_hold_unreachable(&self, on: bool) {
        self.shared.hold_unreachable.store(on, Ordering::Relaxed);
        if !on {
            let peers: Vec<Arc<Peer>> = match self.shared.peers.read() {
                Ok(p) => p.values().cloned().collect(),
                Err(_) => return,
            };
            for peer in peers {
                if hold::release(&peer) {
                    tx::flush_staged(&self.shared, &peer);
                }
            }
        }
    }

    /// Holds the peer's packets (no path to it); true if it was not held.
    pub fn hold(&self, id: PeerId) -> io::Result<bool> {
        let peer = self.peer(id)?;
        Ok(hold::hold(&peer))
    }

    /// Stops holding the peer's packets and sends what is staged (if a
    /// keypair allows); returns whether it was held and how many went.
    pub fn release(&self, id: PeerId) -> io::Result<(bool, usize)> {
        let peer = self.peer(id)?;
        let was_held = hold::release(&peer);
        Ok((was_held, tx::flush_staged(&self.shared, &peer)))
    }

    /// Sends from `src` until the peer answers at it, whatever address its
    /// packets still arrive at (pin.rs); false if the peer has no endpoint.
    pub fn pin_source(&self, id: PeerId, src: (IpAddr, u32)) -> io::Result<bool> {
        let peer = self.peer(id)?;
        Ok(pin::pin(&peer, src))
    }

    pub fn source_pinned(&self, id: PeerId) -> io::Result<bool> {
        let peer = self.peer(id)?;
        Ok(pin::is_pinned(&peer))
    }

    pub fn is_held(&self, id: PeerId) -> io::Result<bool> {
        let peer = self.peer(id)?;
        Ok(hold::is_held(&peer))
    }

    pub fn activity(&self, id: PeerId) -> io::Result<ActivitySnapshot> {
        Ok(self.peer(id)?.activity.snapshot())
    }

    /// The control plane stops (false) or resumes (true) reading the peer's
    /// activity on its own; while it does not, the next packet wakes it.
    pub fn watch_activity(&self, id: PeerId, watching: bool) -> io::Result<()> {
        let peer = self.peer(id)?;
        if watching {
            peer.activity.watch();
        } else {
            peer.activity.unwatch();
        }
        Ok(())
    }

    pub fn allowed_ips(&self) -> &RwLock<AllowedIps<PeerId>> {
        &self.shared.allowed
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn socket_for(&self, dst: &SocketAddr) -> Option<Arc<UdpSocket>> {
        let s = self.sockets.read().ok()?;
        match dst {
            SocketAddr::V4(_) => s.v4.clone(),
            SocketAddr::V6(_) => s.v6.clone(),
        }
    }

    fn tun_fd(&self) -> RawFd {
        self.tun.as_raw_fd()
    }
}
