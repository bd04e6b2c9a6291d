//! The netstack thread (`wgpy-netstack`): owns the smoltcp interface and
//! every socket, and loops:
//!
//! 1. wait for a wake (decrypted packets or commands), a local socket's
//!    readiness, or smoltcp's next timer (retransmissions, delayed ACKs)
//!    or a connect deadline;
//! 2. run the owner's commands;
//! 3. take the decrypted packets, prepare listening sockets for their SYNs,
//!    and let smoltcp process them (and send what it must);
//! 4. move bytes between smoltcp and local sockets (flow.rs, udp.rs);
//! 5. let smoltcp send what that queued, encrypt and send the batch, and
//!    reap finished flows.
//!
//! Nothing here blocks but the wait; local sockets are non-blocking.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::datapath::InsideSender;

use super::commands::Command;
use super::device::TunnelDevice;
use super::poller::{Poller, READABLE, WRITABLE};
use super::tcp::{Buffers, Env, Tcp, UDP_TOKEN};
use super::udp::Udp;
use super::{Shared, STOP_TOKEN, WAKE_TOKEN};

pub(crate) struct Stack {
    shared: Arc<Shared>,
    iface: Interface,
    sockets: SocketSet<'static>,
    device: TunnelDevice,
    tcp: Tcp,
    udp: Udp,
    poller: Poller,
    epoch: Instant,
}

impl Stack {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sender: InsideSender,
        stop_fd: i32,
    ) -> std::io::Result<Self> {
        let poller = Poller::new()?;
        poller.add(stop_fd, STOP_TOKEN, false)?;
        poller.add(shared.wake.fd(), WAKE_TOKEN, false)?;
        let mut device = TunnelDevice::new(sender, shared.config.mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let epoch = Instant::now();
        let mut iface = Interface::new(config, &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            for &(addr, prefix) in &shared.config.addresses {
                // Checked by Netstack::new: at most one address per family.
                let _ = addrs.push(IpCidr::new(IpAddress::from(addr), prefix));
            }
        });
        // Everything not on the addresses' own networks goes into the tunnel
        // too; with an IP medium the "gateway" is only a placeholder.
        for &(addr, _) in &shared.config.addresses {
            let _ = match IpAddress::from(addr) {
                IpAddress::Ipv4(a) => iface.routes_mut().add_default_ipv4_route(a),
                IpAddress::Ipv6(a) => iface.routes_mut().add_default_ipv6_route(a),
            };
        }
        let tcp = Tcp::new(Buffers {
            receive: shared.config.tcp_buffer,
            send: shared.config.tcp_send_buffer,
        });
        Ok(Self {
            shared,
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            tcp,
            udp: Udp::new(),
            poller,
            epoch,
        })
    }

    fn now(&self) -> SmolInstant {
        let micros = i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX);
        SmolInstant::from_micros(micros)
    }

    /// Runs until the stop eventfd is signalled.
    pub(crate) fn run(&mut self) {
        let mut ready = Vec::new();
        loop {
            ready.clear();
            let timeout = self.timeout();
            if self.poller.wait(timeout, &mut ready).is_err() {
                // EBADF/EINVAL cannot happen on our own epoll; never spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.dispatch(&ready) {
                return;
            }
            self.step();
        }
    }

    /// Applies readiness; false when asked to stop.
    fn dispatch(&mut self, ready: &[(u64, u32)]) -> bool {
        for &(token, events) in ready {
            match token {
                STOP_TOKEN => return false,
                WAKE_TOKEN => self.shared.wake.clear(),
                t if t & UDP_TOKEN != 0 => self.udp.ready(t),
                id => self
                    .tcp
                    .ready(id, events & READABLE != 0, events & WRITABLE != 0),
            }
        }
        true
    }

    fn step(&mut self) {
        for command in self.shared.commands.take() {
            self.run_command(command);
        }
        self.shared.inbound.take(&mut self.device.rx);
        let shared = &self.shared;
        self.tcp
            .prepare_listeners(&mut self.device.rx, &mut self.sockets, || {
                shared.next_id.fetch_add(1, Ordering::Relaxed)
            });
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.shared.inbound.recycle(&mut self.device.used);
        let env = Env {
            events: &self.shared.events,
            poller: &self.poller,
            now: Instant::now(),
        };
        self.tcp.service(&mut self.sockets, &env);
        self.udp.service(&mut self.sockets, &self.shared.ports);
        self.iface
            .poll_egress(now, &mut self.device, &mut self.sockets);
        self.device.tx.flush();
        self.tcp.reap(&mut self.sockets, &self.shared.ports);
        self.shared.flows.store(self.tcp.len(), Ordering::Relaxed);
    }

    fn run_command(&mut self, command: Command) {
        let shared = &self.shared;
        match command {
            Command::Connect {
                id,
                remote,
                port,
                local,
                timeout,
            } => {
                let cx = self.iface.context();
                let args = (id, remote, port);
                self.tcp.connect(
                    cx,
                    &mut self.sockets,
                    &shared.events,
                    &shared.ports,
                    args,
                    timeout,
                );
                if let Some(local) = local {
                    let args = (id, local, &[][..]);
                    self.tcp.attach(&mut self.sockets, &self.poller, args);
                }
            }
            Command::Attach { id, local, prefix } => {
                let args = (id, local, &prefix[..]);
                self.tcp.attach(&mut self.sockets, &self.poller, args);
            }
            Command::Abort { id } => self.tcp.abort(&mut self.sockets, &self.poller, id),
            Command::Listen { port, backlog } => self.tcp.listen(port, backlog),
            Command::Unlisten { port } => {
                self.tcp.unlisten(&mut self.sockets, port);
                shared.ports.release(super::ports::Proto::Tcp, port);
            }
            Command::UdpBind { token, port, local } => {
                let args = (token, port, local);
                self.udp
                    .bind(&mut self.sockets, &self.poller, args, &shared.ports);
            }
        }
    }

    /// How long the loop may sleep: until smoltcp's next timer or the next
    /// connect deadline; not at all while packets wait.
    fn timeout(&mut self) -> Option<Duration> {
        if !self.device.rx.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        let smol = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let deadline = self
            .tcp
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        match (smol, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
