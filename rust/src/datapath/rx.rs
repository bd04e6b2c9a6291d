//! The receive side: datagrams from the UDP sockets.
//!
//! - Types 1-3 go to the handshake thread (handshake.rs), with their source
//!   and the local address they arrived on; initiations and responses only
//!   if their mac1 is right.
//! - Type 4: keypair by receiver index; open (the replay window moves only
//!   after the tag verifies); roam the endpoint to the packet's source; key
//!   confirmation of a pending next keypair (then the handshake is complete
//!   and the staged packets go); receive-side rekey request (initiator,
//!   keypair past 165 s, once per handshake); timer activity; a keepalive
//!   stops here; otherwise trim the padding to the IP length, require that
//!   the inner source address routes back to this same peer (longest-prefix
//!   match; else count and drop), and write it to TUN.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::monotonic_now;
use crate::error::Error;
use crate::messages::{self, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT};
use crate::session::{inner_packet_len, Keypair};

use super::endpoint::Source;
use super::events::Event;
use super::handshake::{handshake_complete, request_initiation};
use super::offload;
use super::peer::Peer;
use super::stats::DeviceCounters;
use super::sync::{read, write};
use super::sys::{self, EventFd, Readiness, RecvBatch};
use super::thread::Faults;
use super::{inner_source, now_ns, tx, Shared, UdpSocket, MAX_PACKET};

const BATCH: usize = 64;

pub(crate) fn udp_loop(
    shared: &Shared,
    sock: &Arc<UdpSocket>,
    stop: &EventFd,
    faults: &mut Faults,
) {
    let raw = sock.fd.as_raw_fd();
    let mut batch = RecvBatch::new(BATCH, MAX_PACKET);
    let mut coalescer = offload::Coalescer::new(shared.udp_offload);
    loop {
        match sys::wait_readable(raw, stop) {
            Ok(Readiness::Readable) | Ok(Readiness::Error) => faults.woke(),
            Ok(Readiness::Stop) => return,
            Err(e) => {
                shared.events.push(Event::SocketError {
                    error: e.to_string(),
                });
                return;
            }
        }
        loop {
            let n = match batch.recv(raw) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED etc.); they are not fatal.
                    if e.raw_os_error()
                        .is_some_and(|c| c == libc::EBADF || c == libc::ENOTSOCK)
                    {
                        shared.events.push(Event::SocketError {
                            error: e.to_string(),
                        });
                        return;
                    }
                    break;
                }
            };
            let now = monotonic_now();
            let mut transport = sort_batch(shared, &mut batch, n, sock.gro);
            shared.pool.for_each_chunk(&mut transport, |_, chunk| {
                for t in chunk {
                    t.opened = open(shared, t.msg, now);
                }
            });
            for t in transport {
                if let Some(range) = accept(shared, &t, now) {
                    deliver(shared, &t.msg[range], &mut coalescer);
                }
            }
            // Nothing waits in the coalescer across batches: latency first.
            coalescer.flush(&mut |b: &[u8]| tun_write(shared, b));
            if let Some(stack) = shared.inside.stack() {
                stack.batch_done();
            }
            if n < BATCH {
                break;
            }
        }
    }
}

/// A transport message of the batch and what opening it gave.
struct Transport<'a> {
    msg: &'a mut [u8],
    src: SocketAddr,
    local: Option<Source>,
    opened: Option<Opened>,
}

/// A message that authenticated: its peer, keypair and plaintext range.
struct Opened {
    peer: Arc<Peer>,
    kp: Arc<Keypair>,
    range: Range<usize>,
}

/// Splits the batch into datagrams: handshake messages go to the control
/// plane at once, transport messages are returned in arrival order.
fn sort_batch<'a>(
    shared: &Shared,
    batch: &'a mut RecvBatch,
    n: usize,
    gro: bool,
) -> Vec<Transport<'a>> {
    let mut transport = Vec::with_capacity(n);
    for (buf, meta) in batch.bufs.iter_mut().zip(&batch.meta).take(n) {
        let Some(src) = meta.src else { continue };
        let len = meta.len.min(buf.len());
        // With UDP GRO one buffer can hold a train of datagrams.
        let step = if gro && meta.segment > 0 {
            meta.segment
        } else {
            len.max(1)
        };
        for msg in buf[..len].chunks_mut(step) {
            match messages::message_type(msg) {
                Ok(TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY) => {
                    shared
                        .handshakes
                        .receive(msg, src, meta.local, &shared.counters);
                }
                Ok(TYPE_TRANSPORT) => transport.push(Transport {
                    msg,
                    src,
                    local: meta.local,
                    opened: None,
                }),
                _ => DeviceCounters::one(&shared.counters.rx_malformed),
            }
        }
    }
    transport
}

fn tun_write(shared: &Shared, b: &[u8]) {
    if sys::write(shared.tun_fd(), b).is_err() {
        DeviceCounters::one(&shared.counters.rx_tun_errors);
    }
}

/// Hands a packet to a userspace stack, or writes it to the TUN device: straight from the receive buffer
/// without offloads, through the coalescer with them.
fn deliver(shared: &Shared, packet: &[u8], coalescer: &mut offload::Coalescer) {
    if let Some(stack) = shared.inside.stack() {
        stack.deliver(packet);
    } else if shared.vnet_hdr {
        coalescer.push(packet, &mut |b: &[u8]| tun_write(shared, b));
    } else {
        tun_write(shared, packet);
    }
}

/// Finds the keypair and authenticates and decrypts in place (the replay
/// window moves only after the tag verifies). Safe to run on any thread.
fn open(shared: &Shared, msg: &mut [u8], now: Duration) -> Option<Opened> {
    let counters = &shared.counters;
    let found = messages::receiver_index(msg)
        .ok()
        .and_then(|index| read(&shared.indices).keypair(index));
    let Some((peer, kp)) = found else {
        DeviceCounters::one(&counters.rx_unknown_index);
        return None;
    };
    match kp.open_in_place(msg, now) {
        Ok(range) => Some(Opened { peer, kp, range }),
        Err(Error::Replay) => {
            DeviceCounters::one(&counters.rx_replayed);
            None
        }
        Err(_) => {
            DeviceCounters::one(&counters.rx_auth_failed);
            None
        }
    }
}

/// Everything after decryption, in arrival order: roaming, key confirmation,
/// rekey request, timers; then the inner packet's range if it goes to TUN.
fn accept(shared: &Shared, t: &Transport<'_>, now: Duration) -> Option<Range<usize>> {
    let Opened { peer, kp, range } = t.opened.as_ref()?;
    let mut notify = peer.endpoint().roam(t.src, t.local);
    if let Some(dropped) = peer.keypairs().confirm(kp) {
        write(&shared.indices).free(dropped);
        handshake_complete(shared, peer, now_ns());
        tx::flush_staged(shared, peer);
    }
    if kp.needs_rekey_on_receive(now) && peer.claim_lastminute_handshake() {
        request_initiation(shared, peer, false);
    }
    let plain = &t.msg[range.clone()];
    notify |= peer
        .activity()
        .received(now_ns(), t.msg.len() as u64, !plain.is_empty());
    if notify {
        peer.notify(&shared.events);
    }
    if plain.is_empty() {
        return None;
    }
    let Some(len) = inner_packet_len(plain) else {
        DeviceCounters::one(&shared.counters.rx_invalid_packet);
        return None;
    };
    let packet = &plain[..len];
    let routed = inner_source(packet).and_then(|s| read(&shared.allowed).lookup(s));
    if routed != Some(peer.id()) {
        peer.activity().invalid_source();
        DeviceCounters::one(&shared.counters.rx_invalid_packet);
        return None;
    }
    Some(range.start..range.start + len)
}
