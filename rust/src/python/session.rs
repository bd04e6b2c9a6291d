//! `wgpy.Session`: a transport keypair, encrypting and decrypting type-4
//! messages; the batch calls release the GIL.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::clock::Clock;
use crate::error::Error;
use crate::messages;
use crate::session::{self, Keypair};

use super::convert::secs;
use super::errors::{protocol_error, OrPy};

#[pyclass(module = "wgpy._core", name = "Session", frozen)]
pub(crate) struct PySession {
    keypair: Arc<Keypair>,
    clock: Arc<dyn Clock>,
}

impl PySession {
    pub(crate) fn wrap(keypair: Keypair, clock: Arc<dyn Clock>) -> Self {
        Self {
            keypair: Arc::new(keypair),
            clock,
        }
    }
}

fn encrypt_into<'py>(
    py: Python<'py>,
    kp: &Keypair,
    packet: &[u8],
    mtu: usize,
    now: Duration,
) -> PyResult<Bound<'py, PyBytes>> {
    let n = session::encrypted_len(packet.len(), mtu);
    let mut failure = None;
    let out = PyBytes::new_with(py, n, |buf| {
        let hdr = messages::TRANSPORT_HEADER_LEN;
        buf[hdr..hdr + packet.len()].copy_from_slice(packet);
        if let Err(e) = kp.seal_in_place(buf, packet.len(), mtu, now) {
            failure = Some(e);
        }
        Ok(())
    })?;
    match failure {
        Some(e) => Err(protocol_error(e)),
        None => Ok(out),
    }
}

#[pymethods]
impl PySession {
    #[getter]
    fn local_index(&self) -> u32 {
        self.keypair.local_index
    }

    #[getter]
    fn remote_index(&self) -> u32 {
        self.keypair.remote_index
    }

    #[getter]
    fn is_initiator(&self) -> bool {
        self.keypair.is_initiator
    }

    #[getter]
    fn sending_counter(&self) -> u64 {
        self.keypair.sending_counter()
    }

    #[getter]
    fn age(&self) -> f64 {
        secs(self.clock.now().saturating_sub(self.keypair.birth))
    }

    #[getter]
    fn expired(&self) -> bool {
        self.keypair.is_expired(self.clock.now())
    }

    #[getter]
    fn needs_rekey(&self) -> bool {
        self.keypair.needs_rekey_on_send(self.clock.now())
    }

    #[getter]
    fn needs_rekey_on_receive(&self) -> bool {
        self.keypair.needs_rekey_on_receive(self.clock.now())
    }

    #[pyo3(signature = (packet, mtu=0))]
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        packet: &[u8],
        mtu: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        encrypt_into(py, &self.keypair, packet, mtu, self.clock.now())
    }

    fn keepalive<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        encrypt_into(py, &self.keypair, &[], 0, self.clock.now())
    }

    fn decrypt<'py>(&self, py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let plain = self.keypair.decrypt(message, self.clock.now()).py_err()?;
        Ok(PyBytes::new(py, &plain))
    }

    /// Encrypts each packet in order, without the GIL.
    #[pyo3(signature = (packets, mtu=0))]
    fn encrypt_many<'py>(
        &self,
        py: Python<'py>,
        packets: Vec<Vec<u8>>,
        mtu: usize,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let kp = self.keypair.clone();
        let now = self.clock.now();
        let out: Result<Vec<Vec<u8>>, Error> =
            py.allow_threads(move || packets.iter().map(|p| kp.encrypt(p, mtu, now)).collect());
        Ok(out.py_err()?.iter().map(|m| PyBytes::new(py, m)).collect())
    }

    /// Decrypts each message without the GIL; `None` marks a dropped one.
    fn decrypt_many<'py>(
        &self,
        py: Python<'py>,
        messages: Vec<Vec<u8>>,
    ) -> Vec<Option<Bound<'py, PyBytes>>> {
        let kp = self.keypair.clone();
        let now = self.clock.now();
        let out: Vec<Option<Vec<u8>>> =
            py.allow_threads(move || messages.iter().map(|m| kp.decrypt(m, now).ok()).collect());
        out.into_iter()
            .map(|o| o.map(|p| PyBytes::new(py, &p)))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Session(local_index={:#010x}, remote_index={:#010x}, initiator={})",
            self.keypair.local_index,
            self.keypair.remote_index,
            if self.keypair.is_initiator {
                "True"
            } else {
                "False"
            }
        )
    }
}
