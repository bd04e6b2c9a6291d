//! Conversions between Python values and the core's types, shared by the
//! bindings: addresses as (host, port) tuples, seconds as floats.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::clock::{Clock, SystemClock};

use super::errors::InvalidKeyError;
use super::manual_clock::PyManualClock;

pub(crate) fn key_bytes(b: &[u8]) -> PyResult<[u8; 32]> {
    b.try_into()
        .map_err(|_| InvalidKeyError::new_err(format!("a key is 32 bytes, got {}", b.len())))
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Nanoseconds of CLOCK_MONOTONIC as seconds; 0 stays 0.0 ("never").
pub(crate) fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub(crate) fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err("time must be a finite, non-negative number of seconds"))
}

pub(crate) fn system_clock() -> Arc<dyn Clock> {
    static CLOCK: OnceLock<Arc<SystemClock>> = OnceLock::new();
    CLOCK.get_or_init(|| Arc::new(SystemClock::new())).clone()
}

pub(crate) fn clock_of(clock: Option<PyRef<'_, PyManualClock>>) -> Arc<dyn Clock> {
    match clock {
        Some(c) => c.0.clone(),
        None => system_clock(),
    }
}

pub(crate) fn ip_of(text: &str) -> PyResult<IpAddr> {
    text.parse()
        .map_err(|_| PyValueError::new_err(format!("not an IP address: {text:?}")))
}

pub(crate) fn socket_addr(addr: &Bound<'_, PyTuple>) -> PyResult<SocketAddr> {
    let host: String = addr.get_item(0)?.extract()?;
    let port: u16 = addr.get_item(1)?.extract()?;
    Ok(SocketAddr::new(ip_of(&host)?, port))
}

pub(crate) fn addr_tuple(a: &SocketAddr) -> (String, u16) {
    (a.ip().to_string(), a.port())
}
