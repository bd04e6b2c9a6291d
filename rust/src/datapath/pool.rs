//! Encryption and decryption spread over helper threads, batch by batch.
//!
//! The I/O thread that owns a batch keeps one chunk of it, hands the other
//! chunks to a small pool and goes on only when all are done. Packets keep
//! their order: send counters are taken for the whole batch before it is
//! split, and sending (or writing to the TUN device) happens after the join,
//! in batch order. Small batches stay on the I/O thread: handing work over
//! costs more than sealing a few packets.
//!
//! `WGPY_CRYPTO_THREADS` sets the number of helpers; the default is none.
//! Waking a sleeping helper is what decides whether it pays: measured on the
//! two-vCPU virtual machine this was built on (`cargo bench --bench crypto`),
//! one helper made a 256-packet batch 1.19x faster but a 64-packet batch
//! (the most the TUN side reads at once) 0.58x as fast, and both wgpy
//! daemons of a one-machine benchmark lost a third of their TCP throughput
//! to it. Turn it on where cores are plentiful and wake-ups cheap.

pub const THREADS_ENV: &str = "WGPY_CRYPTO_THREADS";
const MAX_HELPERS: usize = 64;
/// Fewest packets worth handing to another thread: waking a sleeping helper
/// costs tens of microseconds on a virtual machine (about 30 us measured
/// here), sealing 32 full-size packets about 27 us.
const MIN_CHUNK: usize = 32;

pub struct CryptoPool {
    pool: Option<rayon::ThreadPool>,
    helpers: usize,
}

impl CryptoPool {
    /// A pool sized by `WGPY_CRYPTO_THREADS` (none when it is not set), and
    /// a notice for the log when the variable cannot be used.
    pub fn from_env(name: &str) -> (Self, Option<String>) {
        let (helpers, notice) = match std::env::var(THREADS_ENV) {
            Err(_) => (0, None),
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n <= MAX_HELPERS => (n, None),
                _ => (
                    0,
                    Some(format!(
                        "{THREADS_ENV}={v:?} is not a number of threads (0-{MAX_HELPERS}); using none"
                    )),
                ),
            },
        };
        match Self::with_helpers(name, helpers) {
            Ok(p) => (p, notice),
            Err(e) => (
                Self {
                    pool: None,
                    helpers: 0,
                },
                Some(format!(
                    "cannot start crypto helper threads ({e}); using none"
                )),
            ),
        }
    }

    pub fn with_helpers(name: &str, helpers: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        if helpers == 0 {
            return Ok(Self {
                pool: None,
                helpers: 0,
            });
        }
        let prefix = name.to_string();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(helpers)
            .thread_name(move |i| format!("{prefix}{i}"))
            .build()?;
        Ok(Self {
            pool: Some(pool),
            helpers,
        })
    }

    pub fn helpers(&self) -> usize {
        self.helpers
    }

    /// Calls `f(offset, chunk)` on consecutive chunks covering `items`: the
    /// first on the calling thread, the rest on helpers; returns when all are done.
    pub fn for_each_chunk<T: Send>(&self, items: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
        let parts = (items.len() / MIN_CHUNK).min(self.helpers + 1);
        let Some(pool) = self.pool.as_ref().filter(|_| parts > 1) else {
            f(0, items);
            return;
        };
        let size = items.len().div_ceil(parts);
        let f = &f;
        pool.in_place_scope(|scope| {
            let (first, mut rest) = items.split_at_mut(size);
            let mut offset = size;
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at_mut(size.min(rest.len()));
                let at = offset;
                offset += chunk.len();
                scope.spawn(move |_| f(at, chunk));
                rest = tail;
            }
            f(0, first);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[test]
    fn every_item_once_with_its_offset() {
        for helpers in [0, 1, 3] {
            let pool = CryptoPool::with_helpers("t", helpers).expect("pool");
            for n in [0, 1, 15, 16, 33, 64, 1000] {
                let mut items: Vec<(usize, u32)> = (0..n).map(|i| (i, 0)).collect();
                let threads = Mutex::new(HashSet::new());
                pool.for_each_chunk(&mut items, |offset, chunk| {
                    threads
                        .lock()
                        .expect("lock")
                        .insert(std::thread::current().id());
                    for (k, item) in chunk.iter_mut().enumerate() {
                        assert_eq!(item.0, offset + k, "offset names the chunk's place");
                        item.1 += 1;
                    }
                });
                assert!(items.iter().all(|&(_, seen)| seen == 1), "n {n}");
                let used = threads.lock().expect("lock").len();
                let expected = if n < 2 * MIN_CHUNK {
                    1
                } else {
                    (n / MIN_CHUNK).min(helpers + 1)
                };
                assert!(used <= expected, "n {n} helpers {helpers}: {used} threads");
                if helpers == 0 || n < 2 * MIN_CHUNK {
                    assert_eq!(used, 1, "small batches stay on the caller");
                }
            }
        }
    }
}
