//! `wgpy.Handshake`: the handshake state with one peer, in either role, for
//! the sans-I/O API (the data plane keeps its own, datapath/peer.rs).

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::clock::Clock;
use crate::keys;
use crate::noise::{self, Identity};
use crate::tai64n::{Tai64N, TIMESTAMP_LEN};

use super::convert::clock_of;
use super::errors::OrPy;
use super::initiation::PyInitiation;
use super::manual_clock::PyManualClock;
use super::preshared_key::PyPresharedKey;
use super::private_key::PyPrivateKey;
use super::public_key::PyPublicKey;
use super::session::PySession;

#[pyclass(module = "wgpy._core", name = "Handshake")]
pub(crate) struct PyHandshake {
    inner: noise::Handshake,
    clock: Arc<dyn Clock>,
}

fn ephemeral_key(e: Option<PyRef<'_, PyPrivateKey>>) -> keys::PrivateKey {
    e.map(|k| k.0.clone())
        .unwrap_or_else(keys::PrivateKey::generate)
}

fn index_or_random(i: Option<u32>) -> u32 {
    i.unwrap_or_else(|| rand_core::RngCore::next_u32(&mut rand_core::OsRng))
}

#[pymethods]
impl PyHandshake {
    #[new]
    #[pyo3(signature = (private_key, peer_public_key, preshared_key=None, *, clock=None))]
    fn new(
        private_key: &PyPrivateKey,
        peer_public_key: &PyPublicKey,
        preshared_key: Option<PyRef<'_, PyPresharedKey>>,
        clock: Option<PyRef<'_, PyManualClock>>,
    ) -> Self {
        let clock = clock_of(clock);
        let identity = Arc::new(Identity::new(private_key.0.clone()));
        let psk = preshared_key.map(|k| k.0.clone());
        Self {
            inner: noise::Handshake::new(identity, peer_public_key.0, psk, clock.clone()),
            clock,
        }
    }

    #[getter]
    fn public_key(&self) -> PyPublicKey {
        PyPublicKey(self.inner.local_public_key())
    }

    #[getter]
    fn peer_public_key(&self) -> PyPublicKey {
        PyPublicKey(self.inner.remote_public_key())
    }

    #[getter]
    fn pending_index(&self) -> Option<u32> {
        self.inner.pending_index()
    }

    #[getter]
    fn has_cookie(&self) -> bool {
        self.inner.has_cookie()
    }

    #[pyo3(signature = (preshared_key=None))]
    fn set_preshared_key(&mut self, preshared_key: Option<PyRef<'_, PyPresharedKey>>) {
        self.inner
            .set_preshared_key(preshared_key.map(|k| k.0.clone()));
    }

    fn clear(&mut self) {
        self.inner.clear();
    }

    #[pyo3(signature = (*, sender_index=None, ephemeral=None, timestamp=None))]
    fn create_initiation<'py>(
        &mut self,
        py: Python<'py>,
        sender_index: Option<u32>,
        ephemeral: Option<PyRef<'_, PyPrivateKey>>,
        timestamp: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ts = match timestamp {
            Some(t) => Tai64N(t.try_into().map_err(|_| {
                PyValueError::new_err(format!("a TAI64N timestamp is {TIMESTAMP_LEN} bytes"))
            })?),
            None => Tai64N::from_unix(self.clock.unix_time()),
        };
        let msg = self
            .inner
            .create_initiation_with(ephemeral_key(ephemeral), index_or_random(sender_index), ts)
            .py_err()?;
        Ok(PyBytes::new(py, &msg))
    }

    fn consume_response(&mut self, message: &[u8]) -> PyResult<PySession> {
        let kp = self.inner.consume_response(message).py_err()?;
        Ok(PySession::wrap(kp, self.clock.clone()))
    }

    #[pyo3(signature = (initiation, *, sender_index=None, ephemeral=None))]
    fn respond<'py>(
        &mut self,
        py: Python<'py>,
        initiation: &PyInitiation,
        sender_index: Option<u32>,
        ephemeral: Option<PyRef<'_, PyPrivateKey>>,
    ) -> PyResult<(Bound<'py, PyBytes>, PySession)> {
        self.inner.consume_initiation(&initiation.0).py_err()?;
        let (msg, kp) = self
            .inner
            .create_response_with(ephemeral_key(ephemeral), index_or_random(sender_index))
            .py_err()?;
        Ok((
            PyBytes::new(py, &msg),
            PySession::wrap(kp, self.clock.clone()),
        ))
    }

    fn consume_cookie_reply(&mut self, message: &[u8]) -> PyResult<()> {
        self.inner.consume_cookie_reply(message).py_err()
    }

    fn __repr__(&self) -> String {
        format!(
            "Handshake(peer_public_key={})",
            self.inner.remote_public_key().to_base64()
        )
    }
}
