//! Sealing through the data plane's crypto pipeline (criterion,
//! `harness = false`): what WGPY_CRYPTO_THREADS workers buy when cores are
//! free.
//!
//! A feeder thread plays a lane: it takes a batch of 64 packets of 1420
//! bytes from its recycler (datapath/recycle.rs; 1 + workers batches in
//! flight, as a lone lane has), takes the batch's send counters together
//! with a ticket of the peer's send order (datapath/sequence.rs), and submits
//! it to the pipeline (datapath/pipeline.rs). A worker seals the 64 packets
//! in place (`Keypair::seal_with_counter`, as the data plane does) and
//! completes its ticket; the sink, in ticket order, checks that the batches
//! come out in counter order and drops each, so it goes back to the feeder.
//! With 0 workers the feeder seals every batch itself (the default on small
//! machines). Not included: reading the TUN device and sending (system
//! calls, which the lanes make).
//!
//! `WGPY_BENCH_WORKERS` (default `0,1,2`): the worker counts measured,
//! comma-separated; on a larger machine e.g.
//! `WGPY_BENCH_WORKERS=1,2,4,8 cargo bench --bench pipeline`.
//!
//! - criterion: `pipeline/seal_64x1420_workers_N`, time and plaintext
//!   throughput per batch, measured over runs of many batches in flight.
//! - then a summary measured with `Instant` (median of RUNS runs of
//!   BATCHES batches each, worker counts interleaved): Gbit/s of plaintext
//!   sealed at each worker count and the speed-up over one worker, and a
//!   line to grep: `SUMMARY: pipeline sealing Gbit/s: 1 worker 12.3, 2 workers 21.7 (1.77x)`
//!   (2 vCPUs, 2026-12-05).

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use wgpy::datapath::pipeline::{Job, Pipeline};
use wgpy::datapath::recycle::{Recycled, Recycler};
use wgpy::datapath::sequence::Sequencer;
use wgpy::messages::TRANSPORT_HEADER_LEN;
use wgpy::session::Keypair;
use zeroize::Zeroizing;

const PACKET: usize = 1420;
const MTU: usize = 1420;
const BATCH: usize = 64;
const WIRE: usize = TRANSPORT_HEADER_LEN + PACKET + 16;
const NOW: Duration = Duration::from_secs(1);
const RUNS: usize = 7;
const BATCHES: usize = 2_000;
const WORKERS_ENV: &str = "WGPY_BENCH_WORKERS";

/// A lane's batch: 64 packets and the first send counter they were given.
struct Batch {
    bufs: Vec<Vec<u8>>,
    first: u64,
}

fn new_batch() -> Batch {
    let mut buf = vec![0u8; WIRE];
    for (i, b) in buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + PACKET]
        .iter_mut()
        .enumerate()
    {
        *b = i as u8;
    }
    Batch {
        bufs: vec![buf; BATCH],
        first: 0,
    }
}

/// The peer's send order; its sink checks the batches come in counter order.
type Order = Sequencer<Recycled<Batch>, u64>;

struct SealBatch {
    batch: Recycled<Batch>,
    kp: Arc<Keypair>,
    counters: Range<u64>,
    ticket: u64,
    order: Arc<Order>,
}

impl Job for SealBatch {
    fn run(mut self) {
        for (k, buf) in self.batch.bufs.iter_mut().enumerate() {
            let counter = self.counters.start + k as u64;
            black_box(kp_seal(&self.kp, buf, counter));
        }
        self.batch.first = self.counters.start;
        self.order
            .complete(self.ticket, Some(self.batch), |next, b| {
                assert_eq!(b.first, *next, "batches leave in counter order");
                *next += BATCH as u64;
            });
    }
}

fn kp_seal(kp: &Keypair, buf: &mut [u8], counter: u64) -> usize {
    kp.seal_with_counter(buf, PACKET, MTU, counter)
        .expect("seal")
}

fn keypair() -> Arc<Keypair> {
    let a = Zeroizing::new([0x61; 32]);
    let b = Zeroizing::new([0x62; 32]);
    Arc::new(Keypair::new(&a, &b, 1, 2, NOW, true).expect("keypair"))
}

/// One peer's traffic through a pipeline of `workers` threads.
struct Bench {
    pipeline: Pipeline<SealBatch>,
    batches: Recycler<Batch>,
    in_flight: usize,
    kp: Arc<Keypair>,
    order: Arc<Order>,
}

impl Bench {
    fn new(workers: usize) -> Self {
        let kp = keypair();
        let next = kp.sending_counter();
        Self {
            pipeline: Pipeline::new(workers),
            batches: Recycler::new(1 + workers, new_batch),
            in_flight: 1 + workers,
            kp,
            order: Arc::new(Sequencer::new(next)),
        }
    }

    /// Feeds `n` batches and waits until every one is sealed and back.
    fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            let batch = self.batches.get();
            let kp = &self.kp;
            let (ticket, counters) = self
                .order
                .ticket_with(|| kp.next_counters(BATCH, NOW).ok())
                .expect("counters");
            self.pipeline.submit(SealBatch {
                batch,
                kp: kp.clone(),
                counters,
                ticket,
                order: self.order.clone(),
            });
        }
        // Holding every batch means none is in flight.
        let all: Vec<_> = (0..self.in_flight).map(|_| self.batches.get()).collect();
        let elapsed = start.elapsed();
        drop(all);
        elapsed
    }
}

fn worker_counts() -> Vec<usize> {
    let text = std::env::var(WORKERS_ENV).unwrap_or_else(|_| "0,1,2".into());
    let counts: Vec<usize> = text
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    assert!(
        !counts.is_empty(),
        "{WORKERS_ENV}={text:?}: give worker counts, e.g. 1,2,4"
    );
    counts
}

fn bench_pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes((PACKET * BATCH) as u64));
    for workers in worker_counts() {
        let mut bench = Bench::new(workers);
        let running = bench.pipeline.start("bench-crypto").expect("workers");
        g.bench_function(format!("seal_64x1420_workers_{workers}"), |b| {
            b.iter_custom(|iters| bench.run(iters))
        });
        running.stop();
    }
    g.finish();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Gbit/s of plaintext sealed at each worker count, runs interleaved.
fn summary() {
    let counts = worker_counts();
    let mut benches: Vec<_> = counts.iter().map(|&w| Bench::new(w)).collect();
    let running: Vec<_> = benches
        .iter()
        .map(|b| b.pipeline.start("bench-crypto").expect("workers"))
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
    for run in 0..=RUNS {
        for (bench, out) in benches.iter_mut().zip(rates.iter_mut()) {
            let t = bench.run(BATCHES as u64);
            let bits = (BATCHES * BATCH * PACKET * 8) as f64;
            if run > 0 {
                out.push(bits / t.as_secs_f64() / 1e9); // run 0 warms up
            }
        }
    }
    for r in running {
        r.stop();
    }
    report(&counts, rates.into_iter().map(median).collect());
}

fn report(counts: &[usize], gbps: Vec<f64>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!("summary (Instant, median of {RUNS} runs of {BATCHES} batches of {BATCH}x{PACKET} bytes, one peer; {cores} cores):");
    let one = counts.iter().position(|&w| w == 1).map(|i| gbps[i]);
    let mut line = Vec::new();
    for (&w, &rate) in counts.iter().zip(&gbps) {
        let speedup = one.map_or(String::new(), |o| format!("  {:.2}x one worker", rate / o));
        let who = if w == 0 {
            "the feeder alone".to_string()
        } else {
            format!("{w} worker(s)")
        };
        println!("  {who:>18}: {rate:6.2} Gbit/s sealed{speedup}");
        if w > 0 {
            line.push(format!(
                "{w} worker{} {rate:.1}",
                if w == 1 { "" } else { "s" }
            ));
        }
    }
    let scale = match (one, counts.iter().zip(&gbps).rfind(|(&w, _)| w > 1)) {
        (Some(o), Some((_, &top))) => format!(" ({:.2}x)", top / o),
        _ => String::new(),
    };
    println!(
        "SUMMARY: pipeline sealing Gbit/s: {}{scale}",
        line.join(", ")
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_pipeline(&mut c);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not, and then
    // criterion runs each benchmark once as a test: skip the summary too.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
