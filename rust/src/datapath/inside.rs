//! The inside of the tunnel: where decrypted packets go and where packets to
//! encrypt come from. Everything else (routing, cryptography, handshakes,
//! roaming, holding, counters) is the same whichever inside a device has.
//!
//! - `Inside::Tun`: a TUN device, one or more queues (a multi-queue device
//!   has one per lane). Each lane (lanes.rs) reads its queue (tx.rs) and
//!   writes what it receives to it (rx.rs), through the coalescer with
//!   offloads.
//! - `Inside::Stack`: a userspace network stack (crate::netstack). The
//!   receive threads hand it each decrypted, source-checked packet
//!   (`PacketSink::deliver`) and say when a receive batch ends
//!   (`PacketSink::batch_done`), so the stack is woken once per batch; the
//!   stack's own thread sends through an `InsideSender`, which takes the
//!   same routing, sealing and sending as a TUN read (tx.rs
//!   `route_and_send`). The lanes then serve only their sockets.
//! - A sink never blocks a receive thread: a full stack drops the packet
//!   (TCP retransmits it), as a full TUN queue does.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::messages::TRANSPORT_HEADER_LEN;

use super::{tx, Shared};

/// Takes decrypted packets from the receive threads.
pub trait PacketSink: Send + Sync {
    /// One decrypted IP packet whose source routes back to its peer.
    fn deliver(&self, packet: &[u8]);
    /// A receive batch ended: wake whatever consumes the packets.
    fn batch_done(&self);
}

/// The device's inside (see the module notes).
pub(crate) enum Inside {
    /// The TUN device's queues, the caller's first.
    Tun(Vec<OwnedFd>),
    Stack(Arc<dyn PacketSink>),
}

impl Inside {
    /// The TUN descriptor; -1 for a stack, whose packets never reach the
    /// TUN paths (a write there would fail with EBADF and be counted).
    pub(crate) fn tun_fd(&self) -> RawFd {
        match self {
            Inside::Tun(queues) => queues.first().map_or(-1, |q| q.as_raw_fd()),
            Inside::Stack(_) => -1,
        }
    }

    /// The TUN device's queues (none for a stack).
    pub(crate) fn tun_queues(&self) -> &[OwnedFd] {
        match self {
            Inside::Tun(queues) => queues,
            Inside::Stack(_) => &[],
        }
    }

    /// The stack, if packets go to one rather than to a TUN device.
    pub(crate) fn stack(&self) -> Option<&dyn PacketSink> {
        match self {
            Inside::Tun(_) => None,
            Inside::Stack(sink) => Some(sink.as_ref()),
        }
    }
}

/// Room a packet to send needs before it in its buffer (the transport
/// header is written there when it is encrypted in place).
pub const SEND_HEADROOM: usize = TRANSPORT_HEADER_LEN;

/// The smallest buffer that can carry a packet of `mtu` bytes through
/// `InsideSender::send`: headroom, padding to 16 and the tag.
pub fn send_buffer_len(mtu: usize) -> usize {
    SEND_HEADROOM + mtu + 16 + 16
}

/// How a userspace stack sends packets into the tunnel: routed by
/// destination, encrypted and sent exactly as TUN reads are.
#[derive(Clone)]
pub struct InsideSender {
    shared: Arc<Shared>,
}

impl InsideSender {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Sends packets that start SEND_HEADROOM bytes into their buffers
    /// (`lens[i]` bytes each; every buffer at least `send_buffer_len(mtu)`
    /// long). The buffers are overwritten.
    pub fn send(&self, bufs: &mut [Vec<u8>], lens: &[usize]) {
        tx::route_and_send(&self.shared, bufs, lens);
    }

    /// The tunnel MTU the device pads to.
    pub fn mtu(&self) -> usize {
        self.shared.mtu.load(Ordering::Relaxed)
    }
}
