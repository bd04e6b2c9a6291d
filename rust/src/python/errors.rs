//! The exceptions the bindings raise, and which error becomes which.
//!
//! - Bad protocol input (`crate::Error`) raises a `ProtocolError` subclass,
//!   one per way a caller reacts (malformed, authentication, replay, rate,
//!   state, expired keys, bad keys). `ProtocolError` is a `ValueError`.
//! - The data plane's configuration errors (`DatapathError`) raise a
//!   `DatapathError` subclass: a peer it does not know (`UnknownPeerError`,
//!   also a `LookupError`), a peer or key that exists already
//!   (`PeerConflictError`), a bad argument (`InvalidArgumentError`, also a
//!   `ValueError`). A failed system call raises the `OSError` subclass of
//!   its errno, as Python's own calls do.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::datapath::DatapathError as CoreDatapathError;
use crate::error::Error;

create_exception!(
    wgpy._core,
    ProtocolError,
    PyValueError,
    "Base class of every error wgpy raises for bad protocol input."
);
create_exception!(
    wgpy._core,
    MessageFormatError,
    ProtocolError,
    "A message has the wrong size, type or reserved bytes."
);
create_exception!(
    wgpy._core,
    InvalidKeyError,
    ProtocolError,
    "A key is malformed or gives an all-zero Diffie-Hellman result."
);
create_exception!(
    wgpy._core,
    AuthenticationError,
    ProtocolError,
    "A MAC or AEAD tag did not verify."
);
create_exception!(
    wgpy._core,
    ReplayError,
    ProtocolError,
    "A counter or handshake timestamp was already seen."
);
create_exception!(
    wgpy._core,
    RateLimitError,
    ProtocolError,
    "Handshake initiations from a peer arrive too fast."
);
create_exception!(
    wgpy._core,
    HandshakeStateError,
    ProtocolError,
    "A message does not fit the handshake's state, index or peer."
);
create_exception!(
    wgpy._core,
    SessionExpiredError,
    ProtocolError,
    "A keypair is too old or has used up its counters."
);
create_exception!(
    wgpy._core,
    DatapathError,
    PyException,
    "Base class of the data plane's configuration errors."
);
create_exception!(
    wgpy._core,
    UnknownPeerError,
    DatapathError,
    "The data plane has no peer of that id."
);
create_exception!(
    wgpy._core,
    PeerConflictError,
    DatapathError,
    "A peer with that id or public key exists already."
);
create_exception!(
    wgpy._core,
    InvalidArgumentError,
    DatapathError,
    "An argument the data plane cannot use (an address, a prefix length, a descriptor)."
);

pub(crate) fn protocol_error(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Message(_) | Error::BufferTooSmall { .. } => MessageFormatError::new_err(msg),
        Error::InvalidKey(_) | Error::ZeroDh => InvalidKeyError::new_err(msg),
        Error::InvalidMac1 | Error::Decrypt => AuthenticationError::new_err(msg),
        Error::Replay | Error::ReplayedTimestamp => ReplayError::new_err(msg),
        Error::Flood => RateLimitError::new_err(msg),
        Error::WrongPeer
        | Error::UnexpectedMessage
        | Error::IndexMismatch
        | Error::UnexpectedCookie => HandshakeStateError::new_err(msg),
        Error::KeyExpired | Error::CounterExhausted => SessionExpiredError::new_err(msg),
        Error::InvalidPrefix { .. } => ProtocolError::new_err(msg),
    }
}

pub(crate) fn datapath_error(e: CoreDatapathError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreDatapathError::UnknownPeer(_) => UnknownPeerError::new_err(msg),
        CoreDatapathError::PeerExists(_) | CoreDatapathError::DuplicateKey(_) => {
            PeerConflictError::new_err(msg)
        }
        CoreDatapathError::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        CoreDatapathError::Io(io) => io.into(),
    }
}

/// `?` on the core's results inside the bindings.
pub(crate) trait OrPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> OrPy<T> for crate::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(protocol_error)
    }
}

impl<T> OrPy<T> for Result<T, CoreDatapathError> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(datapath_error)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("MessageFormatError", py.get_type::<MessageFormatError>())?;
    m.add("InvalidKeyError", py.get_type::<InvalidKeyError>())?;
    m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
    m.add("ReplayError", py.get_type::<ReplayError>())?;
    m.add("RateLimitError", py.get_type::<RateLimitError>())?;
    m.add("HandshakeStateError", py.get_type::<HandshakeStateError>())?;
    m.add("SessionExpiredError", py.get_type::<SessionExpiredError>())?;
    m.add("DatapathError", py.get_type::<DatapathError>())?;
    m.add("UnknownPeerError", py.get_type::<UnknownPeerError>())?;
    m.add("PeerConflictError", py.get_type::<PeerConflictError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    Ok(())
}
