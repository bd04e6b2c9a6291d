//! Pinning a peer's sticky source address after a path change (handover).
//!
//! - The sticky source follows the local address the peer's packets arrive
//!   on. After the control plane moves a peer to a new path, the packets the
//!   peer still sends the old way (until our re-announcement reaches it)
//!   would pull the source back to the old address, and our packets, the
//!   re-announcement among them, would leave from it again.
//! - So the control plane pins the new path's source: until a packet arrives
//!   at the pinned address (the peer has followed), roaming still updates
//!   the endpoint's address but keeps the pinned source.
//! - Anything that forgets or replaces the source (a stale-source send
//!   error, a handshake retry, the control plane setting the endpoint) ends
//!   the pin.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::peer::{Endpoint, Peer};

/// The source to keep when a packet from the peer arrived at `local`.
pub(crate) fn sticky_source(
    peer: &Peer,
    current: Option<Endpoint>,
    local: Option<(IpAddr, u32)>,
) -> Option<(IpAddr, u32)> {
    if !peer.source_pinned.load(Ordering::Acquire) {
        return local;
    }
    match current.and_then(|e| e.src) {
        Some(pinned) if local.map(|l| l.0) != Some(pinned.0) => Some(pinned),
        _ => {
            // The peer answers at the pinned address, or the source was forgotten.
            peer.source_pinned.store(false, Ordering::Release);
            local
        }
    }
}

/// Sends from `src` from now on, whatever address the peer's packets still
/// arrive at, until one arrives at `src`. False if the peer has no endpoint.
pub(crate) fn pin(peer: &Peer, src: (IpAddr, u32)) -> bool {
    let Ok(mut e) = peer.endpoint.write() else {
        return false;
    };
    let Some(ep) = e.as_mut() else {
        return false;
    };
    ep.src = Some(src);
    peer.source_pinned.store(true, Ordering::Release);
    true
}

pub(crate) fn unpin(peer: &Peer) {
    peer.source_pinned.store(false, Ordering::Release);
}

pub(crate) fn is_pinned(peer: &Peer) -> bool {
    peer.source_pinned.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn local(a: &str) -> Option<(IpAddr, u32)> {
        Some((a.parse().expect("ip"), 0))
    }

    #[test]
    fn pinned_source_survives_packets_at_the_old_address() {
        let p = Peer::new(1);
        let server: SocketAddr = "10.9.0.1:51820".parse().expect("addr");
        p.roam(server, local("10.1.0.2"));
        assert!(
            !pin(&Peer::new(2), ("10.2.0.2".parse().expect("ip"), 0)),
            "no endpoint"
        );
        assert!(pin(&p, ("10.2.0.2".parse().expect("ip"), 0)));
        // Still arriving the old way: the endpoint keeps the new source.
        p.roam(server, local("10.1.0.2"));
        assert_eq!(p.endpoint().and_then(|e| e.src), local("10.2.0.2"));
        assert!(is_pinned(&p));
        // The peer moved too: its address is followed, the source kept.
        let moved: SocketAddr = "10.9.0.7:51820".parse().expect("addr");
        assert_eq!(p.roam(moved, local("10.1.0.2")), Some(moved));
        assert_eq!(p.endpoint().and_then(|e| e.src), local("10.2.0.2"));
        // The first packet at the new address ends the pin.
        p.roam(moved, local("10.2.0.2"));
        assert!(!is_pinned(&p));
        p.roam(moved, local("10.1.0.2"));
        assert_eq!(
            p.endpoint().and_then(|e| e.src),
            local("10.1.0.2"),
            "unpinned"
        );
    }

    #[test]
    fn a_forgotten_source_ends_the_pin() {
        let p = Peer::new(1);
        let server: SocketAddr = "10.9.0.1:51820".parse().expect("addr");
        p.roam(server, local("10.1.0.2"));
        assert!(pin(&p, ("10.2.0.2".parse().expect("ip"), 0)));
        if let Some(e) = p.endpoint.write().expect("lock").as_mut() {
            e.src = None; // what a stale-source send error does
        }
        p.roam(server, local("10.1.0.2"));
        assert!(!is_pinned(&p));
        assert_eq!(p.endpoint().and_then(|e| e.src), local("10.1.0.2"));
        assert!(pin(&p, ("10.2.0.2".parse().expect("ip"), 0)));
        unpin(&p);
        p.roam(server, local("10.1.0.2"));
        assert_eq!(p.endpoint().and_then(|e| e.src), local("10.1.0.2"));
    }
}
