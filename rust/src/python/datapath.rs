//! `wgpy._core.Datapath`: the data plane of one device (datapath/mod.rs).
//! Peers are small integers chosen by the caller. Calls that wait for the
//! data plane's threads release the GIL; none waits on a socket.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::datapath::{self, DeviceStats, Event};

use super::convert::{ip_of, socket_addr};
use super::errors::OrPy;
use super::peer_state::PyPeerState;
use super::preshared_key::PyPresharedKey;
use super::private_key::PyPrivateKey;
use super::public_key::PyPublicKey;

#[pyclass(module = "wgpy._core", name = "Datapath", frozen)]
pub(crate) struct PyDatapath(pub(crate) Arc<datapath::Datapath>);

fn event_tuple<'py>(py: Python<'py>, e: Event) -> PyResult<Bound<'py, PyTuple>> {
    match e {
        Event::Peer(peer) => ("peer", peer.id()).into_pyobject(py),
        Event::TunClosed { error } => ("tun_closed", error).into_pyobject(py),
        Event::SocketError { error } => ("socket_error", error).into_pyobject(py),
        Event::Notice { message } => ("notice", message).into_pyobject(py),
    }
}

/// The lanes a data plane of this process runs (WGPY_QUEUES, else the
/// measured default for this machine; datapath/scaling.rs): open the TUN
/// device multi-queue and that many UDP sockets per family when above 1.
#[pyfunction]
pub(crate) fn data_plane_queues() -> usize {
    datapath::scaling::get().queues
}

#[pymethods]
impl PyDatapath {
    #[new]
    #[pyo3(signature = (tun_fd, mtu=1420, vnet_hdr=false, udp_offload=false))]
    fn new(tun_fd: i32, mtu: usize, vnet_hdr: bool, udp_offload: bool) -> PyResult<Self> {
        let dp = datapath::Datapath::new(tun_fd, mtu, vnet_hdr, udp_offload).py_err()?;
        Ok(Self(Arc::new(dp)))
    }

    /// A data plane whose inside is `stack` rather than a TUN device
    /// (datapath/inside.rs); start the stack with it after this.
    #[staticmethod]
    #[pyo3(signature = (stack, mtu=1420))]
    fn userspace(stack: &super::netstack::PyNetstack, mtu: usize) -> PyResult<Self> {
        let dp = datapath::Datapath::with_stack(stack.0.sink(), mtu).py_err()?;
        Ok(Self(Arc::new(dp)))
    }

    fn start(&self) -> PyResult<()> {
        self.0.start().py_err()
    }

    fn stop(&self, py: Python<'_>) {
        let dp = self.0.clone();
        py.allow_threads(move || dp.stop());
    }

    fn set_sockets(&self, py: Python<'_>, fds: Vec<i32>) -> PyResult<()> {
        let dp = self.0.clone();
        py.allow_threads(move || dp.set_sockets(&fds)).py_err()
    }

    #[getter]
    fn event_fd(&self) -> i32 {
        self.0.event_fd()
    }

    #[getter]
    fn mtu(&self) -> usize {
        self.0.mtu()
    }

    fn set_mtu(&self, mtu: usize) {
        self.0.set_mtu(mtu);
    }

    /// Crypto pipeline workers beside the lanes (WGPY_CRYPTO_THREADS).
    #[getter]
    fn crypto_helpers(&self) -> usize {
        self.0.crypto_helpers()
    }

    /// The lanes serving the TUN queues and sockets (datapath/lanes.rs).
    #[getter]
    fn queues(&self) -> usize {
        self.0.queues()
    }

    #[pyo3(signature = (max=64))]
    fn take_events<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.0
            .take_events(max)
            .into_iter()
            .map(|e| event_tuple(py, e))
            .collect()
    }

    fn stats(&self) -> DeviceStats {
        self.0.stats()
    }

    #[pyo3(signature = (key))]
    fn set_private_key(&self, py: Python<'_>, key: Option<PyRef<'_, PyPrivateKey>>) {
        let key = key.map(|k| k.0.clone());
        let dp = self.0.clone();
        py.allow_threads(move || dp.set_private_key(key));
    }

    #[pyo3(signature = (peer, public_key, preshared_key=None))]
    fn add_peer(
        &self,
        peer: u64,
        public_key: &PyPublicKey,
        preshared_key: Option<PyRef<'_, PyPresharedKey>>,
    ) -> PyResult<()> {
        let psk = preshared_key.map(|k| k.0.clone());
        self.0.add_peer(peer, public_key.0, psk).py_err()
    }

    fn remove_peer(&self, peer: u64) -> PyResult<()> {
        self.0.remove_peer(peer).py_err()
    }

    #[pyo3(signature = (peer, preshared_key))]
    fn set_preshared_key(
        &self,
        peer: u64,
        preshared_key: Option<PyRef<'_, PyPresharedKey>>,
    ) -> PyResult<()> {
        let psk = preshared_key.map(|k| k.0.clone());
        self.0.set_preshared_key(peer, psk).py_err()
    }

    #[pyo3(signature = (peer, endpoint))]
    fn set_endpoint(&self, peer: u64, endpoint: Option<&Bound<'_, PyTuple>>) -> PyResult<()> {
        let addr = endpoint.map(socket_addr).transpose()?;
        self.0.set_endpoint(peer, addr).py_err()
    }

    fn send_keepalive(&self, peer: u64) -> PyResult<()> {
        self.0.send_keepalive(peer).py_err()
    }

    fn send_staged(&self, peer: u64) -> PyResult<()> {
        self.0.send_staged(peer).py_err()
    }

    #[pyo3(signature = (peer, *, retry=false))]
    fn request_handshake(&self, peer: u64, retry: bool) -> PyResult<()> {
        self.0.request_handshake(peer, retry).py_err()
    }

    fn clear_endpoint_source(&self, peer: u64) -> PyResult<()> {
        self.0.clear_endpoint_source(peer).py_err()
    }

    fn purge_staged(&self, peer: u64) -> PyResult<usize> {
        self.0.purge_staged(peer).py_err()
    }

    fn erase_keys(&self, peer: u64) -> PyResult<()> {
        self.0.erase_keys(peer).py_err()
    }

    /// Stop (False) or resume (True) polling the peer's state; while not
    /// polling, the next authenticated packet raises a "peer" event.
    fn watch_activity(&self, peer: u64, watching: bool) -> PyResult<()> {
        self.0.watch_activity(peer, watching).py_err()
    }

    fn peer_state(&self, peer: u64) -> PyResult<PyPeerState> {
        Ok(self.0.peer_state(peer).py_err()?.into())
    }

    /// Hold (stage) the packets of peers with no path instead of dropping them.
    fn set_hold_unreachable(&self, py: Python<'_>, on: bool) {
        let dp = self.0.clone();
        py.allow_threads(move || dp.set_hold_unreachable(on));
    }

    /// Holds the peer's packets; True if it was not held.
    fn hold(&self, peer: u64) -> PyResult<bool> {
        self.0.hold(peer).py_err()
    }

    /// Stops holding the peer's packets and sends the staged ones; True if it was held.
    fn release(&self, peer: u64) -> PyResult<bool> {
        self.0.release(peer).py_err()
    }

    /// Sends from `local` (address, interface index) until the peer
    /// answers at it; False if the peer has no endpoint.
    fn pin_source(&self, peer: u64, local: (String, u32)) -> PyResult<bool> {
        let src = (ip_of(&local.0)?, local.1);
        self.0.pin_source(peer, src).py_err()
    }

    fn allowed_ip_insert(&self, ip: &str, cidr: u8, peer: u64) -> PyResult<()> {
        self.0.allowed_ip_insert(ip_of(ip)?, cidr, peer).py_err()
    }

    /// Removes a prefix; with `peer`, only if that peer owns it.
    #[pyo3(signature = (ip, cidr, peer=None))]
    fn allowed_ip_remove(&self, ip: &str, cidr: u8, peer: Option<u64>) -> PyResult<bool> {
        Ok(self.0.allowed_ip_remove(ip_of(ip)?, cidr, peer))
    }

    fn allowed_ips_remove_peer(&self, peer: u64) -> usize {
        self.0.allowed_ips_remove_peer(peer)
    }

    fn allowed_ip_lookup(&self, ip: &str) -> PyResult<Option<u64>> {
        Ok(self.0.allowed_ip_lookup(ip_of(ip)?))
    }

    fn allowed_ips(&self, peer: u64) -> Vec<(String, u8)> {
        self.0
            .allowed_ips(peer)
            .into_iter()
            .map(|(ip, c)| (ip.to_string(), c))
            .collect()
    }
}
