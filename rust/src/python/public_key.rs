//! `wgpy.PublicKey`: hashable, comparable, printed as base64.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::keys;

use super::convert::key_bytes;
use super::errors::OrPy;

#[pyclass(module = "wgpy._core", name = "PublicKey", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash, Clone)]
pub(crate) struct PyPublicKey(pub(crate) keys::PublicKey);

#[pymethods]
impl PyPublicKey {
    #[staticmethod]
    fn from_base64(text: &str) -> PyResult<Self> {
        Ok(Self(keys::PublicKey::from_base64(text).py_err()?))
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(Self(keys::PublicKey::from_bytes(key_bytes(data)?)))
    }

    fn to_base64(&self) -> String {
        self.0.to_base64()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    fn __str__(&self) -> String {
        self.0.to_base64()
    }

    fn __repr__(&self) -> String {
        format!("PublicKey('{}')", self.0.to_base64())
    }
}
