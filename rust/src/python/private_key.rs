//! `wgpy.PrivateKey`: a Curve25519 private key; its repr shows only the public key.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::keys;

use super::convert::key_bytes;
use super::errors::OrPy;

use super::public_key::PyPublicKey;

#[pyclass(module = "wgpy._core", name = "PrivateKey", frozen, eq)]
#[derive(PartialEq)]
pub(crate) struct PyPrivateKey(pub(crate) keys::PrivateKey);

#[pymethods]
impl PyPrivateKey {
    #[staticmethod]
    fn generate() -> Self {
        Self(keys::PrivateKey::generate())
    }

    #[staticmethod]
    fn from_base64(text: &str) -> PyResult<Self> {
        Ok(Self(keys::PrivateKey::from_base64(text).py_err()?))
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(Self(keys::PrivateKey::from_bytes(key_bytes(data)?)))
    }

    fn to_base64(&self) -> String {
        self.0.to_base64().to_string()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.to_bytes()[..])
    }

    fn public_key(&self) -> PyPublicKey {
        PyPublicKey(self.0.public_key())
    }

    fn __repr__(&self) -> String {
        format!("PrivateKey(public_key={})", self.0.public_key().to_base64())
    }
}
