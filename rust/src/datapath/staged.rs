//! Packets of one peer waiting to be sent (kernel `staged_packet_queue`).
//!
//! - Packets wait here, in plaintext, while no keypair can send them, and
//!   while the peer is held (no path to it: hold.rs).
//! - At most MAX_STAGED (128) wait; the oldest are dropped first.
//! - A keepalive is an empty packet; it joins the queue only if the queue is
//!   empty, since any packet confirms the session as well (kernel
//!   `wg_packet_send_keepalive`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

pub const MAX_STAGED: usize = 128;

#[derive(Default)]
pub struct Staged {
    queue: Mutex<VecDeque<Vec<u8>>>,
    held: AtomicBool,
}

impl Staged {
    /// Queues packets, dropping the oldest past the bound.
    pub fn stage<'a>(&self, packets: impl IntoIterator<Item = &'a [u8]>) {
        let mut q = lock(&self.queue);
        for p in packets {
            if q.len() >= MAX_STAGED {
                q.pop_front();
            }
            q.push_back(p.to_vec());
        }
    }

    /// Queues a keepalive unless packets already wait.
    pub fn stage_keepalive(&self) {
        let mut q = lock(&self.queue);
        if q.is_empty() {
            q.push_back(Vec::new());
        }
    }

    /// Puts packets that could not be sent back in front, in order.
    pub fn requeue(&self, packets: Vec<Vec<u8>>) {
        let mut q = lock(&self.queue);
        for p in packets.into_iter().rev() {
            if q.len() >= MAX_STAGED {
                break;
            }
            q.push_front(p);
        }
    }

    pub fn take(&self) -> Vec<Vec<u8>> {
        lock(&self.queue).drain(..).collect()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Holds the peer's packets; true if it was not held.
    pub fn hold(&self) -> bool {
        !self.held.swap(true, Ordering::AcqRel)
    }

    /// Stops holding; true if it was held.
    pub fn release(&self) -> bool {
        self.held.swap(false, Ordering::AcqRel)
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_bounded_and_oldest_go_first() {
        let s = Staged::default();
        for i in 0..200u32 {
            s.stage([&i.to_le_bytes()[..]]);
        }
        let q = s.take();
        assert_eq!(q.len(), MAX_STAGED);
        assert_eq!(q[0], 72u32.to_le_bytes().to_vec(), "oldest dropped first");
        assert!(s.is_empty());
    }

    #[test]
    fn a_keepalive_joins_only_an_empty_queue() {
        let s = Staged::default();
        s.stage_keepalive();
        s.stage_keepalive();
        assert_eq!(s.take(), vec![Vec::<u8>::new()]);
        s.stage([&b"data"[..]]);
        s.stage_keepalive();
        assert_eq!(s.take(), vec![b"data".to_vec()]);
    }

    #[test]
    fn requeued_packets_go_first() {
        let s = Staged::default();
        s.stage([&b"c"[..]]);
        s.requeue(vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(s.take(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn hold_and_release_say_whether_they_changed_anything() {
        let s = Staged::default();
        assert!(s.hold());
        assert!(!s.hold(), "already held");
        assert!(s.is_held());
        assert!(s.release());
        assert!(!s.release(), "already released");
    }
}
