//! The cryptokey routing table ("allowed IPs"): IP prefixes mapped to peers.
//!
//! - Longest-prefix match, as the kernel's `allowedips.c`: on send the
//!   destination picks the peer; on receive the *source* must look up to the
//!   very peer whose keypair opened the packet. "Contained in one of my
//!   prefixes" is not enough: if A owns 10.0.0.0/8 and B owns 10.1.0.0/16,
//!   10.1.2.3 belongs to B and A may not use it (kernel receive.c).
//! - Prefixes are exclusive across peers: inserting an existing prefix for
//!   another peer moves it to that peer.
//! - Host bits are masked off on insert and remove (192.95.5.65/27 is stored
//!   as 192.95.5.64/27). A length above 32 (IPv4) or 128 (IPv6) is an error.
//! - IPv4 and IPv6 are separate tables; a v4-mapped IPv6 address
//!   (`::ffff:a.b.c.d`) is looked up as IPv6, never as IPv4.
//!
//! Design: per family, one hash map per prefix length (masked address ->
//! peer) and the lengths in use, longest first. A lookup masks the address
//! and probes one map per length in use, so it costs a few hash probes for
//! the usual tables (a /0 or a subnet plus /32s or /128s); insert and remove
//! are O(1). Memory is about one hash slot per prefix (~25 bytes for IPv4,
//! ~33 for IPv6 with a `u64` peer, counting load factor), which keeps
//! 1,000,000 prefixes well under 100 MB; a pointer trie needs about twice
//! that. The worst case is one probe per distinct length (33 for IPv4, 129
//! for IPv6), still a bounded, allocation-free loop. `remove_peer` and
//! `entries` scan the table, O(total prefixes): no per-peer index is kept,
//! which would double the memory. The maps hash with a folded multiply keyed
//! from `RandomState` per table: much faster than SipHash for these small
//! integer keys, and the keys are secret so probe chains cannot be predicted.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};

/// The longest IPv4 prefix.
pub const MAX_CIDR_V4: u8 = 32;
/// The longest IPv6 prefix.
pub const MAX_CIDR_V6: u8 = 128;

/// Keyed hashing for the integer keys of the tables.
#[derive(Clone)]
struct MixState {
    k0: u64,
    k1: u64,
}

impl MixState {
    fn random() -> Self {
        let rs = RandomState::new();
        Self {
            k0: rs.hash_one(0x6b30_u64),
            k1: rs.hash_one(0x6b31_u64) | 1,
        }
    }
}

impl BuildHasher for MixState {
    type Hasher = MixHasher;

    fn build_hasher(&self) -> MixHasher {
        MixHasher {
            acc: self.k0,
            k1: self.k1,
        }
    }
}

struct MixHasher {
    acc: u64,
    k1: u64,
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for MixHasher {
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.acc = folded_multiply(self.acc ^ x, self.k1);
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.acc
    }
}

/// An address of one family as a table key.
trait Key: Copy + Eq + Hash + Ord {
    const BITS: u8;
    /// The address with all bits after the first `cidr` cleared (`cidr <= BITS`).
    fn masked(self, cidr: u8) -> Self;
}

impl Key for u32 {
    const BITS: u8 = MAX_CIDR_V4;

    #[inline]
    fn masked(self, cidr: u8) -> Self {
        // `Self::BITS` here would be the inherent `u32::BITS`.
        self & u32::MAX
            .checked_shl(u32::from(MAX_CIDR_V4.saturating_sub(cidr)))
            .unwrap_or(0)
    }
}

/// An IPv6 address as two 64-bit halves: 8-byte aligned, so a slot with a
/// `u64` peer takes 24 bytes instead of the 32 of a `u128` key. The derived
/// order (high half first) is the numeric order of the address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct V6Key {
    hi: u64,
    lo: u64,
}

impl From<u128> for V6Key {
    #[inline]
    fn from(a: u128) -> Self {
        Self {
            hi: (a >> 64) as u64,
            lo: a as u64,
        }
    }
}

impl From<V6Key> for u128 {
    #[inline]
    fn from(k: V6Key) -> Self {
        (u128::from(k.hi) << 64) | u128::from(k.lo)
    }
}

impl Hash for V6Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hi);
        state.write_u64(self.lo);
    }
}

impl Key for V6Key {
    const BITS: u8 = MAX_CIDR_V6;

    #[inline]
    fn masked(self, cidr: u8) -> Self {
        let mask = u128::MAX
            .checked_shl(u32::from(Self::BITS.saturating_sub(cidr)))
            .unwrap_or(0);
        Self::from(u128::from(self) & mask)
    }
}

/// The prefixes of one family.
#[derive(Clone)]
struct Table<K, T> {
    /// `maps[len]` holds the prefixes of length `len`, keyed by masked address.
    maps: Vec<HashMap<K, T, MixState>>,
    /// The lengths whose map is not empty, longest first.
    lens: Vec<u8>,
    count: usize,
    state: MixState,
}

impl<K: Key, T: Copy + Eq> Table<K, T> {
    fn new(state: MixState) -> Self {
        let maps = (0..=K::BITS)
            .map(|_| HashMap::with_hasher(state.clone()))
            .collect();
        Self {
            maps,
            lens: Vec::new(),
            count: 0,
            state,
        }
    }

    fn check(cidr: u8) -> Result<()> {
        if cidr > K::BITS {
            return Err(Error::InvalidPrefix { cidr, max: K::BITS });
        }
        Ok(())
    }

    fn insert(&mut self, addr: K, cidr: u8, peer: T) -> Result<()> {
        Self::check(cidr)?;
        let Some(map) = self.maps.get_mut(usize::from(cidr)) else {
            return Err(Error::InvalidPrefix { cidr, max: K::BITS });
        };
        if map.insert(addr.masked(cidr), peer).is_none() {
            self.count += 1;
            if map.len() == 1 {
                let at = self.lens.partition_point(|&l| l > cidr);
                self.lens.insert(at, cidr);
            }
        }
        Ok(())
    }

    fn get(&self, addr: K, cidr: u8) -> Option<T> {
        self.maps
            .get(usize::from(cidr))?
            .get(&addr.masked(cidr.min(K::BITS)))
            .copied()
    }

    fn remove(&mut self, addr: K, cidr: u8) -> Option<T> {
        if cidr > K::BITS {
            return None;
        }
        let map = self.maps.get_mut(usize::from(cidr))?;
        let peer = map.remove(&addr.masked(cidr))?;
        self.count -= 1;
        if map.is_empty() {
            // Give the memory back and stop probing this length.
            *map = HashMap::with_hasher(self.state.clone());
            self.lens.retain(|&l| l != cidr);
        }
        Some(peer)
    }

    fn remove_peer(&mut self, peer: T) -> usize {
        let mut removed = 0;
        for &cidr in &self.lens {
            if let Some(map) = self.maps.get_mut(usize::from(cidr)) {
                let before = map.len();
                map.retain(|_, p| *p != peer);
                removed += before - map.len();
                if map.is_empty() {
                    *map = HashMap::with_hasher(self.state.clone());
                } else if map.len() * 4 < map.capacity() {
                    map.shrink_to_fit();
                }
            }
        }
        let maps = &self.maps;
        self.lens
            .retain(|&l| maps.get(usize::from(l)).is_some_and(|m| !m.is_empty()));
        self.count -= removed;
        removed
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<T> {
        for &cidr in &self.lens {
            if let Some(map) = self.maps.get(usize::from(cidr)) {
                if let Some(&peer) = map.get(&addr.masked(cidr)) {
                    return Some(peer);
                }
            }
        }
        None
    }

    /// The prefixes of `peer`, sorted by address, then length.
    fn entries(&self, peer: T) -> Vec<(K, u8)> {
        let mut out = Vec::new();
        for &cidr in &self.lens {
            if let Some(map) = self.maps.get(usize::from(cidr)) {
                out.extend(
                    map.iter()
                        .filter(|(_, &p)| p == peer)
                        .map(|(&k, _)| (k, cidr)),
                );
            }
        }
        out.sort_unstable();
        out
    }

    fn clear(&mut self) {
        for &cidr in &self.lens {
            if let Some(map) = self.maps.get_mut(usize::from(cidr)) {
                *map = HashMap::with_hasher(self.state.clone());
            }
        }
        self.lens.clear();
        self.count = 0;
    }
}

/// The cryptokey routing table: IPv4 and IPv6 prefixes, each owned by one peer.
///
/// `T` is the peer's handle (an index or id); it is copied out of lookups.
#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: Table<u32, T>,
    v6: Table<V6Key, T>,
}

impl<T: Copy + Eq> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for AllowedIps<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowedIps")
            .field("v4_prefixes", &self.v4.count)
            .field("v6_prefixes", &self.v6.count)
            .finish()
    }
}

impl<T: Copy + Eq> AllowedIps<T> {
    pub fn new() -> Self {
        let state = MixState::random();
        Self {
            v4: Table::new(state.clone()),
            v6: Table::new(state),
        }
    }

    /// Maps `addr/cidr` to `peer`, masking the host bits off. An existing
    /// prefix moves to `peer`. Fails if `cidr` is longer than the family's
    /// address, leaving the table unchanged.
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, peer: T) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), cidr, peer),
            IpAddr::V6(a) => self.v6.insert(V6Key::from(u128::from(a)), cidr, peer),
        }
    }

    /// The owner of exactly the prefix `addr/cidr` (host bits ignored), if any.
    pub fn get(&self, addr: IpAddr, cidr: u8) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.get(u32::from(a), cidr),
            IpAddr::V6(a) => self.v6.get(V6Key::from(u128::from(a)), cidr),
        }
    }

    /// Removes exactly the prefix `addr/cidr` (host bits ignored) whoever owns
    /// it, returning the owner. Shorter or longer prefixes are kept.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.remove(u32::from(a), cidr),
            IpAddr::V6(a) => self.v6.remove(V6Key::from(u128::from(a)), cidr),
        }
    }

    /// Removes the prefix `addr/cidr` only if `peer` owns it (UAPI
    /// `allowed_ip=-`, as wireguard-go). Returns whether it was removed.
    pub fn remove_for(&mut self, addr: IpAddr, cidr: u8, peer: T) -> bool {
        if self.get(addr, cidr) != Some(peer) {
            return false;
        }
        self.remove(addr, cidr).is_some()
    }

    /// Removes every prefix of `peer`, returning how many there were.
    pub fn remove_peer(&mut self, peer: T) -> usize {
        self.v4.remove_peer(peer) + self.v6.remove_peer(peer)
    }

    /// The peer owning the longest prefix that contains `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(u32::from(a)),
            IpAddr::V6(a) => self.lookup_v6(u128::from(a)),
        }
    }

    /// [`lookup`](Self::lookup) for an IPv4 address read big-endian from a
    /// packet header (`u32::from_be_bytes`).
    #[inline]
    pub fn lookup_v4(&self, addr: u32) -> Option<T> {
        self.v4.lookup(addr)
    }

    /// [`lookup`](Self::lookup) for an IPv6 address read big-endian from a
    /// packet header (`u128::from_be_bytes`).
    #[inline]
    pub fn lookup_v6(&self, addr: u128) -> Option<T> {
        self.v6.lookup(V6Key::from(addr))
    }

    /// The prefixes of `peer` with host bits cleared: IPv4 before IPv6, each
    /// sorted by address, then by prefix length.
    pub fn entries(&self, peer: T) -> Vec<(IpAddr, u8)> {
        let v4 = self.v4.entries(peer);
        let v6 = self.v6.entries(peer);
        let mut out = Vec::with_capacity(v4.len() + v6.len());
        out.extend(
            v4.into_iter()
                .map(|(a, c)| (IpAddr::V4(Ipv4Addr::from(a)), c)),
        );
        out.extend(
            v6.into_iter()
                .map(|(a, c)| (IpAddr::V6(Ipv6Addr::from(u128::from(a))), c)),
        );
        out
    }

    /// The number of prefixes of both families.
    pub fn len(&self) -> usize {
        self.v4.count + self.v6.count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn ip6(a: u32, b: u32, c: u32, d: u32) -> IpAddr {
        let v =
            (u128::from(a) << 96) | (u128::from(b) << 64) | (u128::from(c) << 32) | u128::from(d);
        IpAddr::V6(Ipv6Addr::from(v))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const A: u64 = 1;
    const B: u64 = 2;
    const C: u64 = 3;
    const D: u64 = 4;
    const E: u64 = 5;
    const F: u64 = 6;
    const G: u64 = 7;
    const H: u64 = 8;

    // The fixed cases of the kernel's selftest/allowedips.c.
    #[test]
    fn kernel_selftest_fixed_cases() {
        let mut t = AllowedIps::new();
        t.insert(ip4(192, 168, 4, 0), 24, A).unwrap();
        t.insert(ip4(192, 168, 4, 4), 32, B).unwrap();
        t.insert(ip4(192, 168, 0, 0), 16, C).unwrap();
        t.insert(ip4(192, 95, 5, 64), 27, D).unwrap();
        // Replaces the previous entry; masking the host bits is required.
        t.insert(ip4(192, 95, 5, 65), 27, C).unwrap();
        t.insert(ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128, D)
            .unwrap();
        t.insert(ip6(0x26075300, 0x60006b00, 0, 0), 64, C).unwrap();
        t.insert(ip4(0, 0, 0, 0), 0, E).unwrap();
        t.insert(ip6(0, 0, 0, 0), 0, E).unwrap();
        // Replaces the previous entry.
        t.insert(ip6(0, 0, 0, 0), 0, F).unwrap();
        t.insert(ip6(0x24046800, 0, 0, 0), 32, G).unwrap();
        // Masking the host bits is required.
        t.insert(ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef), 64, H)
            .unwrap();
        t.insert(ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef), 128, A)
            .unwrap();
        t.insert(ip6(0x24446800, 0x40e40800, 0xdeaebeef, 0xdefbeef), 128, C)
            .unwrap();
        t.insert(ip6(0x24446800, 0xf0e40800, 0xeeaebeef, 0), 98, B)
            .unwrap();
        t.insert(ip4(64, 15, 112, 0), 20, G).unwrap();
        // Masking the host bits is required.
        t.insert(ip4(64, 15, 123, 211), 25, H).unwrap();
        t.insert(ip4(10, 0, 0, 0), 25, A).unwrap();
        t.insert(ip4(10, 0, 0, 128), 25, B).unwrap();
        t.insert(ip4(10, 1, 0, 0), 30, A).unwrap();
        t.insert(ip4(10, 1, 0, 4), 30, B).unwrap();
        t.insert(ip4(10, 1, 0, 8), 29, C).unwrap();
        t.insert(ip4(10, 1, 0, 16), 29, D).unwrap();

        let cases = [
            (A, ip4(192, 168, 4, 20)),
            (A, ip4(192, 168, 4, 0)),
            (B, ip4(192, 168, 4, 4)),
            (C, ip4(192, 168, 200, 182)),
            (C, ip4(192, 95, 5, 68)),
            (E, ip4(192, 95, 5, 96)),
            (D, ip6(0x26075300, 0x60006b00, 0, 0xc05f0543)),
            (C, ip6(0x26075300, 0x60006b00, 0, 0xc02e01ee)),
            (F, ip6(0x26075300, 0x60006b01, 0, 0)),
            (G, ip6(0x24046800, 0x40040806, 0, 0x1006)),
            (G, ip6(0x24046800, 0x40040806, 0x1234, 0x5678)),
            (F, ip6(0x240467ff, 0x40040806, 0x1234, 0x5678)),
            (F, ip6(0x24046801, 0x40040806, 0x1234, 0x5678)),
            (H, ip6(0x24046800, 0x40040800, 0x1234, 0x5678)),
            (H, ip6(0x24046800, 0x40040800, 0, 0)),
            (H, ip6(0x24046800, 0x40040800, 0x10101010, 0x10101010)),
            (A, ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef)),
            (G, ip4(64, 15, 116, 26)),
            (G, ip4(64, 15, 127, 3)),
            (G, ip4(64, 15, 123, 1)),
            (H, ip4(64, 15, 123, 128)),
            (H, ip4(64, 15, 123, 129)),
            (A, ip4(10, 0, 0, 52)),
            (B, ip4(10, 0, 0, 220)),
            (A, ip4(10, 1, 0, 2)),
            (B, ip4(10, 1, 0, 6)),
            (C, ip4(10, 1, 0, 10)),
            (D, ip4(10, 1, 0, 20)),
        ];
        for (want, addr) in cases {
            assert_eq!(t.lookup(addr), Some(want), "lookup {addr}");
        }

        // test_negative after remove_by_peer.
        for first in [1, 64, 128, 192, 255] {
            t.insert(ip4(first, 0, 0, 0), 32, A).unwrap();
        }
        t.remove_peer(A);
        for first in [1, 64, 128, 192, 255] {
            assert_ne!(t.lookup(ip4(first, 0, 0, 0)), Some(A));
        }
        assert_eq!(t.lookup(ip4(10, 0, 0, 52)), Some(E));
        assert_eq!(
            t.lookup(ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef)),
            Some(H)
        );

        let mut t = AllowedIps::new();
        t.insert(ip4(192, 168, 0, 0), 16, A).unwrap();
        t.insert(ip4(192, 168, 0, 0), 24, A).unwrap();
        t.remove_peer(A);
        assert_eq!(t.lookup(ip4(192, 168, 0, 1)), None);
        assert!(t.is_empty());
    }

    // The kernel's deep-tree inserts: 129 /128s sharing long prefixes.
    #[test]
    fn kernel_selftest_deep_v6() {
        let mut t = AllowedIps::new();
        for i in 0..64 {
            let part = u128::from(u64::MAX << i);
            t.insert(
                IpAddr::V6(Ipv6Addr::from((u128::from(u64::MAX) << 64) | part)),
                128,
                A,
            )
            .unwrap();
            t.insert(IpAddr::V6(Ipv6Addr::from(part << 64)), 128, A)
                .unwrap();
        }
        t.insert(ip("::"), 128, A).unwrap();
        assert_eq!(t.len(), 129);
        assert_eq!(t.lookup(ip("::")), Some(A));
        assert_eq!(t.lookup(ip("::1")), None);
        assert_eq!(t.remove_peer(A), 129);
        assert!(t.is_empty());
    }

    // The kernel's node-reading check: what one peer owns, normalized.
    #[test]
    fn kernel_selftest_read_nodes() {
        let mut t = AllowedIps::new();
        t.insert(ip4(192, 95, 5, 93), 27, A).unwrap();
        t.insert(ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128, A)
            .unwrap();
        t.insert(ip4(10, 1, 0, 20), 29, A).unwrap();
        t.insert(ip6(0x26075300, 0x6d8a6bf8, 0xdab1f1df, 0xc05f1523), 83, A)
            .unwrap();
        t.insert(ip6(0x26075300, 0x6d8a6bf8, 0xdab1f1df, 0xc05f1523), 21, A)
            .unwrap();
        assert_eq!(
            t.entries(A),
            vec![
                (ip4(10, 1, 0, 16), 29),
                (ip4(192, 95, 5, 64), 27),
                (ip6(0x26075000, 0, 0, 0), 21),
                (ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128),
                (ip6(0x26075300, 0x6d8a6bf8, 0xdab1e000, 0), 83),
            ]
        );
        assert!(t.entries(B).is_empty());
    }

    #[test]
    fn v6_overlapping_prefixes_and_default() {
        let mut t = AllowedIps::new();
        t.insert(ip("::"), 0, A).unwrap();
        t.insert(ip("2001:db8::"), 32, B).unwrap();
        t.insert(ip("2001:db8:1::"), 48, C).unwrap();
        t.insert(ip("2001:db8:1:2::"), 64, D).unwrap();
        t.insert(ip("2001:db8:1:2::7"), 128, E).unwrap();
        t.insert(ip("2001:db8:1:2::"), 125, F).unwrap();
        assert_eq!(t.lookup(ip("2001:db8:1:2::7")), Some(E));
        assert_eq!(t.lookup(ip("2001:db8:1:2::6")), Some(F));
        assert_eq!(t.lookup(ip("2001:db8:1:2::1")), Some(F));
        assert_eq!(t.lookup(ip("2001:db8:1:2::8")), Some(D));
        assert_eq!(t.lookup(ip("2001:db8:1:3::")), Some(C));
        assert_eq!(t.lookup(ip("2001:db8:2::1")), Some(B));
        assert_eq!(t.lookup(ip("2001:db9::")), Some(A));
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(A)
        );
        assert_eq!(t.lookup(ip("::")), Some(A));
        // No IPv4 entry: IPv6's default route does not cover IPv4.
        assert_eq!(t.lookup(ip("1.2.3.4")), None);
        assert_eq!(
            t.lookup_v6(u128::from_be_bytes(ip6_bytes("2001:db8:1:2::7"))),
            Some(E)
        );

        assert_eq!(t.remove(ip("2001:db8:1:2::"), 125), Some(F));
        assert_eq!(t.lookup(ip("2001:db8:1:2::6")), Some(D));
        assert_eq!(t.remove(ip("::"), 0), Some(A));
        assert_eq!(t.lookup(ip("2001:db9::")), None);
    }

    fn ip6_bytes(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn v4_mapped_v6_is_not_v4() {
        let mut t = AllowedIps::new();
        t.insert(ip("0.0.0.0"), 0, A).unwrap();
        t.insert(ip("1.2.3.4"), 32, B).unwrap();
        assert_eq!(t.lookup(ip("::ffff:1.2.3.4")), None);
        t.insert(ip("::ffff:0:0"), 96, C).unwrap();
        assert_eq!(t.lookup(ip("::ffff:1.2.3.4")), Some(C));
        assert_eq!(t.lookup(ip("1.2.3.4")), Some(B));
        assert_eq!(t.lookup(ip("1.2.3.5")), Some(A));
        assert_eq!(t.entries(C), vec![(ip("::ffff:0:0"), 96)]);
    }

    #[test]
    fn defaults_and_full_length_edges() {
        let mut t = AllowedIps::new();
        t.insert(ip("0.0.0.0"), 0, A).unwrap();
        t.insert(ip("255.255.255.255"), 32, B).unwrap();
        t.insert(ip("0.0.0.0"), 32, C).unwrap();
        assert_eq!(t.lookup(ip("0.0.0.0")), Some(C));
        assert_eq!(t.lookup(ip("0.0.0.1")), Some(A));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(B));
        assert_eq!(t.lookup(ip("255.255.255.254")), Some(A));
        assert_eq!(t.lookup_v4(0xffff_ffff), Some(B));
        assert_eq!(t.lookup_v4(u32::from_be_bytes([10, 0, 0, 1])), Some(A));
        // /0 with host bits is the default route.
        t.insert(ip("9.9.9.9"), 0, D).unwrap();
        assert_eq!(t.entries(D), vec![(ip("0.0.0.0"), 0)]);
        assert!(t.entries(A).is_empty());
        assert_eq!(t.len(), 3);
        t.insert(ip("::"), 128, E).unwrap();
        t.insert(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 128, E)
            .unwrap();
        assert_eq!(t.lookup(ip("::")), Some(E));
        assert_eq!(t.lookup(ip("::1")), None);
        assert_eq!(t.lookup_v6(u128::MAX), Some(E));
        assert_eq!(t.lookup_v6(u128::MAX - 1), None);
    }

    #[test]
    fn normalization_masks_host_bits() {
        let mut t = AllowedIps::new();
        t.insert(ip("192.95.5.65"), 27, A).unwrap();
        assert_eq!(t.entries(A), vec![(ip("192.95.5.64"), 27)]);
        assert_eq!(t.get(ip("192.95.5.64"), 27), Some(A));
        assert_eq!(t.get(ip("192.95.5.95"), 27), Some(A));
        assert_eq!(t.get(ip("192.95.5.64"), 26), None);
        // Same prefix written differently: one entry.
        t.insert(ip("192.95.5.94"), 27, A).unwrap();
        assert_eq!(t.len(), 1);
        t.insert(ip("2001:db8::dead:beef"), 64, B).unwrap();
        assert_eq!(t.entries(B), vec![(ip("2001:db8::"), 64)]);
        // Removal normalizes too.
        assert_eq!(t.remove(ip("192.95.5.70"), 27), Some(A));
        assert_eq!(t.remove(ip("2001:db8::1"), 64), Some(B));
        assert!(t.is_empty());
    }

    #[test]
    fn reinsert_reowns_prefix() {
        let mut t = AllowedIps::new();
        t.insert(ip("10.0.0.0"), 24, A).unwrap();
        t.insert(ip("10.0.1.0"), 24, A).unwrap();
        t.insert(ip("10.0.0.7"), 24, B).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(ip("10.0.0.1")), Some(B));
        assert_eq!(t.entries(A), vec![(ip("10.0.1.0"), 24)]);
        assert_eq!(t.entries(B), vec![(ip("10.0.0.0"), 24)]);
        // The old owner can no longer remove it.
        assert!(!t.remove_for(ip("10.0.0.0"), 24, A));
        assert_eq!(t.remove_peer(A), 1);
        assert_eq!(t.lookup(ip("10.0.0.1")), Some(B));
        // Re-inserting for the same owner is a no-op.
        t.insert(ip("10.0.0.0"), 24, B).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn invalid_prefix_length_is_an_error() {
        let mut t = AllowedIps::new();
        assert_eq!(
            t.insert(ip("1.2.3.4"), 33, A),
            Err(Error::InvalidPrefix { cidr: 33, max: 32 })
        );
        assert_eq!(
            t.insert(ip("::1"), 129, A),
            Err(Error::InvalidPrefix {
                cidr: 129,
                max: 128
            })
        );
        assert_eq!(
            t.insert(ip("::1"), 255, A),
            Err(Error::InvalidPrefix {
                cidr: 255,
                max: 128
            })
        );
        assert!(t.is_empty());
        assert!(t.insert(ip("1.2.3.4"), 32, A).is_ok());
        assert!(t.insert(ip("::1"), 128, A).is_ok());
        assert!(t.insert(ip("::1"), 33, A).is_ok());
        assert_eq!(t.len(), 3);
        assert_eq!(t.remove(ip("1.2.3.4"), 33), None);
        assert!(!t.remove_for(ip("::1"), 200, A));
        assert_eq!(t.get(ip("1.2.3.4"), 40), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn removals() {
        let mut t = AllowedIps::new();
        t.insert(ip("10.0.0.0"), 8, A).unwrap();
        t.insert(ip("10.1.0.0"), 16, B).unwrap();
        t.insert(ip("10.1.2.0"), 24, A).unwrap();
        t.insert(ip("fd00::"), 8, A).unwrap();
        t.insert(ip("fd00::1"), 128, B).unwrap();
        assert_eq!(t.len(), 5);

        // Exact prefix only: no such /12, and a /16 is not removed by /8.
        assert_eq!(t.remove(ip("10.0.0.0"), 12), None);
        // Wrong owner: nothing happens.
        assert!(!t.remove_for(ip("10.1.0.0"), 16, A));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(B));
        assert!(!t.remove_for(ip("10.9.0.0"), 16, A));
        // Right owner.
        assert!(t.remove_for(ip("10.1.0.0"), 16, B));
        assert!(!t.remove_for(ip("10.1.0.0"), 16, B));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(A));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(A));
        assert_eq!(t.len(), 4);

        assert_eq!(t.remove(ip("10.1.2.0"), 24), Some(A));
        assert_eq!(t.remove(ip("10.1.2.0"), 24), None);
        assert_eq!(t.remove_peer(A), 2);
        // test_negative: nothing of A is left, the rest is intact.
        assert_eq!(t.lookup(ip("10.1.2.3")), None);
        assert_eq!(t.lookup(ip("fd00::2")), None);
        assert_eq!(t.lookup(ip("fd00::1")), Some(B));
        assert!(t.entries(A).is_empty());
        assert_eq!(t.remove_peer(A), 0);
        assert_eq!(t.len(), 1);

        t.insert(ip("0.0.0.0"), 0, C).unwrap();
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("1.1.1.1")), None);
        t.insert(ip("1.1.1.1"), 32, C).unwrap();
        assert_eq!(t.lookup(ip("1.1.1.1")), Some(C));
    }

    // Source check: the result of LPM on the inner source must be the peer the
    // packet came from. "Inside one of the sender's prefixes" is not enough.
    #[test]
    fn source_check_is_longest_prefix_match() {
        let mut t = AllowedIps::new();
        t.insert(ip("10.0.0.0"), 8, A).unwrap();
        t.insert(ip("10.1.0.0"), 16, B).unwrap();
        let src = ip("10.1.2.3");
        assert_eq!(t.lookup(src), Some(B));
        let accept_from = |peer: u64| t.lookup(src) == Some(peer);
        assert!(!accept_from(A), "A must not spoof an address routed to B");
        assert!(accept_from(B));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(A));
    }

    #[test]
    fn entries_are_sorted() {
        let mut t = AllowedIps::new();
        let inserts = [
            ("fe80::", 10),
            ("10.0.0.0", 8),
            ("::", 0),
            ("10.0.0.0", 24),
            ("9.255.255.255", 32),
            ("2001:db8::", 32),
            ("10.0.0.0", 16),
            ("0.0.0.0", 0),
            ("2001:db8::", 48),
        ];
        for (a, c) in inserts {
            t.insert(ip(a), c, A).unwrap();
        }
        t.insert(ip("10.0.0.0"), 9, B).unwrap();
        let want: Vec<(IpAddr, u8)> = [
            ("0.0.0.0", 0),
            ("9.255.255.255", 32),
            ("10.0.0.0", 8),
            ("10.0.0.0", 16),
            ("10.0.0.0", 24),
            ("::", 0),
            ("2001:db8::", 32),
            ("2001:db8::", 48),
            ("fe80::", 10),
        ]
        .iter()
        .map(|&(a, c)| (ip(a), c))
        .collect();
        assert_eq!(t.entries(A), want);
        assert_eq!(t.entries(B), vec![(ip("10.0.0.0"), 9)]);
    }

    #[test]
    fn works_with_other_peer_types() {
        let mut t: AllowedIps<u32> = AllowedIps::default();
        t.insert(ip("10.0.0.0"), 8, 7).unwrap();
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(7));
        assert!(format!("{t:?}").contains("v4_prefixes: 1"));
    }

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn mask(addr: u128, cidr: u8, bits: u8) -> u128 {
        let all = if bits == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        let m = all.checked_shl(u32::from(bits - cidr)).unwrap_or(0) & all;
        addr & m
    }

    fn to_ip(addr: u128, bits: u8) -> IpAddr {
        if bits == 32 {
            IpAddr::V4(Ipv4Addr::from(addr as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(addr))
        }
    }

    /// The naive model: a list of (masked address, cidr, peer), linear LPM.
    #[derive(Default)]
    struct Model {
        rows: Vec<(u128, u8, u64)>,
    }

    impl Model {
        fn insert(&mut self, addr: u128, cidr: u8, bits: u8, peer: u64) {
            let a = mask(addr, cidr, bits);
            self.rows.retain(|&(ra, rc, _)| !(ra == a && rc == cidr));
            self.rows.push((a, cidr, peer));
        }

        fn get(&self, addr: u128, cidr: u8, bits: u8) -> Option<u64> {
            let a = mask(addr, cidr, bits);
            self.rows
                .iter()
                .find(|&&(ra, rc, _)| ra == a && rc == cidr)
                .map(|r| r.2)
        }

        fn remove(&mut self, addr: u128, cidr: u8, bits: u8) -> Option<u64> {
            let got = self.get(addr, cidr, bits)?;
            let a = mask(addr, cidr, bits);
            self.rows.retain(|&(ra, rc, _)| !(ra == a && rc == cidr));
            Some(got)
        }

        fn lookup(&self, addr: u128, bits: u8) -> Option<u64> {
            self.rows
                .iter()
                .filter(|&&(ra, rc, _)| mask(addr, rc, bits) == ra)
                .max_by_key(|r| r.1)
                .map(|r| r.2)
        }
    }

    fn randomized(bits: u8, seed: u64) {
        let mut rng = Rng(seed);
        let mut t = AllowedIps::new();
        let mut model = Model::default();
        let random_addr = |rng: &mut Rng| -> u128 {
            let v = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            if bits == 32 {
                v & u128::from(u32::MAX)
            } else {
                v
            }
        };
        // A few base addresses so that prefixes overlap and lookups hit them.
        let bases: Vec<u128> = (0..6).map(|_| random_addr(&mut rng)).collect();
        let near = |rng: &mut Rng| -> u128 {
            let base = bases[rng.below(bases.len() as u64) as usize];
            // Flip a few random bits, mostly low ones.
            let mut a = base;
            for _ in 0..rng.below(4) {
                let bit = if rng.below(2) == 0 {
                    rng.below(8)
                } else {
                    rng.below(u64::from(bits))
                };
                a ^= 1u128 << bit;
            }
            a
        };
        let random_cidr = |rng: &mut Rng| -> u8 {
            match rng.below(8) {
                0 => 0,
                1 => bits,
                _ => rng.below(u64::from(bits) + 1) as u8,
            }
        };
        let (peers, rounds) = (5u64, 4000);
        let (mut hits, mut misses, mut owned_removals) = (0, 0, 0);
        for _ in 0..rounds {
            let addr = if rng.below(4) == 0 {
                random_addr(&mut rng)
            } else {
                near(&mut rng)
            };
            match rng.below(10) {
                0..=3 => {
                    let (cidr, peer) = (random_cidr(&mut rng), rng.below(peers));
                    t.insert(to_ip(addr, bits), cidr, peer).unwrap();
                    model.insert(addr, cidr, bits, peer);
                }
                4 => {
                    let cidr = random_cidr(&mut rng);
                    assert_eq!(
                        t.remove(to_ip(addr, bits), cidr),
                        model.remove(addr, cidr, bits)
                    );
                }
                5 => {
                    // Remove an existing row through a host address inside it.
                    if !model.rows.is_empty() {
                        let (ra, rc, rp) = model.rows[rng.below(model.rows.len() as u64) as usize];
                        let host = ra | (addr & !mask(u128::MAX, rc, bits));
                        let peer = if rng.below(2) == 0 {
                            rp
                        } else {
                            rng.below(peers)
                        };
                        let want = model.get(host, rc, bits) == Some(peer);
                        if want {
                            model.remove(host, rc, bits);
                            owned_removals += 1;
                        }
                        assert_eq!(t.remove_for(to_ip(host, bits), rc, peer), want);
                    }
                }
                6 if rng.below(40) == 0 => {
                    let peer = rng.below(peers);
                    let before = model.rows.len();
                    model.rows.retain(|r| r.2 != peer);
                    assert_eq!(t.remove_peer(peer), before - model.rows.len());
                }
                _ => {
                    for _ in 0..4 {
                        let probe = if rng.below(5) == 0 {
                            random_addr(&mut rng)
                        } else {
                            near(&mut rng)
                        };
                        let want = model.lookup(probe, bits);
                        if want.is_some() {
                            hits += 1;
                        } else {
                            misses += 1;
                        }
                        assert_eq!(
                            t.lookup(to_ip(probe, bits)),
                            want,
                            "lookup {}",
                            to_ip(probe, bits)
                        );
                        let fast = if bits == 32 {
                            t.lookup_v4(probe as u32)
                        } else {
                            t.lookup_v6(probe)
                        };
                        assert_eq!(fast, want);
                    }
                }
            }
            assert_eq!(t.len(), model.rows.len());
        }
        // The random walk must exercise both outcomes, or it proves little.
        assert!(
            hits > 500 && misses > 10 && owned_removals > 20,
            "{hits} {misses} {owned_removals}"
        );
        for peer in 0..peers {
            let mut want: Vec<(IpAddr, u8)> = model
                .rows
                .iter()
                .filter(|r| r.2 == peer)
                .map(|r| (to_ip(r.0, bits), r.1))
                .collect();
            want.sort();
            assert_eq!(t.entries(peer), want);
        }
    }

    #[test]
    fn randomized_against_naive_model_v4() {
        for seed in [0x1234_5678_9abc_def1, 42, 7] {
            randomized(32, seed);
        }
    }

    #[test]
    fn randomized_against_naive_model_v6() {
        for seed in [0xfeed_face_cafe_beef, 43, 8] {
            randomized(128, seed);
        }
    }

    #[test]
    fn many_host_routes_for_one_peer() {
        const N: u32 = 130_000;
        let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
        let mut t = AllowedIps::new();
        t.insert(ip("0.0.0.0"), 0, B).unwrap();
        for i in 0..N {
            t.insert(IpAddr::V4(Ipv4Addr::from(base + i)), 32, A)
                .unwrap();
        }
        assert_eq!(t.len(), N as usize + 1);
        assert_eq!(t.lookup_v4(base), Some(A));
        assert_eq!(t.lookup_v4(base + N - 1), Some(A));
        assert_eq!(t.lookup_v4(base + N), Some(B));
        let entries = t.entries(A);
        assert_eq!(entries.len(), N as usize);
        assert_eq!(entries[0], (ip("10.0.0.0"), 32));
        assert!(entries.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.remove_peer(A), N as usize);
        assert_eq!(t.lookup_v4(base), Some(B));
        assert_eq!(t.len(), 1);
    }
}
