//! What the owner asks the netstack thread to do. The handle checks what it
//! can at once (ports are reserved before a command is queued), so a command
//! that reaches the thread cannot be refused there; what can still fail
//! (a connection) is answered with an event.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::sync::lock;
use std::time::Duration;

pub(crate) enum Command {
    /// Connect flow `id` from `port` to `remote`; splice `local` once open.
    Connect {
        id: u64,
        remote: SocketAddr,
        port: u16,
        local: Option<OwnedFd>,
        timeout: Duration,
    },
    /// Splice flow `id` (connected or accepted) to `local`.
    /// `prefix` is sent first (before anything read from `local`).
    Attach {
        id: u64,
        local: OwnedFd,
        prefix: Vec<u8>,
    },
    /// End flow `id` with a reset.
    Abort {
        id: u64,
    },
    Listen {
        port: u16,
        backlog: usize,
    },
    Unlisten {
        port: u16,
    },
    /// Bridge UDP `port` to `local` (udp.rs), under poller token `token`.
    UdpBind {
        token: u64,
        port: u16,
        local: OwnedFd,
    },
}

#[derive(Default)]
pub(crate) struct Commands(Mutex<Vec<Command>>);

impl Commands {
    pub(crate) fn push(&self, c: Command) {
        lock(&self.0).push(c);
    }

    pub(crate) fn take(&self) -> Vec<Command> {
        std::mem::take(&mut *lock(&self.0))
    }
}
