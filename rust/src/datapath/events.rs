//! What the data plane tells the control plane, through one queue and an
//! eventfd that Trio can wait on.
//!
//! - Handshake messages (types 1-3) are queued whole, with where they came
//!   from; at most MAX_QUEUED_HANDSHAKES wait, further ones are dropped.
//! - Per-peer notices ("needs a handshake", "key confirmed", "new endpoint",
//!   "timer activity", "no path: holding packets") are deduplicated by the
//!   caller before being pushed.
//! - The eventfd is readable exactly while the queue is non-empty.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::sys::EventFd;
use super::PeerId;

pub const MAX_QUEUED_HANDSHAKES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeReason {
    /// Packets are staged and no keypair can send them.
    NoKey,
    /// The sending keypair is old or has sent REKEY_AFTER_MESSAGES.
    RekeyOnSend,
    /// The initiator's keypair is past REJECT - KEEPALIVE - REKEY_TIMEOUT.
    RekeyOnReceive,
}

#[derive(Debug)]
pub enum Event {
    Handshake {
        message: Vec<u8>,
        source: SocketAddr,
        local: Option<(IpAddr, u32)>,
    },
    NeedHandshake {
        peer: PeerId,
        reason: HandshakeReason,
    },
    KeyConfirmed {
        peer: PeerId,
    },
    EndpointChanged {
        peer: PeerId,
        endpoint: SocketAddr,
    },
    Activity {
        peer: PeerId,
    },
    /// A send found no path to the peer's endpoint; its packets are held.
    Unreachable {
        peer: PeerId,
    },
    TunClosed {
        error: String,
    },
    /// Something worth logging, such as an offload the kernel refused.
    Notice {
        message: String,
    },
    SocketError {
        error: String,
    },
}

pub struct EventQueue {
    queue: Mutex<VecDeque<Event>>,
    handshakes: AtomicUsize,
    fd: EventFd,
}

impl EventQueue {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue: Mutex::new(VecDeque::new()),
            handshakes: AtomicUsize::new(0),
            fd: EventFd::new()?,
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd.raw()
    }

    /// Handshake messages waiting for the control plane.
    pub fn handshake_backlog(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    pub fn push(&self, e: Event) {
        let is_handshake = matches!(e, Event::Handshake { .. });
        if is_handshake && self.handshakes.load(Ordering::Relaxed) >= MAX_QUEUED_HANDSHAKES {
            return;
        }
        let Ok(mut q) = self.queue.lock() else { return };
        if is_handshake {
            self.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        let was_empty = q.is_empty();
        q.push_back(e);
        if was_empty {
            self.fd.signal();
        }
    }

    /// Everything queued so far, oldest first.
    pub fn take(&self, max: usize) -> Vec<Event> {
        let Ok(mut q) = self.queue.lock() else {
            return Vec::new();
        };
        let n = q.len().min(max);
        let out: Vec<Event> = q.drain(..n).collect();
        let hs = out
            .iter()
            .filter(|e| matches!(e, Event::Handshake { .. }))
            .count();
        self.handshakes.fetch_sub(hs, Ordering::Relaxed);
        if q.is_empty() {
            self.fd.clear();
        }
        out
    }
}
