//! Recognising a TCP SYN (a connection attempt) in a raw IP packet, before
//! the stack processes it, so a listening socket can be ready for it. Only
//! the fixed headers are read; anything else (IPv6 extension headers,
//! fragments, short packets) is simply not a SYN here.

const TCP: u8 = 6;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The destination port of a SYN without ACK, if `packet` is one.
pub(crate) fn syn_port(packet: &[u8]) -> Option<u16> {
    let tcp = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if *packet.get(9)? != TCP || fragment != 0 || ihl < 20 {
                return None;
            }
            packet.get(ihl..)?
        }
        6 if *packet.get(6)? == TCP => packet.get(40..)?,
        _ => return None,
    };
    let flags = *tcp.get(13)?;
    if flags & (SYN | ACK) != SYN {
        return None;
    }
    Some(u16::from_be_bytes([tcp[2], tcp[3]]))
}

#[cfg(test)]
mod tests {
    use super::syn_port;

    fn v4_tcp(flags: u8, port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[22..24].copy_from_slice(&port.to_be_bytes());
        p[33] = flags;
        p
    }

    #[test]
    fn finds_syns_and_only_syns() {
        assert_eq!(syn_port(&v4_tcp(0x02, 80)), Some(80));
        assert_eq!(syn_port(&v4_tcp(0x12, 80)), None);
        assert_eq!(syn_port(&v4_tcp(0x10, 80)), None);
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[6] = 6;
        v6[42..44].copy_from_slice(&443u16.to_be_bytes());
        v6[53] = 0x02;
        assert_eq!(syn_port(&v6), Some(443));
    }

    #[test]
    fn short_or_odd_packets_are_not_syns() {
        assert_eq!(syn_port(&[]), None);
        assert_eq!(syn_port(&[0x45]), None);
        assert_eq!(syn_port(&v4_tcp(0x02, 80)[..30]), None);
        let mut bad_ihl = v4_tcp(0x02, 80);
        bad_ihl[0] = 0x41;
        assert_eq!(syn_port(&bad_ihl), None);
        let mut fragment = v4_tcp(0x02, 80);
        fragment[7] = 1;
        assert_eq!(syn_port(&fragment), None);
    }
}
