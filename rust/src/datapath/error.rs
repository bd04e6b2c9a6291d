//! What can go wrong when the control plane configures the data plane.
//! Each variant is mapped to a Python exception deliberately (python/errors.rs).

use std::io;

use super::PeerId;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The control plane named a peer the data plane does not have.
    #[error("no peer {0} in the data plane")]
    UnknownPeer(PeerId),
    #[error("peer {0} already exists in the data plane")]
    PeerExists(PeerId),
    #[error("another peer has the public key {0}")]
    DuplicateKey(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A system call failed (creating threads, eventfds, socket options).
    #[error(transparent)]
    Io(#[from] io::Error),
}
