//! Holding a peer's packets while no path to its endpoint exists (handover).
//!
//! - Off unless the control plane turns it on for the device (it does when
//!   it watches the underlay and so can tell when a path returns).
//! - A send that fails because no path exists (ENETUNREACH, EHOSTUNREACH,
//!   ENETDOWN or EADDRNOTAVAIL, after the fallback to the routing table's
//!   source) holds the peer and tells the control plane once. That send's
//!   messages are lost (counted in tx_dropped); their counters are burnt,
//!   which the peer's replay window allows.
//! - The control plane also holds a peer itself when it sees the route go.
//! - While a peer is held, its packets are staged as plaintext before
//!   sealing, within the normal bound (MAX_STAGED, oldest dropped first), and
//!   the staged queue is not flushed.
//! - The control plane releases the peer when a path returns; the staged
//!   packets are flushed then.

use std::io;
use std::sync::atomic::Ordering;

use crate::messages::TRANSPORT_HEADER_LEN;

use super::events::Event;
use super::peer::Peer;
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

pub(crate) fn is_held(peer: &Peer) -> bool {
    peer.held.load(Ordering::Acquire)
}

/// The send path's first step: if the peer is held, stage the run of packets
/// (at offset 16 of their buffers) and return true.
pub(crate) fn stage_if_held(peer: &Peer, bufs: &[Vec<u8>], lens: &[usize]) -> bool {
    if !is_held(peer) {
        return false;
    }
    peer.stage(
        bufs.iter()
            .zip(lens)
            .map(|(b, &l)| &b[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + l]),
    );
    true
}

/// A send of `count` sealed messages failed: count them as dropped, and hold
/// the peer if no path exists and the device holds.
pub(crate) fn send_failed(shared: &Shared, peer: &Peer, count: usize, error: &io::Error) {
    shared
        .counters
        .tx_dropped
        .fetch_add(count as u64, Ordering::Relaxed);
    if shared.hold_unreachable.load(Ordering::Relaxed)
        && is_no_path_error(error)
        && !peer.held.swap(true, Ordering::AcqRel)
    {
        shared.events.push(Event::Unreachable { peer: peer.id });
    }
}

/// Holds the peer (the control plane saw its route go); true if it was not held.
pub(crate) fn hold(peer: &Peer) -> bool {
    !peer.held.swap(true, Ordering::AcqRel)
}

/// Stops holding the peer; true if it was held.
pub(crate) fn release(peer: &Peer) -> bool {
    peer.held.swap(false, Ordering::AcqRel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Datapath;
    use std::os::fd::AsRawFd;

    fn datapath() -> (Datapath, std::fs::File) {
        let null = std::fs::File::open("/dev/null").expect("open /dev/null");
        let dp = Datapath::new(null.as_raw_fd(), 1420, false, false).expect("datapath");
        (dp, null)
    }

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
    fn held_peer_stages_plaintext_within_the_bound() {
        let p = Peer::new(1);
        let bufs: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                let mut b = vec![0u8; 64];
                b[TRANSPORT_HEADER_LEN] = i;
                b
            })
            .collect();
        assert!(!stage_if_held(&p, &bufs, &[1, 1, 1]), "not held: send");
        assert!(p.staged_is_empty());
        assert!(hold(&p));
        assert!(!hold(&p), "already held");
        assert!(stage_if_held(&p, &bufs, &[1, 2, 3]));
        let staged = p.take_staged();
        assert_eq!(staged, vec![vec![0], vec![1, 0], vec![2, 0, 0]]);
        for _ in 0..(super::super::MAX_STAGED / 3 + 2) {
            stage_if_held(&p, &bufs, &[1, 1, 1]);
        }
        assert_eq!(p.take_staged().len(), super::super::MAX_STAGED);
        assert!(release(&p));
        assert!(!release(&p), "already released");
        assert!(!stage_if_held(&p, &bufs, &[1, 1, 1]));
    }

    #[test]
    fn failed_send_holds_only_when_enabled_and_no_path() {
        let (dp, _null) = datapath();
        dp.add_peer(7).expect("add peer");
        let peer = dp.peer(7).expect("peer");
        let shared = &dp.shared;

        send_failed(shared, &peer, 2, &err(libc::ENETUNREACH));
        assert!(!is_held(&peer), "holding is off by default");
        dp.set_hold_unreachable(true);
        send_failed(shared, &peer, 1, &err(libc::EPERM));
        assert!(!is_held(&peer), "not a missing path");
        send_failed(shared, &peer, 1, &err(libc::ENETUNREACH));
        send_failed(shared, &peer, 1, &err(libc::ENETUNREACH));
        assert!(is_held(&peer));
        assert_eq!(dp.counters().tx_dropped.load(Ordering::Relaxed), 5);
        let events = dp.take_events(16);
        assert_eq!(events.len(), 1, "told once: {events:?}");
        assert!(matches!(events[0], Event::Unreachable { peer: 7 }));

        // Staged packets wait while held and go when released.
        dp.send_keepalive(7).expect("keepalive");
        assert_eq!(dp.staged_count(7).expect("count"), 1);
        assert!(dp.is_held(7).expect("held"));
        dp.set_hold_unreachable(false);
        assert!(
            !dp.is_held(7).expect("held"),
            "turning holding off releases"
        );
    }
}
