//! The stack's TCP connections, from connect or accept to the last segment.
//!
//! - Outgoing (`connect`): a smoltcp socket from an ephemeral port; the
//!   owner hears `Connected` or `Failed` (refused: the far side reset it;
//!   timed out: no answer within the owner's deadline). The local socket
//!   may be given at connect time or attached once connected.
//! - Incoming (`listen`): smoltcp gives one connection per listening
//!   socket, so before each batch of packets is processed every SYN to a
//!   listened port gets a fresh listening socket (as many as the port's
//!   backlog allows; past it the SYN is answered with a reset). An
//!   established one is reported (`Accepted`) and waits for a local socket.
//! - Open: spliced to its local socket (flow.rs).
//! - A flow that ended is reaped after the stack's next transmission (so a
//!   reset or FIN it queued leaves first). TIME-WAIT is not kept: its port
//!   goes back to the pool at once, which allocates ports in turn.
//! - Every socket gets a retransmission timeout (USER_TIMEOUT): a far side
//!   that vanished ends the flow instead of keeping it forever.
//! - Buffers: the receive buffer is the stack's `tcp_buffer` (the window
//!   offered to the far side); the send buffer is its `tcp_send_buffer`
//!   (DEFAULT_SEND_BUFFER, 64 KiB, unless the embedder says otherwise),
//!   because it bounds the bytes in flight and smoltcp recovers
//!   from a loss only by a retransmission timeout: it has no SACK, and it
//!   never counts duplicate ACKs from Linux receivers, whose ACKs each
//!   update the window. A flight larger than the far end's UDP socket
//!   buffer (wireguard-go: 208 KiB, about 90 datagrams) loses packets in
//!   every burst, and each loss stalls the flow for a timeout (hundreds of
//!   milliseconds while the RTT estimate is young), then resends it all.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{Context, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{CongestionControl, Socket, SocketBuffer, State};
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::events::{EventQueue, StackEvent};
use super::flow::{Pumped, Splice};
use super::poller::Poller;
use super::ports::{Ports, Proto};
use super::{fd, syn};

/// Reset a connection whose data goes unacknowledged this long.
const USER_TIMEOUT: Duration = Duration::from_secs(120);
/// Tokens of TCP flows in the poller are their ids (below UDP_TOKEN).
pub(crate) const UDP_TOKEN: u64 = 1 << 63;

enum Phase {
    Connecting {
        deadline: Instant,
    },
    Listening {
        port: u16,
    },
    /// Established, waiting for a local socket.
    Waiting,
    Open,
    /// Done; removed after the next transmission.
    Finished,
}

struct Flow {
    handle: SocketHandle,
    phase: Phase,
    splice: Option<Splice>,
    /// An ephemeral port to give back (None: a listening port's).
    port: Option<u16>,
    /// The far side, for messages.
    remote: SocketAddr,
    /// The listened port it came in on (None: outgoing).
    accepted_on: Option<u16>,
}

pub(crate) struct Tcp {
    flows: HashMap<u64, Flow>,
    /// Listened ports and their backlogs.
    listeners: HashMap<u16, usize>,
    buffers: Buffers,
}

/// Bytes each connection buffers each way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buffers {
    pub(crate) receive: usize,
    pub(crate) send: usize,
}

/// The default send buffer of each connection (see the module notes: it
/// bounds the bytes in flight). A long path needs more: the flight limits a
/// flow to about this much per round trip (64 KiB over 50 ms: 10 Mbit/s).
pub const DEFAULT_SEND_BUFFER: usize = 64 * 1024;

fn new_socket(buffers: Buffers) -> Socket<'static> {
    let mut sock = Socket::new(
        SocketBuffer::new(vec![0; buffers.receive]),
        SocketBuffer::new(vec![0; buffers.send]),
    );
    sock.set_timeout(Some(USER_TIMEOUT.into()));
    // Nagle would hold the tail of every write for an ACK; the local socket
    // already gives us data in large pieces.
    sock.set_nagle_enabled(false);
    // Without congestion control smoltcp sends a whole buffer at once; the
    // burst overflows UDP socket buffers on the way and, with no SACK, each
    // loss costs a retransmission timeout.
    sock.set_congestion_control(CongestionControl::Cubic);
    sock
}

fn endpoint(addr: SocketAddr) -> IpEndpoint {
    IpEndpoint::new(IpAddress::from(addr.ip()), addr.port())
}

fn socket_addr(e: IpEndpoint) -> SocketAddr {
    SocketAddr::new(e.addr.into(), e.port)
}

impl Tcp {
    pub(crate) fn new(buffers: Buffers) -> Self {
        Self {
            flows: HashMap::new(),
            listeners: HashMap::new(),
            buffers,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    /// Starts an outgoing connection from `port` (already reserved).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn connect(
        &mut self,
        cx: &mut Context,
        sockets: &mut SocketSet<'static>,
        events: &EventQueue,
        ports: &Ports,
        (id, remote, port): (u64, SocketAddr, u16),
        timeout: Duration,
    ) {
        let mut sock = new_socket(self.buffers);
        if let Err(e) = sock.connect(cx, endpoint(remote), port) {
            ports.release(Proto::Tcp, port);
            let reason = format!("cannot connect to {remote}: {e}");
            events.push(StackEvent::Failed {
                id,
                reason,
                timed_out: false,
            });
            return;
        }
        let flow = Flow {
            handle: sockets.add(sock),
            phase: Phase::Connecting {
                deadline: Instant::now() + timeout,
            },
            splice: None,
            port: Some(port),
            remote,
            accepted_on: None,
        };
        self.flows.insert(id, flow);
    }

    /// Gives a flow its local socket, after queueing `prefix` to send first
    /// (at most the send buffer); an unknown or finished flow's socket is
    /// closed with a reset (the connection is gone).
    pub(crate) fn attach(
        &mut self,
        sockets: &mut SocketSet<'static>,
        poller: &Poller,
        (id, local, prefix): (u64, OwnedFd, &[u8]),
    ) {
        let Some(flow) = self.flows.get_mut(&id) else {
            fd::close_with_reset(local);
            return;
        };
        if flow.splice.is_some() || matches!(flow.phase, Phase::Finished | Phase::Listening { .. })
        {
            fd::close_with_reset(local);
            return;
        }
        if poller.add(local.as_raw_fd(), id, true).is_err() {
            fd::close_with_reset(local);
            return;
        }
        if !prefix.is_empty() {
            let sock = sockets.get_mut::<Socket>(flow.handle);
            // Fits: the handle refuses a prefix larger than the send buffer.
            let _ = sock.send_slice(prefix);
        }
        flow.splice = Some(Splice::new(local));
        if matches!(flow.phase, Phase::Waiting) {
            flow.phase = Phase::Open;
        }
    }

    /// Ends a flow at once (a reset to the far side).
    pub(crate) fn abort(&mut self, sockets: &mut SocketSet<'static>, poller: &Poller, id: u64) {
        if let Some(flow) = self.flows.get_mut(&id) {
            sockets.get_mut::<Socket>(flow.handle).abort();
            flow.finish(poller, false);
        }
    }

    pub(crate) fn listen(&mut self, port: u16, backlog: usize) {
        self.listeners.insert(port, backlog.max(1));
    }

    /// Stops listening: the listening sockets go; connections stay.
    pub(crate) fn unlisten(&mut self, sockets: &mut SocketSet<'static>, port: u16) {
        self.listeners.remove(&port);
        for flow in self.flows.values_mut() {
            if matches!(flow.phase, Phase::Listening { port: p } if p == port) {
                sockets.get_mut::<Socket>(flow.handle).abort();
                flow.phase = Phase::Finished;
            }
        }
    }

    /// Marks the readiness the poller reported for flow `id`.
    pub(crate) fn ready(&mut self, id: u64, readable: bool, writable: bool) {
        if let Some(splice) = self.flows.get_mut(&id).and_then(|f| f.splice.as_mut()) {
            splice.readable |= readable;
            splice.writable |= writable;
        }
    }
}

/// What servicing a flow needs besides the flow.
pub(crate) struct Env<'a> {
    pub(crate) events: &'a EventQueue,
    pub(crate) poller: &'a Poller,
    pub(crate) now: Instant,
}

impl Flow {
    /// Ends the flow: the local socket closes (with a reset unless the
    /// connection ended in order) and the flow is reaped later.
    fn finish(&mut self, poller: &Poller, clean: bool) {
        self.phase = Phase::Finished;
        if let Some(splice) = self.splice.take() {
            poller.remove(splice.fd.as_raw_fd());
            if clean {
                drop(splice.fd);
            } else {
                fd::close_with_reset(splice.fd);
            }
        }
    }

    fn connecting(&mut self, id: u64, sock: &mut Socket<'_>, env: &Env<'_>, deadline: Instant) {
        let remote = self.remote;
        match sock.state() {
            State::Established | State::CloseWait => {
                env.events.push(StackEvent::Connected { id });
                self.phase = if self.splice.is_some() {
                    Phase::Open
                } else {
                    Phase::Waiting
                };
            }
            State::Closed => {
                let reason = format!("connection to {remote} refused");
                env.events.push(StackEvent::Failed {
                    id,
                    reason,
                    timed_out: false,
                });
                self.finish(env.poller, false);
            }
            _ if env.now >= deadline => {
                sock.abort();
                let reason =
                    format!("connection to {remote} timed out (no answer through the tunnel)");
                env.events.push(StackEvent::Failed {
                    id,
                    reason,
                    timed_out: true,
                });
                self.finish(env.poller, false);
            }
            _ => {}
        }
    }

    fn listening(&mut self, id: u64, sock: &mut Socket<'_>, env: &Env<'_>, port: u16) {
        if !matches!(sock.state(), State::Established | State::CloseWait) {
            return;
        }
        match (sock.remote_endpoint(), sock.local_endpoint()) {
            (Some(remote), Some(local)) => {
                env.events.push(StackEvent::Accepted {
                    port,
                    id,
                    remote: socket_addr(remote),
                    local: socket_addr(local),
                });
                self.phase = Phase::Waiting;
            }
            _ => {
                sock.abort();
                self.finish(env.poller, false);
            }
        }
    }

    fn open(&mut self, sock: &mut Socket<'_>, poller: &Poller) {
        let Some(splice) = self.splice.as_mut() else {
            return;
        };
        if splice.pump(sock) == Pumped::Finished {
            let clean = splice.ended_cleanly();
            self.finish(poller, clean);
        }
    }
}

impl Tcp {
    /// Creates listening sockets for the SYNs in `packets` (module notes);
    /// drops the SYNs past a port's backlog, as a full accept queue does in
    /// the kernel (the client retries).
    pub(crate) fn prepare_listeners(
        &mut self,
        packets: &mut VecDeque<Vec<u8>>,
        sockets: &mut SocketSet<'static>,
        mut next_id: impl FnMut() -> u64,
    ) {
        if self.listeners.is_empty() {
            return;
        }
        // Per port: idle listening sockets left, and room for new ones.
        let mut budget: HashMap<u16, (usize, usize)> = HashMap::new();
        packets.retain(|p| {
            let Some(port) = syn::syn_port(p).filter(|port| self.listeners.contains_key(port))
            else {
                return true;
            };
            let (idle, room) = budget.entry(port).or_insert_with(|| {
                let (idle, queued) = self.backlog_of(port, sockets);
                (idle, self.listeners[&port].saturating_sub(queued))
            });
            if *idle > 0 {
                *idle -= 1;
                return true;
            }
            if *room == 0 || !self.add_listening(sockets, port, next_id()) {
                return false;
            }
            *room -= 1;
            true
        });
    }

    fn add_listening(&mut self, sockets: &mut SocketSet<'static>, port: u16, id: u64) -> bool {
        let mut sock = new_socket(self.buffers);
        if sock.listen(port).is_err() {
            return false;
        }
        let flow = Flow {
            handle: sockets.add(sock),
            phase: Phase::Listening { port },
            splice: None,
            port: None,
            remote: SocketAddr::from(([0, 0, 0, 0], port)),
            accepted_on: Some(port),
        };
        self.flows.insert(id, flow);
        true
    }

    /// Listening sockets of `port` still idle, and its connections not yet
    /// taken by the owner (listening or waiting).
    fn backlog_of(&self, port: u16, sockets: &SocketSet<'static>) -> (usize, usize) {
        let mut idle = 0;
        let mut queued = 0;
        for flow in self.flows.values().filter(|f| f.accepted_on == Some(port)) {
            match flow.phase {
                Phase::Listening { .. } => {
                    queued += 1;
                    if sockets.get::<Socket>(flow.handle).state() == State::Listen {
                        idle += 1;
                    }
                }
                Phase::Waiting => queued += 1,
                _ => {}
            }
        }
        (idle, queued)
    }

    /// Moves every flow on: reports connections, pumps bytes, ends flows.
    pub(crate) fn service(&mut self, sockets: &mut SocketSet<'static>, env: &Env<'_>) {
        for (&id, flow) in self.flows.iter_mut() {
            let sock = sockets.get_mut::<Socket>(flow.handle);
            match flow.phase {
                Phase::Connecting { deadline } => flow.connecting(id, sock, env, deadline),
                Phase::Listening { port } => flow.listening(id, sock, env, port),
                Phase::Waiting if sock.state() == State::Closed => flow.finish(env.poller, false),
                Phase::Waiting | Phase::Finished | Phase::Open => {}
            }
            if matches!(flow.phase, Phase::Open) {
                flow.open(sock, env.poller);
            }
        }
    }

    /// Removes finished flows whose TCP socket has nothing left to send.
    pub(crate) fn reap(&mut self, sockets: &mut SocketSet<'static>, ports: &Ports) {
        self.flows.retain(|_, flow| {
            if !matches!(flow.phase, Phase::Finished) {
                return true;
            }
            let state = sockets.get::<Socket>(flow.handle).state();
            if !matches!(state, State::Closed | State::TimeWait) {
                return true;
            }
            sockets.remove(flow.handle);
            if let Some(port) = flow.port {
                ports.release(Proto::Tcp, port);
            }
            false
        });
    }

    /// The earliest connect deadline, so the thread wakes to enforce it.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.flows
            .values()
            .filter_map(|f| match f.phase {
                Phase::Connecting { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }
}
