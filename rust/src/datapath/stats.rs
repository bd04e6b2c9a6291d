//! The data plane's device-wide counters: what happened to packets that did
//! not become traffic, and to handshakes. Per-peer figures are in activity.rs.
//! Counters only ever grow; `wgpy show`, metrics and tests read snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Default)]
        pub struct DeviceCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A reading of `DeviceCounters`, plus the device's state. (With the
        /// `python` feature it is also `wgpy._core.DeviceStats`, read-only.)
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[cfg_attr(
            feature = "python",
            pyo3::pyclass(module = "wgpy._core", name = "DeviceStats", frozen, get_all)
        )]
        pub struct DeviceStats {
            $($(#[$doc])* pub $name: u64,)*
            /// Receiver indices in use (handshakes in progress and keypairs).
            pub indices: u64,
            /// Handshake messages waiting for the handshake thread.
            pub handshake_queue: u64,
            /// Whether the device was under load at its last handshake.
            pub under_load: bool,
        }

        impl DeviceCounters {
            pub(crate) fn snapshot(&self) -> DeviceStats {
                DeviceStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    ..DeviceStats::default()
                }
            }
        }

        impl DeviceStats {
            /// (name, value) of every counter, for tables and metrics.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Datagrams of no known type or size.
    rx_malformed,
    /// Data messages naming no keypair of ours.
    rx_unknown_index,
    /// Data messages that failed authentication, or under an expired key.
    rx_auth_failed,
    /// Data messages whose counter was already seen or is too old.
    rx_replayed,
    /// Decrypted packets that are not IP, or whose inner source belongs to
    /// another peer (dropped).
    rx_invalid_packet,
    /// Packets the TUN device refused.
    rx_tun_errors,
    /// Packets from the TUN device with no peer for their destination.
    tx_no_route,
    /// Packets that could not be sent (socket errors, no endpoint).
    tx_dropped,
    /// Handshake messages whose mac1 was wrong, dropped by the receive threads.
    handshake_bad_mac1,
    /// Handshake messages dropped because the queue was full.
    handshake_queue_full,
    /// Initiations and responses accepted.
    handshake_accepted,
    /// Initiations and responses refused (replayed, too fast, unknown peer,
    /// failed authentication, no handshake of ours in flight).
    handshake_rejected,
    /// Initiations we sent.
    handshake_initiations_sent,
    /// Cookie replies we sent while under load.
    cookie_replies_sent,
    /// Cookie replies we accepted from peers.
    cookie_replies_received,
    /// Handshake messages refused by the per-source rate limiter under load.
    handshake_rate_limited,
}

impl DeviceCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn one(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
