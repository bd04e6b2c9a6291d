//! `wgpy.PresharedKey`: a symmetric key mixed into the handshake; its repr is redacted.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::keys;

use super::convert::key_bytes;
use super::errors::OrPy;

#[pyclass(module = "wgpy._core", name = "PresharedKey", frozen, eq)]
#[derive(PartialEq)]
pub(crate) struct PyPresharedKey(pub(crate) keys::PresharedKey);

#[pymethods]
impl PyPresharedKey {
    #[staticmethod]
    fn generate() -> Self {
        Self(keys::PresharedKey::generate())
    }

    #[staticmethod]
    fn from_base64(text: &str) -> PyResult<Self> {
        Ok(Self(keys::PresharedKey::from_base64(text).py_err()?))
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(Self(keys::PresharedKey::from_bytes(key_bytes(data)?)))
    }

    fn to_base64(&self) -> String {
        self.0.to_base64().to_string()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    fn __repr__(&self) -> &'static str {
        "PresharedKey(<redacted>)"
    }
}
