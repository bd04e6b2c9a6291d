//! The protocol's constants, as the Rust core uses them: the control plane
//! takes every value both sides need from here (python/wgpy/constants.py).

use pyo3::prelude::*;

use crate::{cookie, datapath, messages, noise, ratelimiter, replay, session};

use super::convert::secs;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("REKEY_AFTER_MESSAGES", session::REKEY_AFTER_MESSAGES)?;
    m.add("REJECT_AFTER_MESSAGES", session::REJECT_AFTER_MESSAGES)?;
    m.add("REKEY_AFTER_TIME", secs(session::REKEY_AFTER_TIME))?;
    m.add("REJECT_AFTER_TIME", secs(session::REJECT_AFTER_TIME))?;
    m.add("REKEY_ATTEMPT_TIME", secs(session::REKEY_ATTEMPT_TIME))?;
    m.add("REKEY_TIMEOUT", secs(session::REKEY_TIMEOUT))?;
    m.add("KEEPALIVE_TIMEOUT", secs(session::KEEPALIVE_TIMEOUT))?;
    m.add("REKEY_ON_RECEIVE_AGE", secs(session::REKEY_ON_RECEIVE_AGE))?;
    m.add("COOKIE_SECRET_MAX_AGE", secs(cookie::COOKIE_SECRET_MAX_AGE))?;
    m.add("REPLAY_WINDOW_SIZE", replay::WINDOW_SIZE)?;
    m.add("INITIATION_LEN", messages::INITIATION_LEN)?;
    m.add("RESPONSE_LEN", messages::RESPONSE_LEN)?;
    m.add("COOKIE_REPLY_LEN", messages::COOKIE_REPLY_LEN)?;
    m.add("TRANSPORT_MIN_LEN", messages::TRANSPORT_MIN_LEN)?;
    m.add("INITIATIONS_PER_SECOND", noise::INITIATIONS_PER_SECOND)?;
    m.add("MAX_STAGED_PACKETS", datapath::MAX_STAGED)?;
    m.add("MAX_QUEUED_HANDSHAKES", datapath::MAX_QUEUED_HANDSHAKES)?;
    m.add("UNDER_LOAD_QUEUE_LENGTH", datapath::UNDER_LOAD_QUEUE_LENGTH)?;
    m.add(
        "UNDER_LOAD_AFTER_TIME",
        secs(datapath::UNDER_LOAD_AFTER_TIME),
    )?;
    m.add(
        "RATELIMITER_PACKETS_PER_SECOND",
        ratelimiter::PACKETS_PER_SECOND,
    )?;
    m.add(
        "RATELIMITER_PACKETS_BURSTABLE",
        ratelimiter::PACKETS_BURSTABLE,
    )?;
    Ok(())
}
