//! `wgpy.CookieChecker`: the responder's MAC checks and cookie replies.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::cookie::CookieChecker as CoreCookieChecker;
use crate::error::Error;

use super::convert::{clock_of, socket_addr};
use super::errors::{protocol_error, OrPy};
use super::manual_clock::PyManualClock;
use super::public_key::PyPublicKey;

#[pyclass(module = "wgpy._core", name = "CookieChecker")]
pub(crate) struct PyCookieChecker(CoreCookieChecker);

#[pymethods]
impl PyCookieChecker {
    #[new]
    #[pyo3(signature = (public_key, *, clock=None))]
    fn new(public_key: &PyPublicKey, clock: Option<PyRef<'_, PyManualClock>>) -> Self {
        Self(CoreCookieChecker::new(&public_key.0, clock_of(clock)))
    }

    fn verify_mac1(&self, message: &[u8]) -> PyResult<bool> {
        match self.0.verify_mac1(message) {
            Ok(()) => Ok(true),
            Err(Error::InvalidMac1) => Ok(false),
            Err(e) => Err(protocol_error(e)),
        }
    }

    fn verify_mac2(&mut self, message: &[u8], source: &Bound<'_, PyTuple>) -> PyResult<bool> {
        match self.0.verify_mac2(message, &socket_addr(source)?) {
            Ok(ok) => Ok(ok),
            Err(Error::InvalidMac1) => Ok(false),
            Err(e) => Err(protocol_error(e)),
        }
    }

    fn create_reply<'py>(
        &mut self,
        py: Python<'py>,
        message: &[u8],
        source: &Bound<'_, PyTuple>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let reply = self
            .0
            .create_reply(message, &socket_addr(source)?)
            .py_err()?;
        Ok(PyBytes::new(py, &reply))
    }
}
