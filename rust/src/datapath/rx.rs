//! The receive side: datagrams from the UDP sockets.
//!
//! - Types 1-3 go to the control plane whole, with their source and the local
//!   address they arrived on.
//! - Type 4: keypair by receiver index; open (the replay window moves only
//!   after the tag verifies); roam the endpoint to the packet's source; key
//!   confirmation of a pending next keypair (then flush staged packets);
//!   receive-side rekey request (initiator, keypair past 165 s, once); timer
//!   activity; a keepalive stops here; otherwise trim the padding to the IP
//!   length, require that the inner source address routes back to this same
//!   peer (longest-prefix match; else count and drop), and write it to TUN.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::monotonic_now;
use crate::messages::{self, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT};
use crate::session::{inner_packet_len, RekeyTrigger};

use super::events::{Event, HandshakeReason};
use super::offload;
use super::sys::{self, EventFd, Readiness, RecvBatch};
use super::{inner_source, now_ns, tx, Shared, UdpSocket, MAX_PACKET};

const BATCH: usize = 64;

pub(crate) fn udp_loop(shared: &Shared, sock: &Arc<UdpSocket>, stop: &EventFd) {
    let raw = sock.fd.as_raw_fd();
    let mut batch = RecvBatch::new(BATCH, MAX_PACKET);
    let mut coalescer = offload::Coalescer::new();
    loop {
        match sys::wait_readable(raw, stop) {
            Ok(Readiness::Readable) | Ok(Readiness::Error) => {}
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
            for i in 0..n {
                let meta = batch.meta[i];
                let Some(src) = meta.src else { continue };
                let len = meta.len.min(batch.bufs[i].len());
                // With UDP GRO one buffer can hold a train of datagrams.
                let step = if sock.gro && meta.segment > 0 {
                    meta.segment
                } else {
                    len.max(1)
                };
                for datagram in batch.bufs[i][..len].chunks_mut(step) {
                    if let Some(range) = handle(shared, datagram, src, meta.local, now) {
                        deliver(shared, &datagram[range], &mut coalescer);
                    }
                }
            }
            // Nothing waits in the coalescer across batches: latency first.
            coalescer.flush(&mut |b: &[u8]| tun_write(shared, b));
            if n < BATCH {
                break;
            }
        }
    }
}

/// Handles one datagram; returns where in `msg` a packet for the TUN device is.
fn handle(
    shared: &Shared,
    msg: &mut [u8],
    src: SocketAddr,
    local: Option<(IpAddr, u32)>,
    now: Duration,
) -> Option<Range<usize>> {
    match messages::message_type(msg) {
        Ok(TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY) => {
            shared.events.push(Event::Handshake {
                message: msg.to_vec(),
                source: src,
                local,
            });
        }
        Ok(TYPE_TRANSPORT) => return receive_transport(shared, msg, src, local, now),
        _ => {
            shared.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    None
}

fn tun_write(shared: &Shared, b: &[u8]) {
    if sys::write(shared.tun_fd(), b).is_err() {
        shared.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes a packet to the TUN device: straight from the receive buffer
/// without offloads, through the coalescer with them.
fn deliver(shared: &Shared, packet: &[u8], coalescer: &mut offload::Coalescer) {
    if shared.vnet_hdr {
        coalescer.push(packet, &mut |b: &[u8]| tun_write(shared, b));
    } else {
        tun_write(shared, packet);
    }
}

fn receive_transport(
    shared: &Shared,
    msg: &mut [u8],
    src: SocketAddr,
    local: Option<(IpAddr, u32)>,
    now: Duration,
) -> Option<Range<usize>> {
    let drop = || {
        shared.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
        None
    };
    let Ok(index) = messages::receiver_index(msg) else {
        return drop();
    };
    let found = shared
        .indices
        .read()
        .ok()
        .and_then(|m| m.get(&index).cloned());
    let Some((peer, kp)) = found else {
        return drop();
    };
    let Ok(range) = kp.open_in_place(msg, now) else {
        return drop();
    };
    let wire_len = msg.len() as u64;

    if let Some(endpoint) = peer.roam(src, local) {
        shared.events.push(Event::EndpointChanged {
            peer: peer.id,
            endpoint,
        });
    }
    let is_next = peer
        .slots
        .read()
        .is_ok_and(|s| s.next.as_ref().is_some_and(|n| Arc::ptr_eq(n, &kp)));
    if is_next {
        let dropped = peer.slots.write().ok().and_then(|mut s| s.confirm(&kp));
        if let Some(dropped) = dropped {
            if let Ok(mut map) = shared.indices.write() {
                for i in dropped {
                    map.remove(&i);
                }
            }
            shared.events.push(Event::KeyConfirmed { peer: peer.id });
            tx::flush_staged(shared, &peer);
        }
    }
    if kp.needs_rekey_on_receive(now) && kp.claim_rekey_request(RekeyTrigger::OnReceive) {
        shared.events.push(Event::NeedHandshake {
            peer: peer.id,
            reason: HandshakeReason::RekeyOnReceive,
        });
    }
    let start = range.start;
    let plain = &msg[range];
    if peer
        .activity
        .received(now_ns(), wire_len, !plain.is_empty())
    {
        shared.events.push(Event::Activity { peer: peer.id });
    }
    if plain.is_empty() {
        return None;
    }
    let Some(len) = inner_packet_len(plain) else {
        return drop();
    };
    let packet = &plain[..len];
    let routed =
        inner_source(packet).and_then(|s| shared.allowed.read().ok().and_then(|t| t.lookup(s)));
    if routed != Some(peer.id) {
        peer.activity.invalid_source.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(start..start + len)
}
