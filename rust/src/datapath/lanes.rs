//! Lanes: the data plane's I/O threads. A lane is one queue of the TUN
//! device and the UDP sockets of one place in the port's SO_REUSEPORT groups
//! (one per address family), served in both directions by one thread,
//! `wgpy-laneN` (how many: scaling.rs).
//!
//! - One thread for both directions: the reverse traffic of a bulk transfer
//!   (TCP ACKs, a trickle of small packets) is picked up by the thread that
//!   is awake anyway, between two batches, instead of waking another thread
//!   every few packets. The thread sleeps (poll) only after a turn in which
//!   none of its descriptors had anything.
//! - A turn: whatever was ready, at most MAX_READS TUN packets (tx.rs) and
//!   MAX_RECVS receive batches per socket (rx.rs), so no direction starves
//!   the other.
//! - Spreading: the kernel hashes each flow read from the TUN device to a
//!   queue (preferring the queue that last wrote that flow's packets) and
//!   each sender's UDP address to one socket of a group; so a peer's
//!   traffic tends to stay in one lane, and many peers spread over all.
//! - Batches in flight per lane (recycle.rs): one when nothing but the lane
//!   itself finishes its batches; two with other lanes (a sealed batch may
//!   wait for another lane's earlier one of the same peer); with crypto
//!   workers, enough to keep this lane's share of them busy.
//! - A TUN queue in error (the device was deleted) is reported and dropped
//!   from the lane, whose sockets go on; a dead socket likewise.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::events::Event;
use super::rx::{Deliverer, Delivery, SocketReader};
use super::sys::{self, EventFd};
use super::thread::Faults;
use super::tx::TunReader;
use super::{Shared, UdpSocket};

/// What one lane serves.
pub(crate) struct Lane {
    pub(crate) index: usize,
    /// Its TUN queue; None with a userspace stack, or when the device has
    /// fewer queues than there are lanes.
    pub(crate) tun: Option<RawFd>,
    pub(crate) sockets: Vec<Arc<UdpSocket>>,
}

/// How many batches a lane may have in flight (see the module notes).
fn in_flight(lanes: usize, workers: usize) -> usize {
    match (lanes, workers) {
        (1, 0) => 1,
        (_, 0) => 2,
        (l, w) => 1 + w.div_ceil(l.max(1)),
    }
}

pub(crate) fn lane_loop(
    shared: &Arc<Shared>,
    lane: Lane,
    lanes: usize,
    stop: &EventFd,
    faults: &mut Faults,
) {
    let batches = in_flight(lanes, shared.pipeline.workers());
    let delivery = Arc::new(Delivery::new(Deliverer::new(
        lane.tun.unwrap_or_else(|| shared.tun_fd()),
    )));
    let mut tun = lane.tun.map(|fd| TunReader::new(fd, lane.index, batches));
    let mut sockets: Vec<SocketReader> = lane
        .sockets
        .into_iter()
        .map(|s| SocketReader::new(s, delivery.clone(), batches))
        .collect();
    let mut busy = false;
    loop {
        let fds: Vec<RawFd> = tun
            .iter()
            .map(TunReader::fd)
            .chain(sockets.iter().map(SocketReader::fd))
            .collect();
        let ready = match sys::wait_any(&fds, stop, if busy { 0 } else { -1 }) {
            Ok(Some(ready)) => ready,
            Ok(None) => return,
            Err(e) => return lane_failed(shared, &e),
        };
        let first_socket = usize::from(tun.is_some());
        if ready.any >> first_socket != 0 {
            // The test hook fires on datagrams, which a test sends when it
            // chooses; the TUN device has packets of its own from the start.
            faults.woke();
        }
        busy = serve_tun(shared, &mut tun, ready);
        busy |= serve_sockets(shared, &mut sockets, ready.any >> first_socket);
    }
}

/// Reads the TUN queue if it is ready; drops it (and tells the control
/// plane) when it fails. True if packets were read.
fn serve_tun(shared: &Arc<Shared>, tun: &mut Option<TunReader>, ready: sys::Ready) -> bool {
    let Some(reader) = tun.as_mut() else {
        return false;
    };
    if ready.error_only & 1 != 0 {
        *tun = None;
        tun_closed(shared, "TUN device reported an error (deleted?)");
        return false;
    }
    if ready.any & 1 == 0 {
        return false;
    }
    match reader.service(shared) {
        Ok(read) => read,
        Err(e) => {
            *tun = None;
            tun_closed(shared, &e.to_string());
            false
        }
    }
}

/// Receives on the ready sockets (bit i: `sockets[i]`); drops a dead one
/// (and tells the control plane). True if anything arrived.
fn serve_sockets(shared: &Arc<Shared>, sockets: &mut Vec<SocketReader>, ready: u32) -> bool {
    let mut any = false;
    let mut i = 0;
    sockets.retain_mut(|s| {
        let bit = 1 << i;
        i += 1;
        if ready & bit == 0 {
            return true;
        }
        match s.service(shared) {
            Ok(got) => {
                any |= got;
                true
            }
            Err(e) => {
                socket_error(shared, &e);
                false
            }
        }
    });
    any
}

fn tun_closed(shared: &Shared, error: &str) {
    shared.events.push(Event::TunClosed {
        error: error.to_string(),
    });
}

fn socket_error(shared: &Shared, e: &io::Error) {
    shared.events.push(Event::SocketError {
        error: e.to_string(),
    });
}

fn lane_failed(shared: &Shared, e: &io::Error) {
    socket_error(shared, e);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_in_flight_follow_what_can_hold_them() {
        assert_eq!(
            in_flight(1, 0),
            1,
            "alone: the batch is back before the next read"
        );
        assert_eq!(
            in_flight(4, 0),
            2,
            "other lanes may hold one in a peer's send order"
        );
        assert_eq!(in_flight(1, 2), 3);
        assert_eq!(in_flight(4, 2), 2);
    }
}
