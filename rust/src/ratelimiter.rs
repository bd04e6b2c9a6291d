//! The per-source handshake rate limiter used under load (kernel ratelimiter.c).
//!
//! - One token bucket per source: 20 packets per second, burst 5. A new
//!   source starts with a full bucket and spends one packet. Tokens are
//!   integer nanoseconds (one packet costs 50 ms), so the arithmetic is exact
//!   and matches the kernel's.
//! - IPv4 sources are keyed by address, IPv6 sources by their /64: one host
//!   usually owns a whole /64 and could otherwise rotate addresses to get
//!   fresh buckets. An IPv4-mapped IPv6 address counts as its IPv4 address.
//! - Entries idle for more than 1 s are dropped: such a bucket has refilled
//!   (a full bucket takes 250 ms), so forgetting it changes no answer.
//! - At most `max_entries` sources are tracked; a new source beyond that is
//!   refused, like the kernel when its table is full, rather than evicting a
//!   source that is being limited.
//! - Time never runs backwards here: an earlier reading counts as no time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

pub const PACKETS_PER_SECOND: u64 = 20;
pub const PACKETS_BURSTABLE: u64 = 5;
const NS_PER_SECOND: u64 = 1_000_000_000;
pub const PACKET_COST: u64 = NS_PER_SECOND / PACKETS_PER_SECOND;
pub const TOKEN_MAX: u64 = PACKET_COST * PACKETS_BURSTABLE;
pub const ENTRY_TIMEOUT: Duration = Duration::from_secs(1);
/// The kernel scales its limit with RAM; 65536 entries is a few MB here.
pub const DEFAULT_MAX_ENTRIES: usize = 65536;

/// A bucket key: the IPv4 address, or the top 64 bits of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    V6(u64),
}

pub fn source_key(ip: IpAddr) -> SourceKey {
    match ip {
        IpAddr::V4(a) => SourceKey::V4(u32::from(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => SourceKey::V4(u32::from(v4)),
            None => SourceKey::V6((u128::from(a) >> 64) as u64),
        },
    }
}

struct Bucket {
    tokens: u64,
    last_ns: u64,
}

pub struct Ratelimiter {
    buckets: HashMap<SourceKey, Bucket>,
    /// Keys in the order of their last use (with stale duplicates skipped on
    /// collection), so collecting idle entries stops at the first fresh one.
    order: VecDeque<(u64, SourceKey)>,
    latest_ns: u64,
    max_entries: usize,
}

impl Default for Ratelimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl Ratelimiter {
    pub fn new(max_entries: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            order: VecDeque::new(),
            latest_ns: 0,
            max_entries: max_entries.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one packet from `ip`'s bucket at monotonic time `now`.
    pub fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        let now_ns = self.tick(now);
        self.collect(now_ns);
        let key = source_key(ip);
        let allowed = match self.buckets.get_mut(&key) {
            None => return self.add(key, now_ns),
            Some(bucket) => {
                let tokens = TOKEN_MAX.min(bucket.tokens + (now_ns - bucket.last_ns));
                bucket.last_ns = now_ns;
                let allowed = tokens >= PACKET_COST;
                bucket.tokens = if allowed {
                    tokens - PACKET_COST
                } else {
                    tokens
                };
                allowed
            }
        };
        self.order.push_back((now_ns, key));
        allowed
    }

    /// Drops the entries idle for more than ENTRY_TIMEOUT (`allow` does this too).
    pub fn gc(&mut self, now: Duration) {
        let now_ns = self.tick(now);
        self.collect(now_ns);
    }

    fn tick(&mut self, now: Duration) -> u64 {
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.latest_ns = self.latest_ns.max(now_ns);
        self.latest_ns
    }

    fn add(&mut self, key: SourceKey, now_ns: u64) -> bool {
        if self.buckets.len() >= self.max_entries {
            return false;
        }
        self.buckets.insert(
            key,
            Bucket {
                tokens: TOKEN_MAX - PACKET_COST,
                last_ns: now_ns,
            },
        );
        self.order.push_back((now_ns, key));
        true
    }

    fn collect(&mut self, now_ns: u64) {
        let timeout = ENTRY_TIMEOUT.as_nanos() as u64;
        while let Some(&(used, key)) = self.order.front() {
            if now_ns - used <= timeout {
                break;
            }
            self.order.pop_front();
            // Only the entry's latest use counts; older ones are stale duplicates.
            if self.buckets.get(&key).is_some_and(|b| b.last_ns == used) {
                self.buckets.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1000);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn at(ms: u64) -> Duration {
        T0 + Duration::from_millis(ms)
    }

    #[test]
    fn constants_are_the_kernels() {
        assert_eq!(PACKET_COST, 50_000_000);
        assert_eq!(TOKEN_MAX, 5 * PACKET_COST);
    }

    /// Kernel selftest/ratelimiter.c expected_results: (ms slept before, result).
    #[test]
    fn kernel_selftest_timings() {
        let steps = [
            (0, true),
            (0, true),
            (0, true),
            (0, true),
            (0, true),
            (0, false),
            (50, true),
            (0, false),
            (100, true),
            (0, true),
            (0, false),
        ];
        for source in ["192.0.2.1", "2001:db8::1", "10.0.0.1"] {
            let mut limiter = Ratelimiter::default();
            let mut now = 0;
            for (i, (sleep, expected)) in steps.iter().enumerate() {
                now += sleep;
                assert_eq!(
                    limiter.allow(ip(source), at(now)),
                    *expected,
                    "{source} step {i}"
                );
            }
        }
    }

    #[test]
    fn refill_caps_at_the_burst() {
        let mut l = Ratelimiter::default();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(l.allow(a, T0));
        }
        let got: Vec<bool> = (0..5).map(|_| l.allow(a, at(200))).collect();
        assert_eq!(got, [true, true, true, true, false]);
        let got: Vec<bool> = (0..6).map(|_| l.allow(a, at(60_000))).collect();
        assert_eq!(got, [true, true, true, true, true, false]);
    }

    #[test]
    fn steady_rate_is_twenty_per_second() {
        let mut l = Ratelimiter::default();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            l.allow(a, T0);
        }
        let passed = (1..=200u64).filter(|k| l.allow(a, at(k * 10))).count();
        assert_eq!(passed, 40, "2 s at 100/s: one per 50 ms");
    }

    #[test]
    fn separate_buckets_per_ipv4_address() {
        let mut l = Ratelimiter::default();
        for _ in 0..5 {
            assert!(l.allow(ip("192.0.2.1"), T0));
        }
        assert!(!l.allow(ip("192.0.2.1"), T0));
        assert!(l.allow(ip("192.0.2.2"), T0));
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_bucket() {
        let mut l = Ratelimiter::default();
        for i in 0..5 {
            assert!(l.allow(ip(&format!("2001:db8::{i:x}")), T0));
        }
        assert!(!l.allow(ip("2001:db8::ffff:1"), T0));
        assert!(l.allow(ip("2001:db8:0:1::1"), T0), "another /64");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let mut l = Ratelimiter::default();
        for _ in 0..5 {
            assert!(l.allow(ip("192.0.2.1"), T0));
        }
        assert!(!l.allow(ip("::ffff:192.0.2.1"), T0));
        assert!(l.allow(ip("::ffff:192.0.2.2"), T0));
    }

    #[test]
    fn ipv4_and_ipv6_keys_do_not_collide() {
        assert_ne!(source_key(ip("0.0.0.0")), source_key(ip("::1")));
        assert_ne!(source_key(ip("0.0.0.1")), source_key(ip("0:0:0:1::")));
    }

    #[test]
    fn idle_entries_are_collected() {
        let mut l = Ratelimiter::default();
        for i in 0..10u64 {
            l.allow(ip(&format!("192.0.2.{i}")), at(i * 100));
        }
        assert_eq!(l.len(), 10);
        // An entry idle exactly 1 s stays; more than 1 s goes.
        l.gc(at(1400));
        assert_eq!(l.len(), 6);
        l.gc(at(1400) + Duration::from_micros(100));
        assert_eq!(l.len(), 5);
        for k in 0..30u64 {
            l.allow(ip("198.51.100.7"), at(2000 + k * 500));
        }
        assert_eq!(l.len(), 1, "a source in use is kept");
    }

    #[test]
    fn collected_entry_starts_fresh() {
        let mut l = Ratelimiter::default();
        let a = ip("192.0.2.1");
        for _ in 0..6 {
            l.allow(a, T0);
        }
        l.gc(at(5000));
        assert!(l.is_empty());
        let got: Vec<bool> = (0..6).map(|_| l.allow(a, at(5000))).collect();
        assert_eq!(got, [true, true, true, true, true, false]);
    }

    #[test]
    fn table_is_bounded() {
        let mut l = Ratelimiter::new(3);
        for i in 0..3 {
            assert!(l.allow(ip(&format!("192.0.2.{i}")), T0));
        }
        assert!(!l.allow(ip("192.0.2.200"), T0));
        assert!(!l.allow(ip("2001:db8::1"), T0));
        assert_eq!(l.len(), 3);
        assert!(l.allow(ip("192.0.2.0"), at(50)));
        assert!(l.allow(ip("192.0.2.0"), at(900)));
        assert!(l.allow(ip("192.0.2.200"), at(1500)));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn clock_going_backwards_is_treated_as_no_time() {
        let mut l = Ratelimiter::default();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(l.allow(a, T0));
        }
        assert!(!l.allow(a, T0 - Duration::from_secs(10)));
        assert!(!l.allow(a, at(10)));
        assert!(l.allow(a, at(50)));
    }
}
