//! The smoltcp device of the stack: its "wire" is the tunnel.
//!
//! - Receive: decrypted packets taken from the inbound queue. WireGuard
//!   has authenticated them, so their checksums are not verified again
//!   (as the kernel module marks them CHECKSUM_UNNECESSARY); checksums
//!   are computed for what is sent, since the far side checks them.
//! - Transmit: packets are built in place in a batch of buffers, at the
//!   offset the data plane encrypts them at, and sent a batch at a time
//!   through the data plane's send path (`InsideSender`).

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::datapath::{send_buffer_len, InsideSender, SEND_HEADROOM};

/// Packets sent through the data plane in one call at most.
const TX_BATCH: usize = 64;

/// Packets built by smoltcp, waiting to be encrypted and sent.
pub(crate) struct TxBatch {
    sender: InsideSender,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl TxBatch {
    fn new(sender: InsideSender, mtu: usize) -> Self {
        Self {
            sender,
            bufs: (0..TX_BATCH)
                .map(|_| vec![0u8; send_buffer_len(mtu)])
                .collect(),
            lens: Vec::with_capacity(TX_BATCH),
        }
    }

    /// Encrypts and sends what is batched.
    pub(crate) fn flush(&mut self) {
        let n = self.lens.len();
        if n > 0 {
            self.sender.send(&mut self.bufs[..n], &self.lens);
            self.lens.clear();
        }
    }
}

pub(crate) struct TunnelDevice {
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// Buffers of consumed packets, handed back to the inbound queue.
    pub(crate) used: Vec<Vec<u8>>,
    pub(crate) tx: TxBatch,
    mtu: usize,
}

impl TunnelDevice {
    pub(crate) fn new(sender: InsideSender, mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            used: Vec::new(),
            tx: TxBatch::new(sender, mtu),
            mtu,
        }
    }
}

pub(crate) struct RxToken<'a> {
    packet: Vec<u8>,
    used: &'a mut Vec<Vec<u8>>,
}

pub(crate) struct TxToken<'a> {
    batch: &'a mut TxBatch,
    mtu: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.packet);
        self.used.push(self.packet);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.batch.lens.len() == TX_BATCH {
            self.batch.flush();
        }
        let i = self.batch.lens.len();
        // smoltcp never builds a packet past the MTU it was given; clamp anyway
        // so a bug there cannot index past the buffer.
        let len = len.min(self.mtu);
        let r = f(&mut self.batch.bufs[i][SEND_HEADROOM..SEND_HEADROOM + len]);
        self.batch.lens.push(len);
        r
    }
}

impl phy::Device for TunnelDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        let rx = RxToken {
            packet,
            used: &mut self.used,
        };
        let tx = TxToken {
            batch: &mut self.tx,
            mtu: self.mtu,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            batch: &mut self.tx,
            mtu: self.mtu,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
