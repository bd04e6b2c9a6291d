//! TUN offloads (IFF_VNET_HDR): what the kernel hands over with a virtio-net
//! header, turned into ordinary IP packets, and the header written back.
//!
//! - Every read starts with a 10-byte virtio_net_hdr (little-endian on the
//!   hosts we run on): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
//! - NEEDS_CSUM: the transport checksum is partial (the pseudo-header sum is
//!   in the checksum field); finish it over everything from csum_start.
//! - TCPV4/TCPV6 with gso_size: one large TCP segment to cut into gso_size
//!   payload pieces, each with copied headers and fixed-up lengths, IPv4 id
//!   and header checksum, TCP sequence number, flags (FIN/PSH only on the
//!   last piece, CWR only on the first) and a full TCP checksum.
//! - Anything else we were not asked to handle (UDP GSO, extension headers
//!   before TCP, ECN GSO) is refused, so the caller drops the packet rather
//!   than sending a wrong one.
//! - Writes get a header saying DATA_VALID: the AEAD already proved the
//!   packet intact, so the kernel need not verify its checksums again.

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The header we put in front of every packet written to the TUN device.
    pub fn data_valid() -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = F_DATA_VALID;
        h
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    Malformed,
    Unsupported,
}

/// Ones' complement sum of `data` (big-endian 16-bit words) added to `sum`.
pub fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a partial checksum (NEEDS_CSUM) in place.
pub fn finish_checksum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let field = start.checked_add(offset).ok_or(OffloadError::Malformed)?;
    if field + 2 > packet.len() || start >= packet.len() {
        return Err(OffloadError::Malformed);
    }
    let sum = !fold(sum16(&packet[start..], 0));
    packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

fn pseudo_header_sum(packet: &[u8], is_v6: bool, transport_len: usize) -> u64 {
    let mut sum = 0;
    if is_v6 {
        sum = sum16(&packet[8..40], sum);
        sum += transport_len as u64;
    } else {
        sum = sum16(&packet[12..20], sum);
        sum += transport_len as u64;
    }
    sum + u64::from(PROTO_TCP)
}

/// Where the IP and TCP headers of a TCP packet end.
fn tcp_headers(packet: &[u8]) -> Result<(bool, usize, usize), OffloadError> {
    let version = packet.first().ok_or(OffloadError::Malformed)? >> 4;
    let (is_v6, ip_len) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl || packet[9] != PROTO_TCP {
                return Err(OffloadError::Unsupported);
            }
            (false, ihl)
        }
        6 => {
            if packet.len() < 40 || packet[6] != PROTO_TCP {
                return Err(OffloadError::Unsupported);
            }
            (true, 40)
        }
        _ => return Err(OffloadError::Malformed),
    };
    let tcp_len = usize::from(packet.get(ip_len + 12).ok_or(OffloadError::Malformed)? >> 4) * 4;
    if tcp_len < 20 || packet.len() < ip_len + tcp_len {
        return Err(OffloadError::Malformed);
    }
    Ok((is_v6, ip_len, tcp_len))
}

/// Cuts a TSO packet into MSS-sized TCP/IP packets. `emit` gets each piece
/// in order (as a contiguous packet); returns how many were emitted.
pub fn segment_tcp(
    packet: &[u8],
    gso_size: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if gso_size == 0 {
        return Err(OffloadError::Malformed);
    }
    let (is_v6, ip_len, tcp_len) = tcp_headers(packet)?;
    let hdr = ip_len + tcp_len;
    let payload = &packet[hdr..];
    let seq0 = u32::from_be_bytes([
        packet[ip_len + 4],
        packet[ip_len + 5],
        packet[ip_len + 6],
        packet[ip_len + 7],
    ]);
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let flags0 = packet[ip_len + 13];
    let pieces = payload.len().div_ceil(gso_size).max(1);
    for (i, chunk) in payload.chunks(gso_size).enumerate().chain(
        // A TSO packet without payload still yields one (header-only) packet.
        (payload.is_empty()).then_some((0, &payload[..0])),
    ) {
        scratch.clear();
        scratch.extend_from_slice(&packet[..hdr]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        let last = i + 1 == pieces;
        if is_v6 {
            let plen = u16::try_from(total - 40).map_err(|_| OffloadError::Malformed)?;
            scratch[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tot = u16::try_from(total).map_err(|_| OffloadError::Malformed)?;
            scratch[2..4].copy_from_slice(&tot.to_be_bytes());
            scratch[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            scratch[10..12].fill(0);
            let c = !fold(sum16(&scratch[..ip_len], 0));
            scratch[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * gso_size) as u32);
        scratch[ip_len + 4..ip_len + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        scratch[ip_len + 13] = flags;
        scratch[ip_len + 16..ip_len + 18].fill(0);
        let sum = pseudo_header_sum(scratch, is_v6, total - ip_len);
        let c = !fold(sum16(&scratch[ip_len..], sum));
        scratch[ip_len + 16..ip_len + 18].copy_from_slice(&c.to_be_bytes());
        emit(scratch);
    }
    Ok(pieces)
}

/// Turns one TUN read (virtio header + packet) into plain IP packets.
pub fn split_read(
    read: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let h = VnetHdr::parse(read).ok_or(OffloadError::Malformed)?;
    let packet = &mut read[VNET_HDR_LEN..];
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {
            if h.flags & F_NEEDS_CSUM != 0 {
                finish_checksum(
                    packet,
                    usize::from(h.csum_start),
                    usize::from(h.csum_offset),
                )?;
            }
            emit(packet);
            Ok(1)
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(packet, usize::from(h.gso_size), scratch, emit),
        _ => Err(OffloadError::Unsupported),
    }
}

/// Coalesces consecutive TCP segments of one flow into a single GSO packet
/// for one TUN write (the kernel's TCP stack then handles one packet instead
/// of dozens). A segment joins the pending packet only when the kernel's own
/// GRO would merge it: same addresses, ports, ack, window, flags (ACK, with
/// PSH allowed on the last) and options; the next sequence number; a payload
/// no larger than the first one's, and only the last may be shorter. No IP
/// options or fragments. Anything else is written on its own.
pub struct Coalescer {
    buf: Vec<u8>,
    /// Header length (IP + TCP) of the pending packet; 0 when nothing is pending.
    hdr: usize,
    ip_len: usize,
    is_v6: bool,
    segment: usize,
    count: usize,
    next_seq: u32,
    closed: bool,
}

const MAX_COALESCED: usize = 65535;
const TCP_ACK: u8 = 0x10;

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(VNET_HDR_LEN + MAX_COALESCED);
        buf.resize(VNET_HDR_LEN, 0);
        Self {
            buf,
            hdr: 0,
            ip_len: 0,
            is_v6: false,
            segment: 0,
            count: 0,
            next_seq: 0,
            closed: false,
        }
    }

    /// The TCP segment's shape if it may be coalesced at all.
    fn candidate(packet: &[u8]) -> Option<(bool, usize, usize)> {
        let (is_v6, ip_len, tcp_len) = tcp_headers(packet).ok()?;
        if !is_v6 && (ip_len != 20 || u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0) {
            return None;
        }
        let flags = packet[ip_len + 13];
        if flags & !(TCP_ACK | TCP_PSH) != 0
            || flags & TCP_ACK == 0
            || packet.len() == ip_len + tcp_len
        {
            return None;
        }
        Some((is_v6, ip_len, tcp_len))
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
    fn continues(&self, packet: &[u8], is_v6: bool, ip_len: usize, tcp_len: usize) -> bool {
        if self.hdr == 0 || self.closed || is_v6 != self.is_v6 || ip_len + tcp_len != self.hdr {
            return false;
        }
        let pending = &self.buf[VNET_HDR_LEN..];
        let payload = packet.len() - self.hdr;
        if payload > self.segment
            || pending.len() + payload > MAX_COALESCED
            || Self::seq(packet, ip_len) != self.next_seq
        {
            return false;
        }
        let same = |a: usize, b: usize| pending[a..b] == packet[a..b];
        let ip_same = if is_v6 {
            same(0, 4) && same(6, 40)
        } else {
            same(0, 2) && same(6, 10) && same(12, 20)
        };
        // Ports; ack, data offset, window (not flags: PSH may differ); options.
        ip_same
            && same(ip_len, ip_len + 4)
            && same(ip_len + 8, ip_len + 13)
            && same(ip_len + 14, ip_len + 16)
            && same(ip_len + 20, self.hdr)
            && pending[ip_len + 13] & !TCP_PSH == packet[ip_len + 13] & !TCP_PSH
    }

    /// Adds a decrypted packet; `write` is called for whatever must go out
    /// first (the pending packet, or this one when it cannot be held).
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        let Some((is_v6, ip_len, tcp_len)) = Self::candidate(packet) else {
            self.flush(write);
            self.write_alone(packet, write);
            return;
        };
        if self.continues(packet, is_v6, ip_len, tcp_len) {
            let payload = &packet[self.hdr..];
            self.buf.extend_from_slice(payload);
            self.count += 1;
            self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
            // A shorter segment or a PSH ends the train.
            if payload.len() < self.segment || packet[ip_len + 13] & TCP_PSH != 0 {
                self.buf[VNET_HDR_LEN + ip_len + 13] |= packet[ip_len + 13] & TCP_PSH;
                self.closed = true;
            }
            return;
        }
        self.flush(write);
        self.buf.truncate(VNET_HDR_LEN);
        self.buf.extend_from_slice(packet);
        self.hdr = ip_len + tcp_len;
        self.ip_len = ip_len;
        self.is_v6 = is_v6;
        self.segment = packet.len() - self.hdr;
        self.count = 1;
        self.next_seq = Self::seq(packet, ip_len).wrapping_add(self.segment as u32);
        self.closed = packet[ip_len + 13] & TCP_PSH != 0;
    }

    /// Writes a packet that cannot be coalesced (nothing is pending).
    fn write_alone(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        self.buf.truncate(VNET_HDR_LEN);
        self.buf[..VNET_HDR_LEN].copy_from_slice(&VnetHdr::data_valid());
        self.buf.extend_from_slice(packet);
        write(&self.buf);
        self.buf.truncate(VNET_HDR_LEN);
    }

    /// Writes the pending packet, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        if self.hdr == 0 {
            return;
        }
        let (hdr, ip_len) = (self.hdr, self.ip_len);
        if self.count == 1 {
            let mut h = VnetHdr::data_valid();
            h[1] = GSO_NONE;
            self.buf[..VNET_HDR_LEN].copy_from_slice(&h);
        } else {
            let p = &mut self.buf[VNET_HDR_LEN..];
            let total = p.len();
            if self.is_v6 {
                p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                p[10..12].fill(0);
                let c = !fold(sum16(&p[..ip_len], 0));
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            // Partial checksum: the pseudo-header sum; the kernel finishes it
            // (or trusts it) per segment, as for any locally built GSO packet.
            let pseudo = fold(pseudo_header_sum(p, self.is_v6, total - ip_len));
            p[ip_len + 16..ip_len + 18].copy_from_slice(&pseudo.to_be_bytes());
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if self.is_v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: hdr as u16,
                gso_size: self.segment as u16,
                csum_start: ip_len as u16,
                csum_offset: 16,
            };
            self.buf[..VNET_HDR_LEN].copy_from_slice(&h.to_bytes());
        }
        write(&self.buf);
        self.hdr = 0;
        self.count = 0;
        self.closed = false;
        self.buf.truncate(VNET_HDR_LEN);
    }
}

impl VnetHdr {
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full, independent checksum check of a TCP/IPv4 or IPv6 packet.
    fn valid(p: &[u8]) -> bool {
        let (is_v6, ip_len, _) = tcp_headers(p).expect("tcp");
        let ip_ok = is_v6 || fold(sum16(&p[..ip_len], 0)) == 0xffff;
        let sum = pseudo_header_sum(p, is_v6, p.len() - ip_len);
        ip_ok && fold(sum16(&p[ip_len..], sum)) == 0xffff
    }

    fn tcp_v4(payload: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32 + payload];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 8 << 4; // 32-byte TCP header (with options)
        p[33] = flags;
        for (i, b) in p[52..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let c = !fold(sum16(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_v6(payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 20 + payload];
        p[0] = 0x60;
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
        p[52] = 5 << 4;
        p[53] = TCP_PSH | 0x10;
        for (i, b) in p[60..].iter_mut().enumerate() {
            *b = (i * 3) as u8;
        }
        p
    }

    #[test]
    fn header_round_trip() {
        let raw = [1u8, 4, 0x36, 0, 0x88, 5, 40, 0, 16, 0];
        let h = VnetHdr::parse(&raw).expect("hdr");
        assert_eq!(
            h,
            VnetHdr {
                flags: 1,
                gso_type: GSO_TCPV6,
                hdr_len: 0x36,
                gso_size: 1416,
                csum_start: 40,
                csum_offset: 16
            }
        );
        assert!(VnetHdr::parse(&raw[..9]).is_none());
        assert_eq!(VnetHdr::data_valid()[0], F_DATA_VALID);
    }

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
    fn partial_checksum_is_finished() {
        let mut p = tcp_v4(101, 0x10);
        // What the kernel leaves with NEEDS_CSUM: the pseudo-header sum, not complemented.
        let pseudo = fold(pseudo_header_sum(&p, false, p.len() - 20));
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let mut read = vec![0u8; VNET_HDR_LEN];
        read[0] = F_NEEDS_CSUM;
        read[6..8].copy_from_slice(&20u16.to_le_bytes());
        read[8..10].copy_from_slice(&16u16.to_le_bytes());
        read.extend_from_slice(&p);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        let n = split_read(&mut read, &mut scratch, |p| out.push(p.to_vec())).expect("split");
        assert_eq!(n, 1);
        assert!(valid(&out[0]));
    }

    #[test]
    fn coalesced_train_resegments_to_the_original() {
        // Cut a big packet, coalesce the pieces, cut the result again: same pieces.
        let big = tcp_v4(5000, 0x10 | TCP_PSH);
        let mut scratch = Vec::new();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        segment_tcp(&big, 1400, &mut scratch, |p| pieces.push(p.to_vec())).expect("segment");
        let mut c = Coalescer::new();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut w = |b: &[u8]| writes.push(b.to_vec());
        for p in &pieces {
            c.push(p, &mut w);
        }
        c.flush(&mut w);
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
    fn coalescing_stops_at_gaps_and_other_flows() {
        let big = tcp_v4(4200, 0x10);
        let mut scratch = Vec::new();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        segment_tcp(&big, 1400, &mut scratch, |p| pieces.push(p.to_vec())).expect("segment");
        let mut other = pieces[1].clone();
        other[22] ^= 1; // another destination port
        let mut c = Coalescer::new();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut w = |b: &[u8]| writes.push(b.to_vec());
        c.push(&pieces[0], &mut w);
        c.push(&pieces[2], &mut w); // a gap: pieces[1] is missing
        c.push(&other, &mut w);
        let mut udp = pieces[0].clone();
        udp[9] = 17;
        c.push(&udp, &mut w);
        c.flush(&mut w);
        assert_eq!(writes.len(), 4);
        for wbuf in &writes {
            let h = VnetHdr::parse(wbuf).expect("hdr");
            assert_eq!(h.gso_type, GSO_NONE, "nothing coalesced");
            assert_eq!(h.flags, F_DATA_VALID);
        }
        assert_eq!(&writes[3][VNET_HDR_LEN..], &udp[..]);
    }

    #[test]
    fn refusals_and_malformed_input() {
        let mut scratch = Vec::new();
        let mut udp = tcp_v4(10, 0);
        udp[9] = 17;
        assert_eq!(
            segment_tcp(&udp, 100, &mut scratch, |_| {}),
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
        let mut read = vec![0u8, 3, 0, 0, 0, 0, 0, 0, 0, 0]; // UDP GSO: not enabled, refused
        read.extend_from_slice(&tcp_v4(10, 0));
        assert_eq!(
            split_read(&mut read, &mut scratch, |_| {}),
            Err(OffloadError::Unsupported)
        );
        let mut bad = vec![F_NEEDS_CSUM, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0x45];
        assert_eq!(
            split_read(&mut bad, &mut scratch, |_| {}),
            Err(OffloadError::Malformed)
        );
        // A header-only TSO packet still goes out once.
        let mut n = 0;
        segment_tcp(&tcp_v4(0, 0x10), 100, &mut scratch, |_| n += 1).expect("segment");
        assert_eq!(n, 1);
    }
}
