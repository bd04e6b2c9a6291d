//! wgpy's protocol core and data plane, in plain Rust; the PyO3 bindings
//! (`python/`, one file per exposed class) are compiled only with the
//! `python` feature and registered below.

pub mod allowedips;
pub mod clock;
pub mod cookie;
pub mod crypto;
pub mod datapath;
pub mod error;
pub mod keys;
pub mod messages;
pub mod netstack;
pub mod noise;
pub mod ratelimiter;
pub mod replay;
pub mod session;
pub(crate) mod sync;
pub mod tai64n;

pub use error::{Error, Result};

#[cfg(feature = "python")]
mod python;

/// The extension module `wgpy._core`: registers every class, function,
/// exception and constant of the bindings (rust/src/python/).
#[cfg(feature = "python")]
#[pyo3::pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    use python::*;

    m.add_class::<private_key::PyPrivateKey>()?;
    m.add_class::<public_key::PyPublicKey>()?;
    m.add_class::<preshared_key::PyPresharedKey>()?;
    m.add_class::<manual_clock::PyManualClock>()?;
    m.add_class::<handshake::PyHandshake>()?;
    m.add_class::<initiation::PyInitiation>()?;
    m.add_class::<session::PySession>()?;
    m.add_class::<cookie_checker::PyCookieChecker>()?;
    m.add_class::<datapath::PyDatapath>()?;
    m.add_class::<netstack::PyNetstack>()?;
    m.add_class::<peer_state::PyPeerState>()?;
    m.add_class::<crate::datapath::DeviceStats>()?;
    m.add_function(wrap_pyfunction!(initiation::open_initiation, m)?)?;
    m.add_function(wrap_pyfunction!(functions::message_type, m)?)?;
    m.add_function(wrap_pyfunction!(functions::receiver_index, m)?)?;
    m.add_function(wrap_pyfunction!(functions::inner_packet_len, m)?)?;
    m.add_function(wrap_pyfunction!(python::datapath::data_plane_queues, m)?)?;
    errors::register(m)?;
    constants::register(m)?;
    Ok(())
}
