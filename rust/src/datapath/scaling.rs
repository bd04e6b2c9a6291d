//! How many lanes and crypto workers a device runs: a measured default for
//! the machine's core count, which the environment can override.
//!
//! - Lanes (`WGPY_QUEUES`, 1-64): each is one TUN queue (a multi-queue TUN
//!   device when there are several) and one UDP socket per address family
//!   (SO_REUSEPORT groups), served in both directions by one thread
//!   (lanes.rs). The kernel spreads flows over the TUN queues and senders
//!   over the sockets, so lanes scale with peers and flows.
//! - Crypto workers (`WGPY_CRYPTO_THREADS`, 0-64): the pipeline that seals
//!   and opens whole batches beside the lanes (pipeline.rs), so even one
//!   peer's traffic spreads over cores.
//! - Defaults (`default_for`), from `python3 -m bench` and `cargo bench
//!   --bench pipeline` (bench/README.md, "Scaling over cores"). On up to
//!   SMALL cores one lane and no workers. Measured on 2 cores (one run,
//!   medians of 3): one lane gave TCP 4.51 Gbit/s at 2.77 core-s/GB; two
//!   lanes the same TCP 1 stream (4.46) and CPU (2.67), TCP 4 streams +10 %
//!   but UDP delivered -23 %; one worker 2.94 core-s/GB and a third less
//!   UDP under 1 % loss: every core is already busy with the sender, the
//!   receiver and the kernel, and hand-overs only add work. Above SMALL, a
//!   lane per two cores (the other core of each pair goes to the kernel's
//!   share of the traffic), up to MAX_DEFAULT_LANES, and no workers (lanes
//!   need no hand-over at all). That part is NOT measured yet (no larger
//!   machine here): bench/README.md says how to measure it and move
//!   `default_for`.
//! - The values are read once per process; a value that cannot be used is
//!   replaced by the default and reported (a notice in the log).

use std::sync::OnceLock;

pub const QUEUES_ENV: &str = "WGPY_QUEUES";
pub const WORKERS_ENV: &str = "WGPY_CRYPTO_THREADS";
const MAX: usize = 64;
/// Up to this many cores, one lane and no workers (measured on 2 cores).
const SMALL: usize = 2;
const MAX_DEFAULT_LANES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    pub queues: usize,
    pub workers: usize,
    /// Settings that could not be used, for the log.
    pub notices: Vec<String>,
}

/// The measured default for a machine with `cores` cores: (lanes, workers).
pub fn default_for(cores: usize) -> (usize, usize) {
    if cores <= SMALL {
        (1, 0)
    } else {
        ((cores / 2).clamp(1, MAX_DEFAULT_LANES), 0)
    }
}

/// This process's scaling (the environment, else the default), read once.
pub fn get() -> &'static Scaling {
    static SCALING: OnceLock<Scaling> = OnceLock::new();
    SCALING.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        resolve(
            cores,
            std::env::var(QUEUES_ENV).ok(),
            std::env::var(WORKERS_ENV).ok(),
        )
    })
}

/// The scaling for `cores` cores and the two variables' values.
pub fn resolve(cores: usize, queues: Option<String>, workers: Option<String>) -> Scaling {
    let (default_queues, default_workers) = default_for(cores);
    let mut notices = Vec::new();
    let queues = setting(
        QUEUES_ENV,
        queues,
        1,
        default_queues,
        "queues",
        &mut notices,
    );
    let workers = setting(
        WORKERS_ENV,
        workers,
        0,
        default_workers,
        "threads",
        &mut notices,
    );
    Scaling {
        queues,
        workers,
        notices,
    }
}

fn setting(
    name: &str,
    value: Option<String>,
    least: usize,
    default: usize,
    what: &str,
    notices: &mut Vec<String>,
) -> usize {
    let Some(v) = value else { return default };
    match v.trim().parse::<usize>() {
        Ok(n) if (least..=MAX).contains(&n) => n,
        _ => {
            notices.push(format!(
                "{name}={v:?} is not a number of {what} ({least}-{MAX}); using {default}"
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_machines_get_one_lane_and_no_workers() {
        assert_eq!(default_for(1), (1, 0));
        assert_eq!(default_for(2), (1, 0));
        assert_eq!(default_for(4), (2, 0));
        assert_eq!(default_for(64), (MAX_DEFAULT_LANES, 0));
    }

    #[test]
    fn the_environment_overrides_and_bad_values_are_reported() {
        let s = resolve(2, Some("4".into()), Some(" 2 ".into()));
        assert_eq!((s.queues, s.workers), (4, 2));
        assert!(s.notices.is_empty());
        let s = resolve(2, Some("0".into()), Some("lots".into()));
        assert_eq!((s.queues, s.workers), (1, 0));
        assert_eq!(s.notices.len(), 2);
        assert!(s.notices[1].contains("WGPY_CRYPTO_THREADS=\"lots\" is not a number of threads"));
    }
}
