//! The PyO3 bindings, one file per exposed class: thin wrappers that convert
//! types, map errors to exceptions (errors.rs) and release the GIL where the
//! core may wait. No protocol logic lives here. Compiled only with the
//! `python` feature; lib.rs registers everything.

pub(crate) mod constants;
pub(crate) mod convert;
pub(crate) mod cookie_checker;
pub(crate) mod datapath;
pub(crate) mod device_stats;
pub(crate) mod errors;
pub(crate) mod functions;
pub(crate) mod handshake;
pub(crate) mod initiation;
pub(crate) mod manual_clock;
pub(crate) mod netstack;
pub(crate) mod peer_state;
pub(crate) mod preshared_key;
pub(crate) mod private_key;
pub(crate) mod public_key;
pub(crate) mod session;
