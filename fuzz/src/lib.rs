//! Fixtures shared by the fuzz targets.
//!
//! - Fixed keys, indices, timestamps and a `ManualClock` that never moves, so
//!   that every run of a target on the same input does the same thing.
//! - `WORLD` holds valid messages from a real handshake made once at start
//!   (initiation, the same initiation carrying a valid mac2, response, cookie
//!   reply, transport message). Targets XOR fuzzer bytes into them so that
//!   mutations get past mac1 and reach the DH and AEAD code.
//! - Stateful objects (a handshake with a pending initiation, a keypair) are
//!   rebuilt from the same constants whenever a call succeeded and may have
//!   changed their state, so a run never depends on earlier inputs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use wgpy::clock::{Clock, ManualClock};
use wgpy::cookie::CookieChecker;
use wgpy::keys::{PresharedKey, PrivateKey};
use wgpy::messages::{COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN};
use wgpy::noise::{Handshake, Identity};
use wgpy::session::Keypair;
use wgpy::tai64n::Tai64N;

pub const INITIATOR_STATIC: [u8; 32] = [0x11; 32];
pub const RESPONDER_STATIC: [u8; 32] = [0x22; 32];
pub const INITIATOR_EPHEMERAL: [u8; 32] = [0x33; 32];
pub const RESPONDER_EPHEMERAL: [u8; 32] = [0x44; 32];
pub const PSK: [u8; 32] = [0x55; 32];
pub const INITIATOR_INDEX: u32 = 0x0102_0304;
pub const RESPONDER_INDEX: u32 = 0x0a0b_0c0d;
/// Monotonic and wall-clock readings of the fixed clock.
pub const NOW: Duration = Duration::from_secs(1_000);
pub const UNIX_TIME: Duration = Duration::from_secs(1_700_000_000);
/// The source address cookies are bound to.
pub const SOURCE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
/// Plaintext of the transport template (responder to initiator).
pub const TRANSPORT_PAYLOAD: &[u8] = b"fuzzing wgpy transport payload";
pub const MTU: usize = 1420;

pub struct World {
    pub clock: Arc<dyn Clock>,
    pub initiator: Arc<Identity>,
    pub responder: Arc<Identity>,
    /// The initiation every `pending_initiator()` has in flight.
    pub initiation: [u8; INITIATION_LEN],
    /// The same initiation sent after the cookie reply: mac2 is valid for `SOURCE`.
    pub initiation_with_cookie: [u8; INITIATION_LEN],
    /// The responder's answer to `initiation`.
    pub response: [u8; RESPONSE_LEN],
    /// `checker`'s cookie reply to `initiation` from `SOURCE`.
    pub cookie_reply: [u8; COOKIE_REPLY_LEN],
    /// A transport message from the responder to the initiator, counter 0.
    pub transport: Vec<u8>,
    /// The responder's cookie checker; its secret never rotates (the clock is fixed).
    pub checker: Mutex<CookieChecker>,
}

impl World {
    fn new() -> Self {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW, UNIX_TIME));
        let initiator = Arc::new(Identity::new(PrivateKey::from_bytes(INITIATOR_STATIC)));
        let responder = Arc::new(Identity::new(PrivateKey::from_bytes(RESPONDER_STATIC)));
        let mut world = Self {
            checker: Mutex::new(CookieChecker::new(&responder.public_key(), clock.clone())),
            clock,
            initiator,
            responder,
            initiation: [0; INITIATION_LEN],
            initiation_with_cookie: [0; INITIATION_LEN],
            response: [0; RESPONSE_LEN],
            cookie_reply: [0; COOKIE_REPLY_LEN],
            transport: Vec::new(),
        };

        let mut hi = world.initiator_handshake();
        world.initiation = send_initiation(&mut hi);

        let ri = world
            .responder
            .open_initiation(&world.initiation)
            .expect("fixture: open initiation");
        let mut hr = world.responder_handshake();
        hr.consume_initiation(&ri)
            .expect("fixture: consume initiation");
        let (response, responder_keypair) = respond(&mut hr);
        world.response = response;
        world.transport = responder_keypair
            .encrypt(TRANSPORT_PAYLOAD, MTU, NOW)
            .expect("fixture: encrypt");

        {
            let mut checker = world.checker.lock().expect("fixture: checker lock");
            world.cookie_reply = checker
                .create_reply(&world.initiation, &SOURCE)
                .expect("fixture: cookie reply");
            hi.consume_cookie_reply(&world.cookie_reply)
                .expect("fixture: consume cookie reply");
            world.initiation_with_cookie = send_initiation(&mut hi);
            assert_eq!(
                checker.verify_mac2(&world.initiation_with_cookie, &SOURCE),
                Ok(true),
                "fixture: mac2"
            );
        }
        assert_eq!(world.initiation[..132], world.initiation_with_cookie[..132]);

        let keypair = world.initiator_keypair();
        assert_eq!(
            &keypair
                .decrypt(&world.transport, NOW)
                .expect("fixture: decrypt")[..TRANSPORT_PAYLOAD.len()],
            TRANSPORT_PAYLOAD
        );
        world
    }

    pub fn initiator_handshake(&self) -> Handshake {
        Handshake::new(
            self.initiator.clone(),
            self.responder.public_key(),
            Some(PresharedKey::from_bytes(PSK)),
            self.clock.clone(),
        )
    }

    pub fn responder_handshake(&self) -> Handshake {
        Handshake::new(
            self.responder.clone(),
            self.initiator.public_key(),
            Some(PresharedKey::from_bytes(PSK)),
            self.clock.clone(),
        )
    }

    /// A fresh initiator handshake whose pending initiation is `self.initiation`.
    pub fn pending_initiator(&self) -> Handshake {
        let mut h = self.initiator_handshake();
        send_initiation(&mut h);
        h
    }

    /// A fresh initiator keypair (empty replay window) that decrypts `self.transport`.
    pub fn initiator_keypair(&self) -> Keypair {
        self.pending_initiator()
            .consume_response(&self.response)
            .expect("fixture: consume response")
    }
}

/// The deterministic initiation (fixed ephemeral key, index and timestamp).
pub fn send_initiation(h: &mut Handshake) -> [u8; INITIATION_LEN] {
    h.create_initiation_with(
        PrivateKey::from_bytes(INITIATOR_EPHEMERAL),
        INITIATOR_INDEX,
        Tai64N::from_unix(UNIX_TIME),
    )
    .expect("fixture: create initiation")
}

/// The deterministic response of a handshake that consumed an initiation.
pub fn respond(h: &mut Handshake) -> ([u8; RESPONSE_LEN], Keypair) {
    h.create_response_with(PrivateKey::from_bytes(RESPONDER_EPHEMERAL), RESPONDER_INDEX)
        .expect("fixture: create response")
}

pub static WORLD: LazyLock<World> = LazyLock::new(World::new);

/// Builds a message from a template and fuzzer bytes: `rest` is XORed into
/// the template byte by byte; bytes past its end are appended. With
/// `truncate`, the result is first cut to `rest.len()` bytes, so that shorter
/// messages are reachable as well.
pub fn mutate(template: &[u8], rest: &[u8], truncate: bool) -> Vec<u8> {
    let mut out = template.to_vec();
    if truncate {
        out.truncate(rest.len());
    }
    for (i, b) in rest.iter().enumerate() {
        match out.get_mut(i) {
            Some(o) => *o ^= b,
            None => out.push(*b),
        }
    }
    out
}
