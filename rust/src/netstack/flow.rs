//! One TCP connection of the stack spliced to a local socket: bytes move
//! between the kernel socket and the smoltcp socket's buffers directly
//! (read into the send ring, write from the receive ring), never through
//! another buffer.
//!
//! - Back-pressure both ways: a local socket is read only while the
//!   smoltcp send buffer has room, and the smoltcp receive buffer is
//!   emptied only as fast as the local socket takes it; a full receive
//!   buffer closes the TCP window, so the far side waits. Memory per
//!   connection is the two smoltcp buffers, whatever the peers do.
//! - Readiness is edge-triggered (poller.rs): `readable`/`writable` stay
//!   set until a call says EAGAIN.
//! - End of file passes through both ways (a local EOF sends a FIN; a FIN
//!   shuts the local socket's write side); a reset from the far side
//!   closes the local socket with a reset, and a local error aborts the
//!   TCP connection (a RST goes to the far side).

use std::os::fd::{AsRawFd, OwnedFd};

use smoltcp::socket::tcp::{Socket, State};

use super::fd;

/// What pumping left the flow as.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// Still moving bytes (or waiting to).
    Open,
    /// Both directions have ended, or one failed; the local socket is
    /// closed and the TCP socket goes once its closing is done.
    Finished,
}

pub(crate) struct Splice {
    pub(crate) fd: OwnedFd,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    local_eof: bool,
    remote_eof: bool,
}

impl Splice {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        // Whatever readiness the socket had before it was watched is not
        // reported again by an edge-triggered poller: assume both.
        Self {
            fd,
            readable: true,
            writable: true,
            local_eof: false,
            remote_eof: false,
        }
    }

    /// Moves what can move now, both ways.
    pub(crate) fn pump(&mut self, sock: &mut Socket<'_>) -> Pumped {
        if sock.state() == State::Closed && !(self.local_eof && self.remote_eof) {
            return Pumped::Finished; // reset or timed out: the caller resets the local socket
        }
        if self.pump_to_local(sock).is_err() || self.pump_from_local(sock).is_err() {
            sock.abort();
            return Pumped::Finished;
        }
        if self.local_eof && self.remote_eof {
            Pumped::Finished
        } else {
            Pumped::Open
        }
    }

    /// Whether the connection ended in order (both FINs), as opposed to a
    /// reset, a timeout or an error.
    pub(crate) fn ended_cleanly(&self) -> bool {
        self.local_eof && self.remote_eof
    }

    /// The far side's data (and its FIN) to the local socket.
    fn pump_to_local(&mut self, sock: &mut Socket<'_>) -> Result<(), ()> {
        let raw = self.fd.as_raw_fd();
        while self.writable && sock.can_recv() {
            let sent = sock.recv(|buf| match fd::send(raw, buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match sent {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if fd::would_block(&e) => self.writable = false,
                Ok(Err(_)) => return Err(()),
                Err(_) => break,
            }
        }
        let fin_seen = matches!(
            sock.state(),
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        );
        if fin_seen && !self.remote_eof && !sock.can_recv() {
            fd::shutdown_write(raw);
            self.remote_eof = true;
        }
        Ok(())
    }

    /// The local socket's data (and its end of file) to the far side.
    fn pump_from_local(&mut self, sock: &mut Socket<'_>) -> Result<(), ()> {
        let raw = self.fd.as_raw_fd();
        while self.readable && !self.local_eof && sock.can_send() {
            let read = sock.send(|buf| match fd::recv(raw, buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match read {
                Ok(Ok(0)) => {
                    self.local_eof = true;
                    sock.close();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if fd::would_block(&e) => self.readable = false,
                Ok(Err(_)) => return Err(()),
                Err(_) => break,
            }
        }
        Ok(())
    }
}
