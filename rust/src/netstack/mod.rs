//! A userspace TCP/IP stack (smoltcp) as the inside of a WireGuard device,
//! for rootless use: no TUN device, no privileges. The data plane hands it
//! decrypted packets (inbound.rs, through `datapath::PacketSink`) and it
//! sends through the data plane's own send path (`datapath::InsideSender`):
//! routing, encryption, handshakes and roaming are unchanged.
//!
//! Threads and ownership:
//! - `wgpy-netstack` (stack.rs) owns the smoltcp interface and every
//!   socket, and splices TCP connections and UDP ports to local sockets
//!   (flow.rs, udp.rs): bytes never cross into Python.
//! - The owner (Python) holds a `Netstack` handle: it queues commands
//!   (commands.rs), reserves ports (ports.rs), and reads events
//!   (events.rs) when `event_fd` is readable.
//! - The receive threads only push into the inbound queue and wake the
//!   netstack thread, once per batch.
//!
//! Bounds: the inbound queue (inbound::MAX_QUEUED packets), two smoltcp
//! buffers per TCP connection (`tcp_buffer` bytes to receive,
//! `tcp_send_buffer` to send; a full one closes the TCP window or stops
//! reading the local socket), fixed buffers
//! per UDP port, and every connection has a deadline to connect and a
//! retransmission timeout.

mod commands;
mod device;
mod events;
mod fd;
mod flow;
mod inbound;
mod poller;
mod ports;
mod stack;
mod syn;
mod tcp;
mod udp;
mod wake;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::Duration;

use crate::datapath::thread::Worker;
use crate::datapath::{InsideSender, PacketSink};

pub use events::StackEvent;
pub use tcp::DEFAULT_SEND_BUFFER as DEFAULT_TCP_SEND_BUFFER;
pub use udp::ADDR_LEN as UDP_ADDR_LEN;

use commands::{Command, Commands};
use events::EventQueue;
use inbound::Inbound;
use ports::{Ports, Proto};
use wake::Wake;

const STOP_TOKEN: u64 = 0;
const WAKE_TOKEN: u64 = 1;
/// Flow ids (and poller tokens) start here, past the fixed tokens.
const FIRST_ID: u64 = 16;
/// Smallest and largest TCP buffer accepted (each way, per connection).
const TCP_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 4096..=(16 << 20);

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("invalid stack address: {0}")]
    InvalidAddress(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("port {0} is already in use in the tunnel")]
    PortInUse(u16),
    #[error("no free local port in the tunnel")]
    NoFreePort,
    #[error("the tunnel has no {0} address (add one to Address)")]
    NoAddress(&'static str),
    #[error("the stack is not running")]
    NotRunning,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, StackError>;

/// The stack's addresses (the configuration's `Address`), MTU and buffers.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub addresses: Vec<(IpAddr, u8)>,
    pub mtu: usize,
    /// Bytes each TCP connection buffers to receive (its window).
    pub tcp_buffer: usize,
    /// Bytes each TCP connection buffers to send: its most in flight
    /// (tcp::DEFAULT_SEND_BUFFER, and why, in tcp.rs).
    pub tcp_send_buffer: usize,
}

/// Counters of the stack, for `stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StackStats {
    pub tcp_flows: usize,
    pub inbound_dropped: u64,
}

pub(crate) struct Shared {
    config: StackConfig,
    wake: Arc<Wake>,
    inbound: Arc<Inbound>,
    commands: Commands,
    events: EventQueue,
    ports: Ports,
    next_id: AtomicU64,
    flows: AtomicUsize,
    /// Set once by `stop`: later commands would wait for a thread that is gone.
    stopped: AtomicBool,
}

/// The owner's handle on a stack (see the module notes).
pub struct Netstack {
    shared: Arc<Shared>,
    worker: Mutex<Option<Worker>>,
}

fn check_config(config: &StackConfig) -> Result<()> {
    let mut families = [false, false];
    for &(addr, prefix) in &config.addresses {
        let (family, max) = if addr.is_ipv4() { (0, 32) } else { (1, 128) };
        let bad = addr.is_unspecified() || addr.is_multicast() || prefix > max;
        if bad || std::mem::replace(&mut families[family], true) {
            let why = if bad {
                "not a unicast address/prefix"
            } else {
                "one per family at most"
            };
            return Err(StackError::InvalidAddress(format!(
                "{addr}/{prefix} ({why})"
            )));
        }
    }
    for (name, value) in [
        ("tcp_buffer", config.tcp_buffer),
        ("tcp_send_buffer", config.tcp_send_buffer),
    ] {
        if !TCP_BUFFER_RANGE.contains(&value) {
            return Err(StackError::InvalidArgument(format!(
                "{name} must be within {TCP_BUFFER_RANGE:?}"
            )));
        }
    }
    if !(576..=65535).contains(&config.mtu) {
        return Err(StackError::InvalidArgument(
            "mtu must be within 576..=65535".into(),
        ));
    }
    Ok(())
}

fn dup(fd: RawFd) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(StackError::InvalidArgument(format!(
            "bad file descriptor {fd}"
        )));
    }
    // SAFETY: the caller's descriptor stays open for this call (the bindings
    // hold the Python object that owns it); we only duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned()?;
    fd::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&owned))?;
    Ok(owned)
}

impl Netstack {
    pub fn new(config: StackConfig) -> Result<Self> {
        check_config(&config)?;
        let wake = Arc::new(Wake::new()?);
        let shared = Shared {
            config,
            inbound: Arc::new(Inbound::new(wake.clone())),
            wake,
            commands: Commands::default(),
            events: EventQueue::new()?,
            ports: Ports::default(),
            next_id: AtomicU64::new(FIRST_ID),
            flows: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        };
        Ok(Self {
            shared: Arc::new(shared),
            worker: Mutex::new(None),
        })
    }

    /// Where the data plane's receive threads put decrypted packets.
    pub fn sink(&self) -> Arc<dyn PacketSink> {
        self.shared.inbound.clone()
    }

    /// Starts the netstack thread, sending through `sender`.
    pub fn start(&self, sender: InsideSender) -> Result<()> {
        let mut worker = lock(&self.worker);
        if worker.is_some() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        *worker = Some(Worker::spawn(
            "wgpy-netstack",
            move |stop, _faults| match stack::Stack::new(shared, sender, stop.raw()) {
                Ok(mut stack) => {
                    let _ = tx.send(Ok(()));
                    stack.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
        )?);
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StackError::NotRunning),
        }
    }

    /// Stops the thread; every connection and local socket it held closes.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        let worker = lock(&self.worker).take();
        if let Some(w) = worker {
            w.stop();
        }
    }

    /// Commands are taken before `start` (queued for it), refused after `stop`.
    fn accepting(&self) -> Result<()> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(StackError::NotRunning);
        }
        Ok(())
    }

    fn command(&self, c: Command) {
        self.shared.commands.push(c);
        self.shared.wake.wake();
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn has_family(&self, ip: &IpAddr) -> Result<()> {
        let same = |a: &IpAddr| a.is_ipv4() == ip.is_ipv4();
        if self.shared.config.addresses.iter().any(|(a, _)| same(a)) {
            Ok(())
        } else {
            Err(StackError::NoAddress(if ip.is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            }))
        }
    }

    /// Opens a TCP connection to `remote` (answered by a `Connected` or
    /// `Failed` event with the returned id); with `local`, a copy of that
    /// socket is spliced to it once open (else see `attach`).
    pub fn connect(
        &self,
        remote: SocketAddr,
        local: Option<RawFd>,
        timeout: Duration,
    ) -> Result<u64> {
        self.accepting()?;
        self.has_family(&remote.ip())?;
        if remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_multicast() {
            return Err(StackError::InvalidArgument(format!(
                "cannot connect to {remote}"
            )));
        }
        let local = local.map(dup).transpose()?;
        let port = self
            .shared
            .ports
            .reserve(Proto::Tcp, 0)
            .ok_or(StackError::NoFreePort)?;
        let id = self.next_id();
        self.command(Command::Connect {
            id,
            remote,
            port,
            local,
            timeout,
        });
        Ok(id)
    }

    /// Splices connection `id` to a copy of `local` (a stream socket),
    /// sending `prefix` first (at most the send buffer's size).
    pub fn attach(&self, id: u64, local: RawFd, prefix: &[u8]) -> Result<()> {
        self.accepting()?;
        if prefix.len() > self.shared.config.tcp_send_buffer {
            return Err(StackError::InvalidArgument(
                "prefix larger than the TCP send buffer".into(),
            ));
        }
        let local = dup(local)?;
        let prefix = prefix.to_vec();
        self.command(Command::Attach { id, local, prefix });
        Ok(())
    }

    /// Ends connection `id` with a reset (unknown ids are ignored).
    pub fn abort(&self, id: u64) {
        self.command(Command::Abort { id });
    }

    /// Accepts connections to `port` (0: any free port), at most `backlog`
    /// of them established or in progress and not yet taken; returns the port.
    pub fn listen(&self, port: u16, backlog: usize) -> Result<u16> {
        self.accepting()?;
        let port = self
            .shared
            .ports
            .reserve(Proto::Tcp, port)
            .ok_or(StackError::PortInUse(port))?;
        self.command(Command::Listen { port, backlog });
        Ok(port)
    }

    pub fn unlisten(&self, port: u16) {
        self.command(Command::Unlisten { port });
    }

    /// Bridges UDP `port` (0: any free port) to a copy of `local`, a
    /// SOCK_SEQPACKET socket (udp.rs); returns the port.
    pub fn udp_bind(&self, port: u16, local: RawFd) -> Result<u16> {
        self.accepting()?;
        let local = dup(local)?;
        let port = self
            .shared
            .ports
            .reserve(Proto::Udp, port)
            .ok_or(StackError::PortInUse(port))?;
        let token = tcp::UDP_TOKEN | self.next_id();
        self.command(Command::UdpBind { token, port, local });
        Ok(port)
    }

    pub fn event_fd(&self) -> RawFd {
        self.shared.events.fd()
    }

    pub fn take_events(&self, max: usize) -> Vec<StackEvent> {
        self.shared.events.take(max)
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            tcp_flows: self.shared.flows.load(Ordering::Relaxed),
            inbound_dropped: self.shared.inbound.dropped.load(Ordering::Relaxed),
        }
    }

    pub fn config(&self) -> &StackConfig {
        &self.shared.config
    }
}

impl Drop for Netstack {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Netstack {
        Netstack::new(StackConfig {
            addresses: vec![("10.9.0.1".parse().unwrap(), 24)],
            mtu: 1420,
            tcp_buffer: 65536,
            tcp_send_buffer: DEFAULT_TCP_SEND_BUFFER,
        })
        .unwrap()
    }

    #[test]
    fn commands_queue_before_start_and_are_refused_after_stop() {
        let s = stack();
        let far: SocketAddr = "10.9.0.2:80".parse().unwrap();
        assert!(s.connect(far, None, Duration::from_secs(1)).is_ok());
        assert_eq!(s.listen(8080, 16).unwrap(), 8080);
        s.stop();
        let refused = s.connect(far, None, Duration::from_secs(1));
        assert!(matches!(refused, Err(StackError::NotRunning)));
        assert!(matches!(s.listen(8081, 16), Err(StackError::NotRunning)));
    }
}
