//! What the data plane tells the control plane, through one queue and an
//! eventfd that Trio can wait on.
//!
//! - `Peer`: something about this peer changed that the control plane acts
//!   on (a handshake sent or completed, a new endpoint, traffic after an
//!   idle spell, no path to it): re-read it. At most one waits per peer
//!   (peer.rs), so the queue is bounded by the number of peers plus the rare
//!   device events, and a flood of packets is never a flood of events.
//! - Device events: the TUN device closed, a socket failed, a notice worth
//!   logging (an offload the kernel refused, a bad setting).
//! - The eventfd is readable exactly while the queue is non-empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::peer::Peer;
use super::sys::EventFd;
use crate::sync::lock;

pub enum Event {
    Peer(Arc<Peer>),
    TunClosed { error: String },
    SocketError { error: String },
    Notice { message: String },
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Peer(p) => write!(f, "Peer({})", p.id()),
            Event::TunClosed { error } => write!(f, "TunClosed({error})"),
            Event::SocketError { error } => write!(f, "SocketError({error})"),
            Event::Notice { message } => write!(f, "Notice({message})"),
        }
    }
}

pub struct EventQueue {
    queue: Mutex<VecDeque<Event>>,
    fd: EventFd,
}

impl EventQueue {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue: Mutex::new(VecDeque::new()),
            fd: EventFd::new()?,
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd.raw()
    }

    pub fn push(&self, e: Event) {
        let mut q = lock(&self.queue);
        let was_empty = q.is_empty();
        q.push_back(e);
        if was_empty {
            self.fd.signal();
        }
    }

    /// Up to `max` events, oldest first.
    pub fn take(&self, max: usize) -> Vec<Event> {
        let mut q = lock(&self.queue);
        let n = q.len().min(max);
        let out: Vec<Event> = q.drain(..n).collect();
        if q.is_empty() {
            self.fd.clear();
        }
        out
    }
}
