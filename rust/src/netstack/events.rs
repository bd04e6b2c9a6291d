//! What the netstack thread tells its owner (the Python control plane),
//! through a queue and an eventfd that is readable while the queue is not
//! empty. Every event answers something the owner asked for (a connection,
//! a listening port), so the queue is bounded by what it asked.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::sync::lock;

use super::wake::Wake;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackEvent {
    /// An outgoing connection is established.
    Connected { id: u64 },
    /// An outgoing connection failed (refused, timed out, no route).
    Failed {
        id: u64,
        reason: String,
        timed_out: bool,
    },
    /// A connection to a listening port is established, waiting to be
    /// attached to a local socket (or aborted).
    Accepted {
        port: u16,
        id: u64,
        remote: SocketAddr,
        local: SocketAddr,
    },
}

pub(crate) struct EventQueue {
    events: Mutex<VecDeque<StackEvent>>,
    wake: Wake,
}

impl EventQueue {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            events: Mutex::new(VecDeque::new()),
            wake: Wake::new()?,
        })
    }

    fn events(&self) -> std::sync::MutexGuard<'_, VecDeque<StackEvent>> {
        lock(&self.events)
    }

    pub(crate) fn push(&self, event: StackEvent) {
        self.events().push_back(event);
        self.wake.wake();
    }

    /// Up to `max` events; the eventfd stays readable while more wait.
    pub(crate) fn take(&self, max: usize) -> Vec<StackEvent> {
        let mut events = self.events();
        self.wake.clear();
        let n = events.len().min(max);
        let taken: Vec<StackEvent> = events.drain(..n).collect();
        if !events.is_empty() {
            self.wake.wake();
        }
        taken
    }

    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.wake.fd()
    }
}
