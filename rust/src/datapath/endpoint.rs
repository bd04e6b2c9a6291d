//! A peer's endpoint: where its packets go, and from which local address.
//!
//! - The address is configured (`set`) or learnt from every authenticated
//!   packet of the peer, handshake or data (`roam`, kernel
//!   `wg_socket_set_peer_endpoint_from_skb`); cookie replies never move it.
//! - The sticky source is the local address (and interface) the peer's last
//!   authenticated packet arrived on: replies leave from the address the peer
//!   contacted (IP_PKTINFO / IPV6_PKTINFO), as in the kernel and wireguard-go.
//!   It is forgotten on handshake retries (the address may be why nobody
//!   answers) and when a send from it fails because it is gone; the routing
//!   table then chooses.
//! - Pinning (handover): after the control plane moved a peer to a new path,
//!   the new path's source is pinned; the packets the peer still sends the
//!   old way (until our re-announcement reaches it) would otherwise pull the
//!   source back. Until a packet arrives at the pinned address (the peer has
//!   followed), roaming updates the address but keeps the pinned source.
//!   Anything that forgets or replaces the source ends the pin.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::sync::{read, write};

/// A local address to send from, and the interface it belongs to.
pub type Source = (IpAddr, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub src: Option<Source>,
}

#[derive(Default)]
pub struct PeerEndpoint {
    current: RwLock<Option<Endpoint>>,
    pinned: AtomicBool,
}

impl PeerEndpoint {
    pub fn get(&self) -> Option<Endpoint> {
        *read(&self.current)
    }

    /// The configured address (None: no endpoint); no source is known for it yet.
    pub fn set(&self, addr: Option<SocketAddr>) {
        *write(&self.current) = addr.map(|addr| Endpoint { addr, src: None });
        self.unpin();
    }

    /// Forgets the sticky source (kernel: on handshake retries).
    pub fn clear_source(&self) {
        if let Some(e) = write(&self.current).as_mut() {
            e.src = None;
        }
        self.unpin();
    }

    /// A send from `stale` failed because the address is gone: forget it,
    /// unless the source has changed meanwhile.
    pub fn forget_source(&self, stale: Option<Source>) {
        let mut current = write(&self.current);
        if let Some(e) = current.as_mut().filter(|e| e.src == stale) {
            e.src = None;
            self.unpin();
        }
    }

    /// An authenticated packet from `src` arrived at `local`; returns true
    /// if the peer's address changed.
    pub fn roam(&self, src: SocketAddr, local: Option<Source>) -> bool {
        let current = self.get();
        let new = Endpoint {
            addr: src,
            src: self.sticky_source(current, local),
        };
        if current == Some(new) {
            return false;
        }
        let mut e = write(&self.current);
        let changed = e.map(|old| old.addr) != Some(src);
        *e = Some(new);
        changed
    }

    /// The source to keep when a packet arrived at `local`.
    fn sticky_source(&self, current: Option<Endpoint>, local: Option<Source>) -> Option<Source> {
        if !self.is_pinned() {
            return local;
        }
        match current.and_then(|e| e.src) {
            Some(pinned) if local.map(|l| l.0) != Some(pinned.0) => Some(pinned),
            _ => {
                // The peer answers at the pinned address, or the source was forgotten.
                self.unpin();
                local
            }
        }
    }

    /// Sends from `src` from now on, whatever address the peer's packets still
    /// arrive at, until one arrives at `src`. False if there is no endpoint.
    pub fn pin(&self, src: Source) -> bool {
        let mut current = write(&self.current);
        let Some(e) = current.as_mut() else {
            return false;
        };
        e.src = Some(src);
        self.pinned.store(true, Ordering::Release);
        true
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Acquire)
    }

    fn unpin(&self) {
        self.pinned.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(a: &str) -> Option<Source> {
        Some((a.parse().expect("ip"), 0))
    }

    fn addr(a: &str) -> SocketAddr {
        a.parse().expect("addr")
    }

    #[test]
    fn replies_follow_the_address_the_peer_contacted() {
        let e = PeerEndpoint::default();
        let peer = addr("10.9.0.1:51820");
        assert!(e.roam(peer, local("10.1.0.2")), "first address");
        assert!(!e.roam(peer, local("10.1.0.3")), "same peer address");
        assert_eq!(e.get().and_then(|e| e.src), local("10.1.0.3"));
        e.clear_source();
        assert_eq!(e.get().map(|e| (e.addr, e.src)), Some((peer, None)));
        e.roam(peer, local("10.1.0.2"));
        e.forget_source(local("10.1.0.3"));
        assert_eq!(
            e.get().and_then(|e| e.src),
            local("10.1.0.2"),
            "not that one"
        );
        e.forget_source(local("10.1.0.2"));
        assert_eq!(e.get().and_then(|e| e.src), None);
        e.set(Some(addr("10.9.0.2:1")));
        assert_eq!(
            e.get().map(|e| (e.addr, e.src)),
            Some((addr("10.9.0.2:1"), None))
        );
        e.set(None);
        assert_eq!(e.get(), None);
    }

    #[test]
    fn pinned_source_survives_packets_at_the_old_address() {
        let e = PeerEndpoint::default();
        let server = addr("10.9.0.1:51820");
        assert!(
            !PeerEndpoint::default().pin(("10.2.0.2".parse().expect("ip"), 0)),
            "no endpoint"
        );
        e.roam(server, local("10.1.0.2"));
        assert!(e.pin(("10.2.0.2".parse().expect("ip"), 0)));
        // Still arriving the old way: the endpoint keeps the new source.
        e.roam(server, local("10.1.0.2"));
        assert_eq!(e.get().and_then(|e| e.src), local("10.2.0.2"));
        assert!(e.is_pinned());
        // The peer moved too: its address is followed, the source kept.
        let moved = addr("10.9.0.7:51820");
        assert!(e.roam(moved, local("10.1.0.2")));
        assert_eq!(e.get().and_then(|e| e.src), local("10.2.0.2"));
        // The first packet at the new address ends the pin.
        e.roam(moved, local("10.2.0.2"));
        assert!(!e.is_pinned());
        e.roam(moved, local("10.1.0.2"));
        assert_eq!(e.get().and_then(|e| e.src), local("10.1.0.2"), "unpinned");
    }

    #[test]
    fn a_forgotten_source_ends_the_pin() {
        let e = PeerEndpoint::default();
        let server = addr("10.9.0.1:51820");
        e.roam(server, local("10.1.0.2"));
        assert!(e.pin(("10.2.0.2".parse().expect("ip"), 0)));
        e.forget_source(local("10.2.0.2")); // what a stale-source send error does
        assert!(!e.is_pinned());
        e.roam(server, local("10.1.0.2"));
        assert_eq!(e.get().and_then(|e| e.src), local("10.1.0.2"));
        assert!(e.pin(("10.2.0.2".parse().expect("ip"), 0)));
        e.clear_source();
        assert!(!e.is_pinned());
        e.roam(server, local("10.1.0.2"));
        assert_eq!(e.get().and_then(|e| e.src), local("10.1.0.2"));
    }
}
