//! Cutting a GSO packet read from the TUN device into the packets it stands
//! for, as the kernel's own segmentation would: copied headers with fixed-up
//! lengths, IPv4 id (incremented per piece) and header checksum, and a full
//! transport checksum per piece. TCP also gets its sequence number advanced
//! and FIN/PSH only on the last piece, CWR only on the first.
//!
//! Each piece is written straight into the buffer it will be encrypted in
//! (`Segments::write`), its payload copied once and summed while it is in
//! the cache (checksum.rs).

use super::checksum::{add, copy_and_sum, fold, sum16};
use super::{Layout, OffloadError, PROTO_TCP, PROTO_UDP};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A TSO or UDP GSO packet and how to cut it.
pub struct Segments<'a> {
    packet: &'a [u8],
    layout: Layout,
    gso_size: usize,
    pieces: usize,
    seq0: u32,
    id0: u16,
}

impl<'a> Segments<'a> {
    /// A TCP (TSO) or UDP (UDP_L4) GSO packet with `gso_size` payload bytes per piece.
    pub fn new(packet: &'a [u8], proto: u8, gso_size: usize) -> Result<Self, OffloadError> {
        if gso_size == 0 {
            return Err(OffloadError::Malformed);
        }
        let layout = Layout::of(packet)?;
        if layout.proto != proto {
            return Err(OffloadError::Unsupported);
        }
        let at = |i: usize| packet[layout.ip_len + i];
        let payload = packet.len() - layout.hdr;
        Ok(Self {
            packet,
            layout,
            gso_size,
            // A GSO packet without payload still yields one (header-only) packet.
            pieces: payload.div_ceil(gso_size).max(1),
            seq0: u32::from_be_bytes([at(4), at(5), at(6), at(7)]),
            id0: u16::from_be_bytes([packet[4], packet[5]]),
        })
    }

    /// How many packets this one stands for.
    pub fn count(&self) -> usize {
        self.pieces
    }

    fn chunk(&self, i: usize) -> &'a [u8] {
        let payload = &self.packet[self.layout.hdr..];
        let start = (i * self.gso_size).min(payload.len());
        &payload[start..(start + self.gso_size).min(payload.len())]
    }

    /// Writes piece `i` into the start of `out`; returns its length.
    pub fn write(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        let (l, hdr) = (&self.layout, self.layout.hdr);
        let chunk = self.chunk(i);
        let total = hdr + chunk.len();
        if i >= self.pieces || out.len() < total {
            return Err(OffloadError::Malformed);
        }
        let out = &mut out[..total];
        out[..hdr].copy_from_slice(&self.packet[..hdr]);
        let payload_sum = copy_and_sum(&mut out[hdr..], chunk, 0);
        if !l.is_v6 {
            out[4..6].copy_from_slice(&self.id0.wrapping_add(i as u16).to_be_bytes());
        }
        l.set_lengths(out, total)?;
        if l.proto == PROTO_TCP {
            self.fix_tcp(out, i);
        }
        let field = l.ip_len + l.csum_offset();
        out[field..field + 2].fill(0);
        let header_sum = sum16(
            &out[l.ip_len..hdr],
            l.pseudo_header_sum(out, total - l.ip_len),
        );
        let mut c = !fold(add(header_sum, payload_sum));
        if c == 0 && l.proto == PROTO_UDP {
            c = 0xffff; // zero means "no checksum" in UDP
        }
        out[field..field + 2].copy_from_slice(&c.to_be_bytes());
        Ok(total)
    }

    fn fix_tcp(&self, out: &mut [u8], i: usize) {
        let ip_len = self.layout.ip_len;
        let seq = self.seq0.wrapping_add((i * self.gso_size) as u32);
        out[ip_len + 4..ip_len + 8].copy_from_slice(&seq.to_be_bytes());
        let flags = &mut out[ip_len + 13];
        if i + 1 != self.pieces {
            *flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            *flags &= !TCP_CWR;
        }
    }
}

/// Cuts a TSO packet into MSS-sized TCP/IP packets. `emit` gets each piece
/// in order (built in `scratch`); returns how many were emitted.
pub fn segment_tcp(
    packet: &[u8],
    gso_size: usize,
    scratch: &mut Vec<u8>,
    emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    segment(Segments::new(packet, PROTO_TCP, gso_size)?, scratch, emit)
}

/// Cuts a UDP GSO packet (UDP_SEGMENT) into datagrams of `gso_size` payload
/// bytes (the last may be shorter).
pub fn segment_udp(
    packet: &[u8],
    gso_size: usize,
    scratch: &mut Vec<u8>,
    emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    segment(Segments::new(packet, PROTO_UDP, gso_size)?, scratch, emit)
}

fn segment(
    segments: Segments<'_>,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    scratch.resize(segments.packet.len(), 0);
    for i in 0..segments.count() {
        let n = segments.write(i, scratch)?;
        emit(&scratch[..n]);
    }
    Ok(segments.count())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{split_read, VnetHdr, F_NEEDS_CSUM, GSO_UDP_L4};
    use super::*;

    #[test]
    fn v4_segments_are_valid_and_reassemble() {
        let big = tcp_v4(5000, TCP_PSH | TCP_FIN | TCP_CWR | 0x10);
        let mut scratch = Vec::new();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let n = segment_tcp(&big, 1400, &mut scratch, |p| out.push(p.to_vec())).expect("segment");
        assert_eq!(n, 4);
        assert_eq!(out.len(), 4);
        let mut data = Vec::new();
        for (i, p) in out.iter().enumerate() {
            assert!(valid(p), "segment {i} checksums");
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            assert_eq!(
                u16::from_be_bytes([p[4], p[5]]),
                0xfff0u16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
            assert_eq!(
                seq,
                0xffff_fff0u32.wrapping_add((i * 1400) as u32),
                "sequence wraps"
            );
            let flags = p[33];
            assert_eq!(
                flags & (TCP_FIN | TCP_PSH) != 0,
                i == 3,
                "FIN/PSH only on the last"
            );
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert_eq!(&p[20..24], &big[20..24], "ports copied");
            assert_eq!(&p[40..52], &big[40..52], "TCP options copied");
            data.extend_from_slice(&p[52..]);
        }
        assert_eq!(data, big[52..].to_vec(), "payload intact and in order");
        assert_eq!(out[3].len(), 52 + 5000 - 3 * 1400);
    }

    #[test]
    fn v6_segments_are_valid() {
        let big = tcp_v6(3000);
        let mut scratch = Vec::new();
        let mut out: Vec<Vec<u8>> = Vec::new();
        segment_tcp(&big, 1000, &mut scratch, |p| out.push(p.to_vec())).expect("segment");
        assert_eq!(out.len(), 3);
        for p in &out {
            assert!(valid(p));
            assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])) + 40, p.len());
        }
    }

    #[test]
    fn udp_gso_read_becomes_datagrams() {
        for v6 in [false, true] {
            let big = udp(v6, 3000);
            let ip_len = if v6 { 40 } else { 20 };
            // What the kernel hands over for UDP_SEGMENT: UDP_L4 with a partial checksum.
            let mut read = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_UDP_L4,
                hdr_len: (ip_len + 8) as u16,
                gso_size: 1200,
                csum_start: ip_len as u16,
                csum_offset: 6,
            }
            .to_bytes()
            .to_vec();
            read.extend_from_slice(&big);
            let mut scratch = Vec::new();
            let mut out: Vec<Vec<u8>> = Vec::new();
            let n = split_read(&mut read, &mut scratch, |p| out.push(p.to_vec())).expect("split");
            assert_eq!(n, 3);
            let mut data = Vec::new();
            for (i, p) in out.iter().enumerate() {
                assert!(valid(p), "datagram {i} checksums (v6 {v6})");
                let ulen = usize::from(u16::from_be_bytes([p[ip_len + 4], p[ip_len + 5]]));
                assert_eq!(ulen, p.len() - ip_len, "UDP length");
                assert_eq!(&p[ip_len..ip_len + 4], &big[ip_len..ip_len + 4], "ports");
                data.extend_from_slice(&p[ip_len + 8..]);
            }
            assert_eq!(out[2].len(), ip_len + 8 + 600, "the last is shorter");
            assert_eq!(
                data,
                big[ip_len + 8..].to_vec(),
                "payload intact and in order"
            );
        }
    }

    #[test]
    fn refusals_and_malformed_input() {
        let mut scratch = Vec::new();
        assert_eq!(
            segment_tcp(&udp(false, 10), 100, &mut scratch, |_| {}),
            Err(OffloadError::Unsupported)
        );
        assert_eq!(
            segment_udp(&tcp_v4(10, 0x10), 100, &mut scratch, |_| {}),
            Err(OffloadError::Unsupported)
        );
        assert_eq!(
            segment_tcp(&tcp_v4(10, 0), 0, &mut scratch, |_| {}),
            Err(OffloadError::Malformed)
        );
        assert_eq!(
            segment_tcp(&[0x45, 0, 0], 100, &mut scratch, |_| {}),
            Err(OffloadError::Unsupported)
        );
        assert_eq!(
            segment_tcp(&[], 100, &mut scratch, |_| {}),
            Err(OffloadError::Malformed)
        );
        // A header-only TSO packet still goes out once.
        let mut n = 0;
        segment_tcp(&tcp_v4(0, 0x10), 100, &mut scratch, |_| n += 1).expect("segment");
        assert_eq!(n, 1);
    }
}
