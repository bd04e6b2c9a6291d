//! `wgpy._core.DeviceStats`: the data plane's device-wide counters and
//! state, read-only (the class is `datapath::DeviceStats` itself).

use pyo3::prelude::*;

use crate::datapath::DeviceStats;

#[pymethods]
impl DeviceStats {
    /// (name, value) of every counter, in a fixed order.
    #[pyo3(name = "counters")]
    fn py_counters(&self) -> Vec<(&'static str, u64)> {
        self.counters()
    }

    fn __repr__(&self) -> String {
        let fields: Vec<String> = self
            .counters()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        format!(
            "DeviceStats(indices={}, handshake_queue={}, under_load={}, {})",
            self.indices,
            self.handshake_queue,
            if self.under_load { "True" } else { "False" },
            fields.join(", ")
        )
    }
}
