//! TUN offload code with hostile input: what a TUN read may hold, and
//! decrypted packets (chosen by a peer) through the GRO-style coalescer.
//!
//! Input: the first byte chooses a mode.
//! - even: the remaining bytes as one TUN read (virtio header + packet)
//!   through `split_read`; it must return, and emit as many packets as it
//!   says.
//! - odd: a stream of packets built from 4-byte records (template: TCP/UDP
//!   over IPv4/IPv6; payload length; one byte of the packet overwritten) with
//!   TCP sequence numbers that follow on, pushed through a `Coalescer` (UDP
//!   coalescing on when bit 1 of the first byte is set). Every write is cut
//!   again with `split_read`, as the kernel would: the same number of packets
//!   must come back, each as long as the one pushed, with the same payload;
//!   a packet that could not be parsed as TCP or UDP comes back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgpy::datapath::offload::{split_read, Coalescer, Layout};

fn packet(kind: u8, payload: usize, seq: u32) -> Vec<u8> {
    let (v6, udp) = (kind & 1 != 0, kind & 2 != 0);
    let ip = if v6 { 40 } else { 20 };
    let l4 = if udp { 8 } else { 20 };
    let mut p = vec![0u8; ip + l4 + payload];
    let total = p.len();
    let proto = if udp { 17 } else { 6 };
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    }
    p[ip..ip + 4].copy_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    if udp {
        p[ip + 4..ip + 6].copy_from_slice(&((total - ip) as u16).to_be_bytes());
    } else {
        p[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
        p[ip + 12] = 5 << 4;
        p[ip + 13] = 0x10;
    }
    for (i, b) in p[ip + l4..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn payload_start(p: &[u8]) -> usize {
    Layout::of(p).map(|l| l.hdr).unwrap_or(p.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut scratch = Vec::new();
    if mode & 1 == 0 {
        let mut read = rest.to_vec();
        let mut emitted = 0;
        if let Ok(n) = split_read(&mut read, &mut scratch, |_| emitted += 1) {
            assert_eq!(n, emitted);
        }
        return;
    }
    let mut pushed: Vec<Vec<u8>> = Vec::new();
    let mut seq = 1000u32;
    for r in rest.chunks_exact(4) {
        let len = usize::from(r[1]) * 6;
        let mut p = packet(r[0], len, seq);
        seq = seq.wrapping_add(len as u32);
        let at = usize::from(r[2]) % p.len();
        if r[0] & 4 != 0 {
            p[at] = r[3];
        }
        pushed.push(p);
    }
    let mut coalescer = Coalescer::new(mode & 2 != 0);
    let mut writes: Vec<Vec<u8>> = Vec::new();
    {
        let mut write = |iov: &[std::io::IoSlice<'_>]| {
            writes.push(iov.iter().flat_map(|s| s.iter().copied()).collect())
        };
        for p in &pushed {
            coalescer.push(p, &mut write);
        }
        coalescer.flush(&mut write);
    }
    let mut back: Vec<Vec<u8>> = Vec::new();
    for w in &mut writes {
        let n = split_read(w, &mut scratch, |p| back.push(p.to_vec()))
            .expect("a coalesced write must be readable");
        assert!(n >= 1);
    }
    assert_eq!(back.len(), pushed.len(), "packets in and out");
    for (sent, got) in pushed.iter().zip(&back) {
        assert_eq!(sent.len(), got.len());
        let start = payload_start(sent);
        assert_eq!(&sent[start..], &got[start..], "payload");
        if Layout::of(sent).is_err() {
            assert_eq!(sent, got, "unparsed packets pass unchanged");
        }
    }
});
