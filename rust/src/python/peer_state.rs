//! `wgpy._core.PeerState`: everything the control plane reads about one
//! peer at once, frozen. Times are CLOCK_MONOTONIC seconds (the reading of
//! Python's `time.monotonic()`), 0.0 meaning never; `last_handshake` is Unix
//! time.

use pyo3::prelude::*;

use crate::datapath::PeerSnapshot;

use super::convert::{addr_tuple, ns_to_secs};

#[pyclass(module = "wgpy._core", name = "PeerState", frozen, get_all)]
pub(crate) struct PyPeerState {
    tx_bytes: u64,
    rx_bytes: u64,
    last_tx_auth: f64,
    last_rx_auth: f64,
    first_tx_data_since_rx: f64,
    first_rx_data_since_tx: f64,
    last_rx_data: f64,
    last_tx_data: f64,
    invalid_source_packets: u64,
    initiation_sent: f64,
    session_derived: f64,
    handshake_complete: f64,
    last_handshake: Option<f64>,
    handshake_requests: u64,
    endpoint: Option<(String, u16)>,
    endpoint_source: Option<String>,
    source_pinned: bool,
    held: bool,
    staged: usize,
    can_send: bool,
}

impl From<PeerSnapshot> for PyPeerState {
    fn from(s: PeerSnapshot) -> Self {
        let a = s.activity;
        Self {
            tx_bytes: a.tx_bytes,
            rx_bytes: a.rx_bytes,
            last_tx_auth: ns_to_secs(a.last_tx_auth),
            last_rx_auth: ns_to_secs(a.last_rx_auth),
            first_tx_data_since_rx: ns_to_secs(a.first_tx_data_since_rx),
            first_rx_data_since_tx: ns_to_secs(a.first_rx_data_since_tx),
            last_rx_data: ns_to_secs(a.last_rx_data),
            last_tx_data: ns_to_secs(a.last_tx_data),
            invalid_source_packets: a.invalid_source,
            initiation_sent: ns_to_secs(a.initiation_sent),
            session_derived: ns_to_secs(a.session_derived),
            handshake_complete: ns_to_secs(a.handshake_complete),
            last_handshake: (a.handshake_wall_ns != 0).then(|| ns_to_secs(a.handshake_wall_ns)),
            handshake_requests: a.handshake_requests,
            endpoint: s.endpoint.map(|e| addr_tuple(&e.addr)),
            endpoint_source: s.endpoint.and_then(|e| e.src).map(|(ip, _)| ip.to_string()),
            source_pinned: s.source_pinned,
            held: s.held,
            staged: s.staged,
            can_send: s.can_send,
        }
    }
}

#[pymethods]
impl PyPeerState {
    fn __repr__(&self) -> String {
        format!(
            "PeerState(endpoint={:?}, tx_bytes={}, rx_bytes={}, last_handshake={:?}, held={})",
            self.endpoint, self.tx_bytes, self.rx_bytes, self.last_handshake, self.held
        )
    }
}
