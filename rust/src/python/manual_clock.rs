//! `wgpy.ManualClock`: a clock that moves only when told to, for tests of time rules.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::clock::{Clock, ManualClock};

use super::convert::{duration, secs};

#[pyclass(module = "wgpy._core", name = "ManualClock", frozen)]
pub(crate) struct PyManualClock(pub(crate) Arc<ManualClock>);

#[pymethods]
impl PyManualClock {
    #[new]
    #[pyo3(signature = (now=0.0, unix_time=1_700_000_000.0))]
    fn new(now: f64, unix_time: f64) -> PyResult<Self> {
        Ok(Self(Arc::new(ManualClock::new(
            duration(now)?,
            duration(unix_time)?,
        ))))
    }

    fn advance(&self, seconds: f64) -> PyResult<()> {
        self.0.advance(duration(seconds)?);
        Ok(())
    }

    fn set_unix_time(&self, seconds: f64) -> PyResult<()> {
        self.0.set_unix_time(duration(seconds)?);
        Ok(())
    }

    fn now(&self) -> f64 {
        secs(self.0.now())
    }

    fn unix_time(&self) -> f64 {
        secs(self.0.unix_time())
    }

    fn __repr__(&self) -> String {
        format!(
            "ManualClock(now={}, unix_time={})",
            secs(self.0.now()),
            secs(self.0.unix_time())
        )
    }
}
