//! The stack's UDP ports, each bridged to a local SOCK_SEQPACKET socket:
//! one datagram there is one datagram in the tunnel, prefixed by the far
//! side's address (ADDR_LEN bytes: the IPv6 address, IPv4 mapped, then the
//! port, big-endian). What the owner writes goes to the address in its
//! prefix; what arrives is written with the sender's address.
//!
//! - Datagrams are dropped, never queued without bound: when the smoltcp
//!   socket's buffer is full the local socket is not read (its own buffer
//!   fills and the owner's writes wait), and an arriving datagram the
//!   local socket cannot take at once is dropped, as UDP may.
//! - A malformed datagram from the owner (shorter than the prefix) is
//!   dropped; the binding ends when the owner closes its end.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp::{PacketBuffer, PacketMetadata, Socket};
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::fd;
use super::poller::Poller;
use super::ports::{Ports, Proto};

/// The address prefix of every datagram on the local socket.
pub const ADDR_LEN: usize = 18;
/// Datagrams and bytes a smoltcp UDP socket buffers each way.
const SLOTS: usize = 256;
const BYTES: usize = 256 * 1024;

pub(crate) fn encode_addr(addr: SocketAddr) -> [u8; ADDR_LEN] {
    let v6 = match addr.ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let mut out = [0u8; ADDR_LEN];
    out[..16].copy_from_slice(&v6.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

pub(crate) fn decode_addr(bytes: &[u8]) -> Option<SocketAddr> {
    let octets: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    let port = u16::from_be_bytes(bytes.get(16..ADDR_LEN)?.try_into().ok()?);
    let v6 = Ipv6Addr::from(octets);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    Some(SocketAddr::new(ip, port))
}

struct Binding {
    handle: SocketHandle,
    fd: OwnedFd,
    port: u16,
    readable: bool,
    closed: bool,
}

pub(crate) struct Udp {
    bindings: HashMap<u64, Binding>,
    scratch: Vec<u8>,
}

impl Udp {
    pub(crate) fn new() -> Self {
        Self {
            bindings: HashMap::new(),
            scratch: vec![0; ADDR_LEN + 65536],
        }
    }

    /// Binds `port` (already reserved) to the owner's local socket.
    pub(crate) fn bind(
        &mut self,
        sockets: &mut SocketSet<'static>,
        poller: &Poller,
        (token, port, local): (u64, u16, OwnedFd),
        ports: &Ports,
    ) {
        let buffer = || PacketBuffer::new(vec![PacketMetadata::EMPTY; SLOTS], vec![0; BYTES]);
        let mut sock = Socket::new(buffer(), buffer());
        if sock.bind(port).is_err() || poller.add(local.as_raw_fd(), token, true).is_err() {
            ports.release(Proto::Udp, port);
            return; // the owner's end reads end of file
        }
        let binding = Binding {
            handle: sockets.add(sock),
            fd: local,
            port,
            readable: true,
            closed: false,
        };
        self.bindings.insert(token, binding);
    }

    pub(crate) fn ready(&mut self, token: u64) {
        if let Some(b) = self.bindings.get_mut(&token) {
            b.readable = true;
        }
    }

    /// Moves datagrams both ways; drops the bindings whose owner closed.
    pub(crate) fn service(&mut self, sockets: &mut SocketSet<'static>, ports: &Ports) {
        for b in self.bindings.values_mut() {
            let sock = sockets.get_mut::<Socket>(b.handle);
            pump_to_local(b, sock);
            pump_from_local(b, sock, &mut self.scratch);
        }
        self.bindings.retain(|_, b| {
            if b.closed {
                sockets.remove(b.handle);
                ports.release(Proto::Udp, b.port);
            }
            !b.closed
        });
    }
}

fn pump_to_local(b: &mut Binding, sock: &mut Socket<'_>) {
    while let Ok((payload, meta)) = sock.recv() {
        let from = SocketAddr::new(meta.endpoint.addr.into(), meta.endpoint.port);
        match fd::send_parts(b.fd.as_raw_fd(), &encode_addr(from), payload) {
            Ok(_) => {}
            Err(e) if fd::would_block(&e) => {} // dropped: the owner is behind
            Err(_) => b.closed = true,
        }
    }
}

fn pump_from_local(b: &mut Binding, sock: &mut Socket<'_>, scratch: &mut [u8]) {
    while b.readable && !b.closed && sock.can_send() {
        match fd::recv(b.fd.as_raw_fd(), scratch) {
            Ok(0) => b.closed = true,
            Ok(n) => {
                let Some(to) = decode_addr(&scratch[..n]) else {
                    continue;
                };
                if n >= ADDR_LEN && sock.payload_send_capacity() >= n - ADDR_LEN {
                    let remote = IpEndpoint::new(IpAddress::from(to.ip()), to.port());
                    // Unaddressable (no address of that family) or too large: dropped.
                    let _ = sock.send_slice(&scratch[ADDR_LEN..n], remote);
                }
            }
            Err(e) if fd::would_block(&e) => b.readable = false,
            Err(_) => b.closed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_the_prefix() {
        for text in ["10.0.0.2:53", "[fd00::1]:4242", "[::ffff:1.2.3.4]:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            let decoded = decode_addr(&encode_addr(addr)).unwrap();
            assert_eq!(decoded.port(), addr.port());
        }
        let v4: SocketAddr = "10.0.0.2:53".parse().unwrap();
        assert_eq!(decode_addr(&encode_addr(v4)), Some(v4));
        assert_eq!(decode_addr(&[0u8; 5]), None);
    }
}
