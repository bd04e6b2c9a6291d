//! Time as the protocol sees it, behind a trait so that timer rules can be
//! tested without sleeping.
//!
//! - `now()` is monotonic time (ages of keys, cookies and the initiation flood
//!   rule); it never goes back and does not count wall-clock jumps.
//! - `unix_time()` is wall-clock time since the Unix epoch; only the TAI64N
//!   handshake timestamp uses it.
//!
//! `SystemClock` reads the OS clocks; `ManualClock` only moves when told to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Monotonic time since an arbitrary, fixed origin.
    fn now(&self) -> Duration;
    /// Wall-clock time since the Unix epoch.
    fn unix_time(&self) -> Duration;
}

/// CLOCK_MONOTONIC as a duration since boot: the same reading as Python's
/// `time.monotonic()`, so times from the data plane can be compared with the
/// control plane's.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes a timespec through the valid pointer
    // we pass; CLOCK_MONOTONIC is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The operating system's clocks (monotonic: CLOCK_MONOTONIC).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    pub fn new() -> Self {
        Self
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        monotonic_now()
    }

    fn unix_time(&self) -> Duration {
        // A clock set before 1970 is a broken host; treat it as the epoch
        // rather than failing every handshake.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock for tests: both readings only change through `advance`/`set_*`.
#[derive(Debug, Default)]
pub struct ManualClock {
    mono_ns: AtomicU64,
    unix_ns: AtomicU64,
}

fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ManualClock {
    pub fn new(now: Duration, unix_time: Duration) -> Self {
        Self {
            mono_ns: AtomicU64::new(as_nanos(now)),
            unix_ns: AtomicU64::new(as_nanos(unix_time)),
        }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = as_nanos(by);
        let add = |v: u64| Some(v.saturating_add(by));
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .mono_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, add);
        let _ = self
            .unix_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, add);
    }

    /// Sets the wall clock alone, as an NTP step would.
    pub fn set_unix_time(&self, t: Duration) {
        self.unix_ns.store(as_nanos(t), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.load(Ordering::SeqCst))
    }

    fn unix_time(&self) -> Duration {
        Duration::from_nanos(self.unix_ns.load(Ordering::SeqCst))
    }
}

/// True when more than `limit` has passed since `since` (as wireguard-go;
/// the kernel's `wg_birthdate_has_expired` also counts exactly `limit`, a
/// difference of one nanosecond that no peer can observe).
pub fn has_expired(since: Duration, limit: Duration, now: Duration) -> bool {
    now.saturating_sub(since) > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Duration::from_secs(5), Duration::from_secs(1_000));
        assert_eq!(c.now(), Duration::from_secs(5));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Duration::from_millis(6500));
        assert_eq!(c.unix_time(), Duration::from_millis(1_001_500));
        c.set_unix_time(Duration::from_secs(7));
        assert_eq!(c.unix_time(), Duration::from_secs(7));
        assert_eq!(c.now(), Duration::from_millis(6500));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = c.now();
        assert!(b >= a + Duration::from_millis(2));
        assert!(a > Duration::ZERO);
        assert!(c.unix_time() > Duration::from_secs(1_600_000_000));
    }

    #[test]
    fn expiry_is_strict() {
        let t = Duration::from_secs(10);
        assert!(!has_expired(
            t,
            Duration::from_secs(5),
            Duration::from_secs(15)
        ));
        assert!(has_expired(
            t,
            Duration::from_secs(5),
            Duration::from_nanos(15_000_000_001)
        ));
    }
}
