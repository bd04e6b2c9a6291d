//! Holding a peer's packets while no path to its endpoint exists (handover).
//!
//! - Off unless the control plane turns it on for the device (it does when
//!   it watches the underlay and so can tell when a path returns).
//! - A send that fails because no path exists (ENETUNREACH, EHOSTUNREACH,
//!   ENETDOWN or EADDRNOTAVAIL, after the fallback to the routing table's
//!   source) holds the peer and tells the control plane. That send's
//!   messages are lost (counted in tx_dropped); their counters are burnt,
//!   which the peer's replay window allows.
//! - The control plane also holds a peer itself when it sees the route go.
//! - While a peer is held, its packets are staged as plaintext before
//!   sealing, within the normal bound, and the staged queue is not flushed.
//! - The control plane releases the peer when a path returns; the staged
//!   packets are flushed then, and the handshake rate is reset: initiations
//!   made while held never left.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::messages::TRANSPORT_HEADER_LEN;

use super::peer::Peer;
use super::stats::DeviceCounters;
use super::Shared;

/// Is this send error "no path to that destination at all"?
pub(crate) fn is_no_path_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH)
            | Some(libc::EHOSTUNREACH)
            | Some(libc::ENETDOWN)
            | Some(libc::EADDRNOTAVAIL)
    )
}

/// The send path's first step: if the peer is held, stage the run of packets
/// (at offset 16 of their buffers) and return true.
pub(crate) fn stage_if_held(peer: &Peer, bufs: &[Vec<u8>], lens: &[usize]) -> bool {
    if !peer.staged().is_held() {
        return false;
    }
    peer.staged().stage(
        bufs.iter()
            .zip(lens)
            .map(|(b, &l)| &b[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + l]),
    );
    true
}

/// A send of `count` sealed messages failed: count them as dropped, and hold
/// the peer if no path exists and the device holds.
pub(crate) fn send_failed(shared: &Shared, peer: &Arc<Peer>, count: usize, error: &io::Error) {
    DeviceCounters::add(&shared.counters.tx_dropped, count as u64);
    if shared.hold_unreachable.load(Ordering::Relaxed)
        && is_no_path_error(error)
        && peer.staged().hold()
    {
        peer.notify(&shared.events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::events::Event;
    use crate::datapath::test_support::datapath;

    fn err(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn only_no_path_errors_count() {
        for code in [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_no_path_error(&err(code)), "errno {code}");
        }
        for code in [libc::EINVAL, libc::EPERM, libc::EACCES, libc::EMSGSIZE] {
            assert!(!is_no_path_error(&err(code)), "errno {code}");
        }
        assert!(!is_no_path_error(&io::Error::other("no errno")));
    }

    #[test]
    fn held_peer_stages_plaintext() {
        let p = crate::datapath::peer::tests::peer(1);
        let bufs: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                let mut b = vec![0u8; 64];
                b[TRANSPORT_HEADER_LEN] = i;
                b
            })
            .collect();
        assert!(!stage_if_held(&p, &bufs, &[1, 1, 1]), "not held: send");
        assert!(p.staged().is_empty());
        p.staged().hold();
        assert!(stage_if_held(&p, &bufs, &[1, 2, 3]));
        assert_eq!(p.staged().take(), vec![vec![0], vec![1, 0], vec![2, 0, 0]]);
    }

    #[test]
    fn failed_send_holds_only_when_enabled_and_no_path() {
        let (dp, _null) = datapath();
        dp.add_peer(7, crate::keys::PrivateKey::generate().public_key(), None)
            .expect("add peer");
        let peer = dp.shared.peer(7).expect("peer");
        let shared = &dp.shared;

        send_failed(shared, &peer, 2, &err(libc::ENETUNREACH));
        assert!(!peer.staged().is_held(), "holding is off by default");
        dp.set_hold_unreachable(true);
        send_failed(shared, &peer, 1, &err(libc::EPERM));
        assert!(!peer.staged().is_held(), "not a missing path");
        send_failed(shared, &peer, 1, &err(libc::ENETUNREACH));
        send_failed(shared, &peer, 1, &err(libc::ENETUNREACH));
        assert!(peer.staged().is_held());
        assert_eq!(dp.stats().tx_dropped, 5);
        let events = dp.take_events(16);
        assert_eq!(events.len(), 1, "told once: {events:?}");
        assert!(matches!(&events[0], Event::Peer(p) if p.id() == 7));

        dp.set_hold_unreachable(false);
        assert!(!peer.staged().is_held(), "turning holding off releases");
    }
}
