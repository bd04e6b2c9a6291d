//! Module-level functions of the sans-I/O API.

use pyo3::prelude::*;

use crate::messages;
use crate::session;

use super::errors::protocol_error;

#[pyfunction]
pub(crate) fn message_type(message: &[u8]) -> PyResult<u8> {
    messages::message_type(message).map_err(|e| protocol_error(e.into()))
}

#[pyfunction]
pub(crate) fn receiver_index(message: &[u8]) -> PyResult<u32> {
    messages::receiver_index(message).map_err(|e| protocol_error(e.into()))
}

#[pyfunction]
pub(crate) fn inner_packet_len(plaintext: &[u8]) -> Option<usize> {
    session::inner_packet_len(plaintext)
}
