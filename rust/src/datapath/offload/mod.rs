//! TUN offloads (IFF_VNET_HDR): what the kernel hands over with a virtio-net
//! header, turned into ordinary IP packets, and the header written back.
//!
//! - Every read starts with a 10-byte virtio_net_hdr (little-endian on the
//!   hosts we run on): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
//! - NEEDS_CSUM: the transport checksum is partial (the pseudo-header sum is
//!   in the checksum field); finish it over everything from csum_start.
//! - TCPV4/TCPV6 and UDP_L4 with gso_size: one large packet to cut into
//!   gso_size payload pieces (segment.rs).
//! - Anything else we were not asked to handle (UFO, extension headers
//!   before TCP/UDP) is refused, so the caller drops the packet rather than
//!   sending a wrong one.
//! - Writes: runs of one flow are coalesced into one GSO write (coalesce.rs);
//!   single packets get a header saying DATA_VALID: the AEAD already proved
//!   the packet intact, so the kernel need not verify its checksums again.

mod checksum;
mod coalesce;
mod segment;

pub use checksum::{add, copy_and_sum, fold, sum16};
pub use coalesce::Coalescer;
pub use segment::{segment_tcp, segment_udp, Segments};

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;
const UDP_HEADER_LEN: usize = 8;

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

    /// The header we put in front of a single packet written to the TUN device.
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

/// Where a TCP or UDP packet's headers end (no IPv6 extension headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub is_v6: bool,
    pub proto: u8,
    /// IP header length.
    pub ip_len: usize,
    /// IP plus transport header length.
    pub hdr: usize,
}

impl Layout {
    pub fn of(packet: &[u8]) -> Result<Self, OffloadError> {
        let version = packet.first().ok_or(OffloadError::Malformed)? >> 4;
        let (is_v6, proto, ip_len) = match version {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                if ihl < 20 || packet.len() < ihl {
                    return Err(OffloadError::Unsupported);
                }
                (false, packet[9], ihl)
            }
            6 => {
                if packet.len() < 40 {
                    return Err(OffloadError::Unsupported);
                }
                (true, packet[6], 40)
            }
            _ => return Err(OffloadError::Malformed),
        };
        let l4_len = match proto {
            PROTO_TCP => {
                usize::from(packet.get(ip_len + 12).ok_or(OffloadError::Malformed)? >> 4) * 4
            }
            PROTO_UDP => UDP_HEADER_LEN,
            _ => return Err(OffloadError::Unsupported),
        };
        if (proto == PROTO_TCP && l4_len < 20) || packet.len() < ip_len + l4_len {
            return Err(OffloadError::Malformed);
        }
        Ok(Self {
            is_v6,
            proto,
            ip_len,
            hdr: ip_len + l4_len,
        })
    }

    /// Offset of the transport checksum field from the transport header.
    pub fn csum_offset(&self) -> usize {
        if self.proto == PROTO_TCP {
            16
        } else {
            6
        }
    }

    /// Sets the IP length field(s) for a packet of `total` bytes and, for
    /// IPv4, recomputes the header checksum; for UDP also the UDP length.
    pub fn set_lengths(&self, p: &mut [u8], total: usize) -> Result<(), OffloadError> {
        let too_long = |_| OffloadError::Malformed;
        if self.is_v6 {
            let plen = u16::try_from(total - 40).map_err(too_long)?;
            p[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let tot = u16::try_from(total).map_err(too_long)?;
            p[2..4].copy_from_slice(&tot.to_be_bytes());
            set_ipv4_checksum(&mut p[..self.ip_len]);
        }
        if self.proto == PROTO_UDP {
            let ulen = u16::try_from(total - self.ip_len).map_err(too_long)?;
            p[self.ip_len + 4..self.ip_len + 6].copy_from_slice(&ulen.to_be_bytes());
        }
        Ok(())
    }

    /// The pseudo-header sum (addresses, protocol, transport length).
    pub fn pseudo_header_sum(&self, packet: &[u8], transport_len: usize) -> u64 {
        let addrs = if self.is_v6 {
            &packet[8..40]
        } else {
            &packet[12..20]
        };
        sum16(addrs, 0) + transport_len as u64 + u64::from(self.proto)
    }

    /// Writes the full transport checksum of a finished packet.
    pub fn set_transport_checksum(&self, p: &mut [u8]) {
        let field = self.ip_len + self.csum_offset();
        p[field..field + 2].fill(0);
        let sum = self.pseudo_header_sum(p, p.len() - self.ip_len);
        let mut c = !fold(sum16(&p[self.ip_len..], sum));
        if c == 0 && self.proto == PROTO_UDP {
            // Zero means "no checksum" in UDP; its ones' complement twin is sent.
            c = 0xffff;
        }
        p[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }
}

fn set_ipv4_checksum(header: &mut [u8]) {
    header[10..12].fill(0);
    let c = !fold(sum16(header, 0));
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// What one TUN read (virtio header + packet) holds.
pub enum Read<'a> {
    /// One IP packet, its checksum completed in place.
    One(&'a [u8]),
    /// A GSO packet standing for several.
    Pieces(Segments<'a>),
}

/// Parses one TUN read (virtio header + packet).
pub fn read_packets(read: &mut [u8]) -> Result<Read<'_>, OffloadError> {
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
            Ok(Read::One(packet))
        }
        GSO_TCPV4 | GSO_TCPV6 => Ok(Read::Pieces(Segments::new(
            packet,
            PROTO_TCP,
            usize::from(h.gso_size),
        )?)),
        GSO_UDP_L4 => Ok(Read::Pieces(Segments::new(
            packet,
            PROTO_UDP,
            usize::from(h.gso_size),
        )?)),
        _ => Err(OffloadError::Unsupported),
    }
}

/// `read_packets` as a stream of packets: `emit` gets each (GSO pieces
/// built in `scratch`); returns how many. For tests and the fuzz target.
pub fn split_read(
    read: &mut [u8],
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    match read_packets(read)? {
        Read::One(packet) => {
            emit(packet);
            Ok(1)
        }
        Read::Pieces(pieces) => {
            scratch.resize(MAX_PIECE, 0);
            for i in 0..pieces.count() {
                let n = pieces.write(i, scratch)?;
                emit(&scratch[..n]);
            }
            Ok(pieces.count())
        }
    }
}

/// The longest packet a GSO piece can be (an IP packet).
pub const MAX_PIECE: usize = 65535;

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A full, independent checksum check of a TCP or UDP packet over IPv4 or IPv6.
    pub fn valid(p: &[u8]) -> bool {
        let l = Layout::of(p).expect("tcp or udp");
        let ip_ok = l.is_v6 || fold(sum16(&p[..l.ip_len], 0)) == 0xffff;
        let sum = l.pseudo_header_sum(p, p.len() - l.ip_len);
        ip_ok && fold(sum16(&p[l.ip_len..], sum)) == 0xffff
    }

    fn ipv4(proto: u8, l4: usize, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 20 + l4 + payload];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        for (i, b) in p[20 + l4..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        set_ipv4_checksum(&mut p[..20]);
        p
    }

    fn ipv6(proto: u8, l4: usize, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + l4 + payload];
        p[0] = 0x60;
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
        p[40..42].copy_from_slice(&4321u16.to_be_bytes());
        p[42..44].copy_from_slice(&443u16.to_be_bytes());
        for (i, b) in p[40 + l4..].iter_mut().enumerate() {
            *b = (i * 3) as u8;
        }
        p
    }

    /// A TCP/IPv4 packet with a 32-byte TCP header (options) and valid checksums.
    pub fn tcp_v4(payload: usize, flags: u8) -> Vec<u8> {
        let mut p = ipv4(PROTO_TCP, 32, payload);
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = flags;
        p
    }

    pub fn tcp_v6(payload: usize) -> Vec<u8> {
        let mut p = ipv6(PROTO_TCP, 20, payload);
        p[52] = 5 << 4;
        p[53] = 0x08 | 0x10;
        p
    }

    /// A UDP packet with valid checksums.
    pub fn udp(is_v6: bool, payload: usize) -> Vec<u8> {
        let mut p = if is_v6 {
            ipv6(PROTO_UDP, 8, payload)
        } else {
            ipv4(PROTO_UDP, 8, payload)
        };
        let l = Layout::of(&p).expect("udp");
        let total = p.len();
        l.set_lengths(&mut p, total).expect("lengths");
        l.set_transport_checksum(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

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
        assert_eq!(h.to_bytes(), raw);
        assert!(VnetHdr::parse(&raw[..9]).is_none());
        assert_eq!(VnetHdr::data_valid()[0], F_DATA_VALID);
    }

    #[test]
    fn test_packets_are_valid() {
        for v6 in [false, true] {
            let mut p = udp(v6, 333);
            assert!(valid(&p));
            let last = p.len() - 1;
            p[last] ^= 1;
            assert!(!valid(&p), "a flipped bit is caught");
        }
    }

    #[test]
    fn partial_checksum_is_finished() {
        let mut p = tcp_v4(101, 0x10);
        let l = Layout::of(&p).expect("tcp");
        // What the kernel leaves with NEEDS_CSUM: the pseudo-header sum, not complemented.
        let pseudo = fold(l.pseudo_header_sum(&p, p.len() - 20));
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
    fn split_read_refusals() {
        let mut scratch = Vec::new();
        // UFO (gso_type 3) is never enabled: refused.
        let mut read = vec![0u8, 3, 0, 0, 0, 0, 0, 0, 0, 0];
        read.extend_from_slice(&udp(false, 10));
        assert_eq!(
            split_read(&mut read, &mut scratch, |_| {}),
            Err(OffloadError::Unsupported)
        );
        let mut bad = vec![F_NEEDS_CSUM, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0x45];
        assert_eq!(
            split_read(&mut bad, &mut scratch, |_| {}),
            Err(OffloadError::Malformed)
        );
        assert_eq!(
            split_read(&mut [0u8; 5], &mut scratch, |_| {}),
            Err(OffloadError::Malformed)
        );
    }

    #[test]
    fn layouts() {
        let l = Layout::of(&tcp_v4(10, 0x10)).expect("tcp");
        assert_eq!(
            (l.is_v6, l.proto, l.ip_len, l.hdr),
            (false, PROTO_TCP, 20, 52)
        );
        let l = Layout::of(&udp(true, 10)).expect("udp");
        assert_eq!(
            (l.is_v6, l.proto, l.ip_len, l.hdr),
            (true, PROTO_UDP, 40, 48)
        );
        let mut icmp = udp(false, 10);
        icmp[9] = 1;
        assert_eq!(Layout::of(&icmp), Err(OffloadError::Unsupported));
        assert_eq!(Layout::of(&[]), Err(OffloadError::Malformed));
        assert_eq!(
            Layout::of(&udp(false, 0)[..27]),
            Err(OffloadError::Malformed)
        );
    }
}
