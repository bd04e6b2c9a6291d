//! Decrypted packets on their way from the receive threads to the
//! netstack thread: a bounded queue (packets past MAX_QUEUED are dropped
//! and counted; TCP retransmits them), and one wake per receive batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use crate::datapath::PacketSink;

use super::wake::Wake;

/// Packets waiting for the netstack thread at most (about 6 MB at MTU 1420,
/// several receive batches of every socket).
pub(crate) const MAX_QUEUED: usize = 4096;
/// Spare buffers kept for reuse.
const MAX_SPARE: usize = 1024;

#[derive(Default)]
struct Queue {
    packets: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

pub(crate) struct Inbound {
    queue: Mutex<Queue>,
    wake: Arc<Wake>,
    pub(crate) dropped: AtomicU64,
}

impl Inbound {
    pub(crate) fn new(wake: Arc<Wake>) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            wake,
            dropped: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Moves every waiting packet to the back of `into`.
    pub(crate) fn take(&self, into: &mut VecDeque<Vec<u8>>) {
        let mut q = self.queue();
        if into.is_empty() {
            std::mem::swap(&mut q.packets, into);
        } else {
            into.append(&mut q.packets);
        }
    }

    /// Gives consumed buffers back for reuse.
    pub(crate) fn recycle(&self, used: &mut Vec<Vec<u8>>) {
        let mut q = self.queue();
        let room = MAX_SPARE.saturating_sub(q.spare.len());
        let keep = used.len().min(room);
        q.spare.extend(used.drain(..keep));
        used.clear();
    }
}

impl PacketSink for Inbound {
    fn deliver(&self, packet: &[u8]) {
        let mut q = self.queue();
        if q.packets.len() >= MAX_QUEUED {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut buf = q.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        q.packets.push_back(buf);
    }

    fn batch_done(&self) {
        self.wake.wake();
    }
}
