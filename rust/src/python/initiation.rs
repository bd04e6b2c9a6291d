//! `wgpy.Initiation` and `open_initiation`: the responder's first look at an
//! initiation, before a peer's handshake accepts it.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::noise::{self, Identity};

use super::errors::OrPy;
use super::private_key::PyPrivateKey;
use super::public_key::PyPublicKey;

#[pyclass(module = "wgpy._core", name = "Initiation", frozen)]
pub(crate) struct PyInitiation(pub(crate) noise::ReceivedInitiation);

#[pymethods]
impl PyInitiation {
    #[getter]
    fn peer_public_key(&self) -> PyPublicKey {
        PyPublicKey(self.0.peer)
    }

    #[getter]
    fn sender_index(&self) -> u32 {
        self.0.sender
    }

    #[getter]
    fn timestamp<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.timestamp.0)
    }

    fn __repr__(&self) -> String {
        format!(
            "Initiation(peer_public_key={}, sender_index={:#010x})",
            self.0.peer.to_base64(),
            self.0.sender
        )
    }
}

#[pyfunction]
pub(crate) fn open_initiation(
    private_key: &PyPrivateKey,
    message: &[u8],
) -> PyResult<PyInitiation> {
    let identity = Identity::new(private_key.0.clone());
    Ok(PyInitiation(identity.open_initiation(message).py_err()?))
}
