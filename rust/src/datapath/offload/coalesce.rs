//! Coalescing decrypted packets into GSO writes to the TUN device, like the
//! kernel's GRO: the kernel's stack then handles one packet instead of dozens
//! (and a UDP socket that does not ask for GRO gets the datagrams back one by
//! one, exactly as sent).
//!
//! - TCP: a segment joins the pending packet only when the kernel's own GRO
//!   would merge it: same addresses, ports, ack, window, flags (ACK, with
//!   PSH allowed on the last) and options; the next sequence number.
//! - UDP (only when the device accepted UDP segmentation offload): same
//!   addresses and ports.
//! - Both: a payload no larger than the first one's, and only the last may
//!   be shorter; no IPv4 options or fragments; at most 64 KiB and 64
//!   packets in all (the kernel's UDP_MAX_SEGMENTS; for TCP it keeps the
//!   gather list far below writev's IOV_MAX when segments are small).
//!   Anything else is written on its own.
//! - No copies of payloads: a coalescer lives for one batch and borrows the
//!   packets pushed into it (the receive buffers they were opened in). Only
//!   the first packet's headers are copied, to be rewritten for the train;
//!   the write is a gather list (vnet header and headers, then each payload)
//!   that goes to `writev`. The batch is flushed before its buffers go back.

use std::io::IoSlice;

use super::{
    fold, Layout, VnetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, PROTO_TCP,
    PROTO_UDP, VNET_HDR_LEN,
};

const MAX_COALESCED: usize = 65535;
const MAX_SEGMENTS: usize = 64;
/// Headers a candidate can have: IPv6 (40) and TCP with options (60).
const MAX_HEADERS: usize = 100;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

pub struct Coalescer<'a> {
    /// The vnet header, then the pending packet's headers (`head_len` in all).
    head: [u8; VNET_HDR_LEN + MAX_HEADERS],
    head_len: usize,
    /// The pending packet's payloads, in order, borrowed from the packets
    /// (as many as packets in the train).
    parts: Vec<&'a [u8]>,
    /// Bytes of the pending packet (headers and payloads).
    total: usize,
    /// The pending packet's layout; None when nothing is pending.
    pending: Option<Layout>,
    /// Payload size of the first packet: the GSO size.
    segment: usize,
    next_seq: u32,
    closed: bool,
    udp: bool,
}

impl<'a> Coalescer<'a> {
    /// `udp`: UDP datagrams may be coalesced too (the TUN device accepted
    /// TUN_F_USO4/6, so the kernel takes UDP_L4 GSO writes).
    pub fn new(udp: bool) -> Self {
        Self {
            head: [0; VNET_HDR_LEN + MAX_HEADERS],
            head_len: VNET_HDR_LEN,
            parts: Vec::with_capacity(MAX_SEGMENTS),
            total: 0,
            pending: None,
            segment: 0,
            next_seq: 0,
            closed: false,
            udp,
        }
    }

    /// The packet's layout if it may be coalesced at all.
    fn candidate(&self, packet: &[u8]) -> Option<Layout> {
        let l = Layout::of(packet).ok()?;
        if !l.is_v6 && (l.ip_len != 20 || u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0)
        {
            return None;
        }
        if packet.len() == l.hdr || l.hdr > MAX_HEADERS {
            return None;
        }
        match l.proto {
            PROTO_TCP => {
                let flags = packet[l.ip_len + 13];
                (flags & !(TCP_ACK | TCP_PSH) == 0 && flags & TCP_ACK != 0).then_some(l)
            }
            PROTO_UDP => {
                let ulen = usize::from(u16::from_be_bytes([
                    packet[l.ip_len + 4],
                    packet[l.ip_len + 5],
                ]));
                (self.udp && ulen == packet.len() - l.ip_len).then_some(l)
            }
            _ => None,
        }
    }

    fn seq(packet: &[u8], ip_len: usize) -> u32 {
        u32::from_be_bytes([
            packet[ip_len + 4],
            packet[ip_len + 5],
            packet[ip_len + 6],
            packet[ip_len + 7],
        ])
    }

    /// Whether `packet` continues the pending one.
    fn continues(&self, packet: &[u8], l: Layout) -> bool {
        if self.pending != Some(l) || self.closed {
            return false;
        }
        let pending = &self.head[VNET_HDR_LEN..self.head_len];
        let payload = packet.len() - l.hdr;
        if payload > self.segment
            || self.total + payload > MAX_COALESCED
            || self.parts.len() >= MAX_SEGMENTS
        {
            return false;
        }
        let same = |a: usize, b: usize| pending[a..b] == packet[a..b];
        let ip_same = if l.is_v6 {
            same(0, 4) && same(6, 40)
        } else {
            same(0, 2) && same(6, 10) && same(12, 20)
        };
        let ports_same = same(l.ip_len, l.ip_len + 4);
        if l.proto == PROTO_UDP {
            return ip_same && ports_same;
        }
        let ip_len = l.ip_len;
        // Ack, data offset, window (not flags: PSH may differ); options.
        ip_same
            && ports_same
            && Self::seq(packet, ip_len) == self.next_seq
            && same(ip_len + 8, ip_len + 13)
            && same(ip_len + 14, ip_len + 16)
            && same(ip_len + 20, l.hdr)
            && pending[ip_len + 13] & !TCP_PSH == packet[ip_len + 13] & !TCP_PSH
    }

    /// Adds a decrypted packet; `write` is called for whatever must go out
    /// first (the pending packet, or this one when it cannot be held).
    pub fn push(&mut self, packet: &'a [u8], write: &mut impl FnMut(&[IoSlice<'_>])) {
        let Some(l) = self.candidate(packet) else {
            self.flush(write);
            let h = VnetHdr::data_valid();
            write(&[IoSlice::new(&h), IoSlice::new(packet)]);
            return;
        };
        let payload_len = packet.len() - l.hdr;
        if self.continues(packet, l) {
            self.parts.push(&packet[l.hdr..]);
            self.total += payload_len;
            self.next_seq = self.next_seq.wrapping_add(payload_len as u32);
            let psh = l.proto == PROTO_TCP && packet[l.ip_len + 13] & TCP_PSH != 0;
            // A shorter packet or a PSH ends the train.
            if payload_len < self.segment || psh {
                if psh {
                    self.head[VNET_HDR_LEN + l.ip_len + 13] |= TCP_PSH;
                }
                self.closed = true;
            }
            return;
        }
        self.flush(write);
        self.head_len = VNET_HDR_LEN + l.hdr;
        self.head[VNET_HDR_LEN..self.head_len].copy_from_slice(&packet[..l.hdr]);
        self.parts.push(&packet[l.hdr..]);
        self.total = packet.len();
        self.pending = Some(l);
        self.segment = payload_len;
        self.closed = false;
        if l.proto == PROTO_TCP {
            self.next_seq = Self::seq(packet, l.ip_len).wrapping_add(payload_len as u32);
            self.closed = packet[l.ip_len + 13] & TCP_PSH != 0;
        }
    }

    /// Writes the pending packet, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[IoSlice<'_>])) {
        let Some(l) = self.pending.take() else {
            return;
        };
        let vnet = if self.parts.len() == 1 {
            let mut h = VnetHdr::data_valid();
            h[1] = GSO_NONE;
            h
        } else {
            self.train_headers(l)
        };
        self.head[..VNET_HDR_LEN].copy_from_slice(&vnet);
        let mut iov = [IoSlice::new(&[]); 1 + MAX_SEGMENTS];
        iov[0] = IoSlice::new(&self.head[..self.head_len]);
        for (slot, part) in iov[1..].iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
        }
        write(&iov[..1 + self.parts.len()]);
        self.parts.clear();
        self.closed = false;
    }

    /// Rewrites the pending headers for a train of several packets; returns
    /// its vnet header.
    fn train_headers(&mut self, l: Layout) -> [u8; VNET_HDR_LEN] {
        let total = self.total;
        let p = &mut self.head[VNET_HDR_LEN..self.head_len];
        // Cannot fail: the total was kept within MAX_COALESCED.
        let _ = l.set_lengths(p, total);
        // Partial checksum: the pseudo-header sum; the kernel finishes it
        // (or trusts it) per segment, as for any locally built GSO packet.
        let pseudo = fold(l.pseudo_header_sum(p, total - l.ip_len));
        let field = l.ip_len + l.csum_offset();
        p[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        let gso_type = match (l.proto, l.is_v6) {
            (PROTO_UDP, _) => GSO_UDP_L4,
            (_, true) => GSO_TCPV6,
            (_, false) => GSO_TCPV4,
        };
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: l.hdr as u16,
            gso_size: self.segment as u16,
            csum_start: l.ip_len as u16,
            csum_offset: l.csum_offset() as u16,
        }
        .to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{segment_tcp, split_read, F_DATA_VALID};
    use super::*;

    /// A TCP packet cut into segments of `mss` payload bytes.
    fn tcp_pieces(big: Vec<u8>, mss: usize) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        segment_tcp(&big, mss, &mut Vec::new(), |p| pieces.push(p.to_vec())).expect("segment");
        pieces
    }

    /// writev's limit on pieces (IOV_MAX on Linux).
    const IOV_MAX: usize = 1024;

    fn coalesce<'a>(c: &mut Coalescer<'a>, packets: &'a [Vec<u8>]) -> Vec<Vec<u8>> {
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut w = |iov: &[IoSlice<'_>]| {
            assert!(
                iov.len() <= IOV_MAX,
                "{} pieces: writev refuses them",
                iov.len()
            );
            writes.push(iov.iter().flat_map(|s| s.iter().copied()).collect())
        };
        for p in packets {
            c.push(p, &mut w);
        }
        c.flush(&mut w);
        writes
    }

    #[test]
    fn coalesced_train_resegments_to_the_original() {
        // Cut a big packet, coalesce the pieces, cut the result again: same pieces.
        let pieces = tcp_pieces(tcp_v4(5000, 0x10 | TCP_PSH), 1400);
        let mut scratch = Vec::new();
        let writes = coalesce(&mut Coalescer::new(false), &pieces);
        assert_eq!(writes.len(), 1, "one write for the whole train");
        let h = VnetHdr::parse(&writes[0]).expect("hdr");
        assert_eq!(
            (h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
            (GSO_TCPV4, 1400, 20, 16)
        );
        assert_eq!(h.flags, F_NEEDS_CSUM);
        let mut again: Vec<Vec<u8>> = Vec::new();
        let mut read = writes[0].clone();
        split_read(&mut read, &mut scratch, |p| again.push(p.to_vec())).expect("re-segment");
        assert_eq!(again, pieces);
    }

    #[test]
    fn a_train_of_small_segments_stays_within_writev_limits() {
        // 2,000 segments of 10 bytes fit in 64 KiB, but not in one writev.
        let pieces = tcp_pieces(tcp_v4(20_000, 0x10), 10);
        let mut scratch = Vec::new();
        let writes = coalesce(&mut Coalescer::new(false), &pieces);
        assert_eq!(writes.len(), pieces.len().div_ceil(MAX_SEGMENTS));
        let mut again: Vec<Vec<u8>> = Vec::new();
        for w in &writes {
            let mut read = w.clone();
            split_read(&mut read, &mut scratch, |p| again.push(p.to_vec())).expect("split");
        }
        assert_eq!(again, pieces);
    }

    #[test]
    fn coalescing_stops_at_gaps_and_other_flows() {
        let pieces = tcp_pieces(tcp_v4(4200, 0x10), 1400);
        let mut other = pieces[1].clone();
        other[22] ^= 1; // another destination port
        let udp_packet = udp(false, 100);
        let packets = [
            pieces[0].clone(),
            pieces[2].clone(),
            other,
            udp_packet.clone(),
        ];
        let writes = coalesce(&mut Coalescer::new(false), &packets);
        assert_eq!(writes.len(), 4);
        for wbuf in &writes {
            let h = VnetHdr::parse(wbuf).expect("hdr");
            assert_eq!(h.gso_type, GSO_NONE, "nothing coalesced");
            assert_eq!(h.flags, F_DATA_VALID);
        }
        assert_eq!(&writes[3][VNET_HDR_LEN..], &udp_packet[..]);
    }

    /// Datagrams of one flow, `sizes` bytes of payload each, with distinct contents.
    fn datagrams(v6: bool, sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut p = udp(v6, n);
                let l = Layout::of(&p).expect("udp");
                p[l.hdr] = i as u8;
                l.set_transport_checksum(&mut p);
                if !v6 {
                    // Consecutive IPv4 ids, as a connected socket sends them.
                    p[4..6].copy_from_slice(&(0xfff0u16.wrapping_add(i as u16)).to_be_bytes());
                    let total = p.len();
                    l.set_lengths(&mut p, total).expect("lengths");
                }
                p
            })
            .collect()
    }

    #[test]
    fn udp_datagrams_coalesce_and_resegment_to_the_originals() {
        for v6 in [false, true] {
            let sent = datagrams(v6, &[1200, 1200, 1200, 700]);
            let writes = coalesce(&mut Coalescer::new(true), &sent);
            assert_eq!(writes.len(), 1, "one write (v6 {v6})");
            let h = VnetHdr::parse(&writes[0]).expect("hdr");
            let ip_len = if v6 { 40 } else { 20 };
            assert_eq!(
                (
                    h.flags,
                    h.gso_type,
                    h.hdr_len,
                    h.gso_size,
                    h.csum_start,
                    h.csum_offset
                ),
                (F_NEEDS_CSUM, GSO_UDP_L4, ip_len + 8, 1200, ip_len, 6)
            );
            // What the kernel does with it for a socket without UDP GRO.
            let mut read = writes[0].clone();
            let mut again: Vec<Vec<u8>> = Vec::new();
            split_read(&mut read, &mut Vec::new(), |p| again.push(p.to_vec())).expect("split");
            assert_eq!(again, sent, "the same datagrams, byte for byte (v6 {v6})");
        }
    }

    #[test]
    fn udp_coalescing_limits() {
        // Off unless the device took UDP segmentation offload.
        let sent = datagrams(false, &[500, 500]);
        assert_eq!(coalesce(&mut Coalescer::new(false), &sent).len(), 2);
        // A larger datagram after a smaller one, and anything after a short one, start anew.
        let sent = datagrams(false, &[500, 600, 600, 100, 600]);
        let writes = coalesce(&mut Coalescer::new(true), &sent);
        let counts: Vec<usize> = writes
            .iter()
            .map(|w| {
                let mut r = w.clone();
                split_read(&mut r, &mut Vec::new(), |_| {}).expect("split")
            })
            .collect();
        assert_eq!(counts, [1, 3, 1]);
        // At most 64 datagrams per write.
        let sent = datagrams(true, &[100; 130]);
        let writes = coalesce(&mut Coalescer::new(true), &sent);
        assert_eq!(writes.len(), 3);
        // Another flow, a fragment, a lying UDP length: never merged.
        let base = datagrams(false, &[300, 300]);
        let mut port = base[1].clone();
        port[21] ^= 1;
        let mut frag = base[1].clone();
        frag[6] |= 0x20; // MF
        let mut ulen = base[1].clone();
        ulen[25] ^= 1;
        for odd in [port, frag, ulen] {
            let writes = coalesce(&mut Coalescer::new(true), &[base[0].clone(), odd]);
            assert_eq!(writes.len(), 2);
        }
    }
}
