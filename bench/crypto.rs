//! Transport and handshake benchmarks (criterion, `harness = false`).
//!
//! - `transport/encrypt_1420`: `Keypair::seal_in_place` of a 1420-byte packet
//!   with mtu 1420 (no padding), reusing one buffer; the counter keeps going up.
//! - `transport/ring_seal_1420`: the backend alone on the same buffer: ring's
//!   `LessSafeKey::seal_in_place_separate_tag` (ChaCha20-Poly1305) with a
//!   counter nonce, plus the 16-byte tag copy any caller needs.
//! - `transport/decrypt_1420`: `Keypair::open_in_place` of fresh messages only:
//!   batches of valid messages with increasing counters are made untimed, then
//!   decrypted once each, in order, timed (`iter_custom`). No replay
//!   rejections, no re-encryption inside the timed loop.
//! - `handshake/full`: initiation create + open + consume + response create +
//!   consume, with fresh ephemeral keys each time.
//!
//! After criterion, a summary is measured again in this binary with
//! `Instant` (median of interleaved runs) and printed:
//! wgpy encrypt / raw ring throughput ratio (target >= 0.9) and handshakes/s.
//! Sealing through the data plane's pipeline with worker threads is
//! `bench/pipeline.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use wgpy::clock::{Clock, ManualClock};
use wgpy::keys::{PresharedKey, PrivateKey};
use wgpy::messages::TRANSPORT_HEADER_LEN;
use wgpy::noise::{Handshake, Identity};
use wgpy::session::{encrypted_len, Keypair};
use zeroize::Zeroizing;

const PACKET: usize = 1420;
const MTU: usize = 1420;
const TAG: usize = 16;
const WIRE: usize = TRANSPORT_HEADER_LEN + PACKET + TAG;
const KEY_A: [u8; 32] = [0x61; 32];
const KEY_B: [u8; 32] = [0x62; 32];
const NOW: Duration = Duration::from_secs(1);
/// Messages made (untimed) per timed decrypt batch; 64 * 1452 B stays in L2.
const DECRYPT_BATCH: usize = 64;

fn keypairs() -> (Keypair, Keypair) {
    let a = Zeroizing::new(KEY_A);
    let b = Zeroizing::new(KEY_B);
    let send = Keypair::new(&a, &b, 1, 2, NOW, true).expect("keypair");
    let recv = Keypair::new(&b, &a, 2, 1, NOW, false).expect("keypair");
    (send, recv)
}

fn packet_buffer() -> Vec<u8> {
    assert_eq!(
        encrypted_len(PACKET, MTU),
        WIRE,
        "1420 bytes at mtu 1420 need no padding"
    );
    let mut buf = vec![0u8; WIRE];
    for (i, b) in buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + PACKET]
        .iter_mut()
        .enumerate()
    {
        *b = i as u8;
    }
    buf
}

/// wgpy's transport encrypt: one call per packet.
fn wgpy_seal(kp: &Keypair, buf: &mut [u8]) {
    let n = kp
        .seal_in_place(black_box(buf), PACKET, MTU, NOW)
        .expect("seal");
    black_box(n);
}

/// The same work done with ring directly: counter nonce, seal, tag copy.
fn ring_seal(key: &LessSafeKey, counter: &mut u64, buf: &mut [u8]) {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    *counter += 1;
    let (plain, tag_out) = black_box(buf)[TRANSPORT_HEADER_LEN..].split_at_mut(PACKET);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), plain)
        .expect("seal");
    tag_out.copy_from_slice(tag.as_ref());
}

fn ring_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY_A).expect("key"))
}

/// Fills `batch` with fresh messages from `send` (untimed), then times
/// decrypting each once with `recv`.
fn timed_decrypt_batch(send: &Keypair, recv: &Keypair, batch: &mut [Vec<u8>]) -> Duration {
    for m in batch.iter_mut() {
        send.seal_in_place(m, PACKET, MTU, NOW).expect("seal");
    }
    let start = Instant::now();
    for m in batch.iter_mut() {
        let range = recv.open_in_place(black_box(m), NOW).expect("open");
        black_box(range);
    }
    start.elapsed()
}

/// Both ends of a handshake; the clock moves 1 s per handshake so that the
/// timestamp and flood rules accept every new initiation.
struct HandshakePair {
    clock: Arc<ManualClock>,
    initiator: Handshake,
    responder: Handshake,
    responder_identity: Arc<Identity>,
}

impl HandshakePair {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(
            Duration::from_secs(1),
            Duration::from_secs(1_700_000_000),
        ));
        let dynclock: Arc<dyn Clock> = clock.clone();
        let a = Arc::new(Identity::new(PrivateKey::from_bytes([0x11; 32])));
        let b = Arc::new(Identity::new(PrivateKey::from_bytes([0x22; 32])));
        let psk = Some(PresharedKey::from_bytes([0x33; 32]));
        let initiator = Handshake::new(a.clone(), b.public_key(), psk.clone(), dynclock.clone());
        let responder = Handshake::new(b.clone(), a.public_key(), psk, dynclock);
        Self {
            clock,
            initiator,
            responder,
            responder_identity: b,
        }
    }

    fn handshake(&mut self) -> (Keypair, Keypair) {
        self.clock.advance(Duration::from_secs(1));
        let m1 = self.initiator.create_initiation().expect("initiation");
        let received = self
            .responder_identity
            .open_initiation(black_box(&m1))
            .expect("open");
        self.responder
            .consume_initiation(&received)
            .expect("consume initiation");
        let (m2, kr) = self.responder.create_response().expect("response");
        let ki = self
            .initiator
            .consume_response(black_box(&m2))
            .expect("consume response");
        (ki, kr)
    }
}

fn bench_transport(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport");
    g.throughput(Throughput::Bytes(PACKET as u64));

    let (send, _) = keypairs();
    let mut buf = packet_buffer();
    g.bench_function("encrypt_1420", |b| b.iter(|| wgpy_seal(&send, &mut buf)));

    let key = ring_key();
    let mut counter = 0u64;
    let mut buf = packet_buffer();
    g.bench_function("ring_seal_1420", |b| {
        b.iter(|| ring_seal(&key, &mut counter, &mut buf))
    });

    let (send, recv) = keypairs();
    let mut batch = vec![packet_buffer(); DECRYPT_BATCH];
    g.bench_function("decrypt_1420", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(DECRYPT_BATCH);
                total += timed_decrypt_batch(&send, &recv, &mut batch[..n]);
                left -= n;
            }
            total
        })
    });
    g.finish();
}

fn bench_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let mut pair = HandshakePair::new();
    g.bench_function("full", |b| b.iter(|| black_box(pair.handshake())));
    g.finish();
}

criterion_group!(benches, bench_transport, bench_handshake);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of `f`, over `n` calls.
fn ns_per(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The summary's own measurements: runs of wgpy and ring alternate, and the
/// median of the per-pair ratios is reported, so that load from other
/// processes affects both sides alike.
fn summary() {
    const RUNS: usize = 15;
    const PACKETS: usize = 20_000;
    const HANDSHAKES: usize = 200;

    let (send, recv) = keypairs();
    let key = ring_key();
    let mut counter = 0u64;
    let mut wgpy_buf = packet_buffer();
    let mut ring_buf = packet_buffer();
    // Warm up both paths (CPU frequency, caches, ring's CPU feature detection).
    ns_per(PACKETS, || wgpy_seal(&send, &mut wgpy_buf));
    ns_per(PACKETS, || ring_seal(&key, &mut counter, &mut ring_buf));

    let (mut wgpy_ns, mut ring_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let w = ns_per(PACKETS, || wgpy_seal(&send, &mut wgpy_buf));
        let r = ns_per(PACKETS, || ring_seal(&key, &mut counter, &mut ring_buf));
        wgpy_ns.push(w);
        ring_ns.push(r);
        ratios.push(r / w);
    }
    let (w, r, ratio) = (median(wgpy_ns), median(ring_ns), median(ratios));

    let mut batch = vec![packet_buffer(); DECRYPT_BATCH];
    let decrypt_ns = median(
        (0..RUNS)
            .map(|_| {
                let t: Duration = (0..PACKETS / DECRYPT_BATCH)
                    .map(|_| timed_decrypt_batch(&send, &recv, &mut batch))
                    .sum();
                t.as_nanos() as f64 / (PACKETS / DECRYPT_BATCH * DECRYPT_BATCH) as f64
            })
            .collect(),
    );

    let mut pair = HandshakePair::new();
    let handshake_ns = median(
        (0..5)
            .map(|_| ns_per(HANDSHAKES, || drop(black_box(pair.handshake()))))
            .collect(),
    );

    let gbps = |ns: f64| PACKET as f64 / ns; // bytes per ns = GB/s
    println!();
    println!("summary (Instant, median of {RUNS} interleaved runs of {PACKETS} packets; {PACKET}-byte packets, mtu {MTU}):");
    println!(
        "  wgpy encrypt  (Keypair::seal_in_place):            {w:8.1} ns/packet  {:.3} GB/s",
        gbps(w)
    );
    println!(
        "  raw ring seal (seal_in_place_separate_tag + tag):  {r:8.1} ns/packet  {:.3} GB/s",
        gbps(r)
    );
    println!("  wgpy decrypt  (Keypair::open_in_place):            {decrypt_ns:8.1} ns/packet  {:.3} GB/s", gbps(decrypt_ns));
    println!(
        "  handshake (create+open+consume+respond+consume):   {:8.1} us  {:.0} handshakes/s",
        handshake_ns / 1e3,
        1e9 / handshake_ns
    );
    let verdict = if ratio >= 0.9 { "ok" } else { "BELOW TARGET" };
    println!(
        "SUMMARY: encrypt throughput wgpy/ring = {ratio:.3} (target >= 0.90, {verdict}); handshakes/s = {:.0}",
        1e9 / handshake_ns
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not, and then
    // criterion runs each benchmark once as a test: skip the summary too.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
