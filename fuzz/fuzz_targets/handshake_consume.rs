//! Handshake messages, arbitrary or mutated from a real handshake, through
//! everything that consumes them: `Identity::open_initiation` (and, if that
//! succeeds, a fresh responder's `consume_initiation` + `create_response`),
//! `Handshake::consume_response` and `consume_cookie_reply` on a handshake
//! with a pending initiation, `CookieChecker::{verify_mac1, verify_mac2,
//! create_reply}`, and `Keypair::open_in_place` for the transport template.
//!
//! Input: the first byte chooses the message (low bits: 0 = the remaining
//! bytes as they are, else a valid template which the remaining bytes are
//! XORed into; bit 7: cut the template to the input's length first).
//!
//! Properties: nothing panics; whatever succeeds carries exactly the
//! authenticated bytes of the valid message (a success on anything else
//! would be a forgery); a reply or response that is made can be parsed.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use wgpy::messages::{message_type, receiver_index, CookieReply, Response};
use wgpy::noise::Handshake;
use wgpy::session::Keypair;
use wgpy_fuzz::{
    mutate, respond, World, INITIATOR_INDEX, NOW, RESPONDER_INDEX, SOURCE, TRANSPORT_PAYLOAD, WORLD,
};

/// Objects whose state a successful call changes; `None` means "rebuild".
#[derive(Default)]
struct Live {
    initiator: Option<Handshake>,
    keypair: Option<Keypair>,
}

thread_local! {
    static LIVE: RefCell<Live> = RefCell::default();
}

fn message(w: &World, data: &[u8]) -> Option<Vec<u8>> {
    let (&selector, rest) = data.split_first()?;
    let templates: [&[u8]; 5] = [
        &w.initiation,
        &w.initiation_with_cookie,
        &w.response,
        &w.cookie_reply,
        &w.transport,
    ];
    let truncate = selector & 0x80 != 0;
    Some(match usize::from(selector & 0x7f) % (templates.len() + 1) {
        0 => rest.to_vec(),
        n => mutate(templates[n - 1], rest, truncate),
    })
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let Some(msg) = message(w, data) else { return };

    let _ = message_type(&msg);
    let _ = receiver_index(&msg);

    // Responder side.
    if let Ok(received) = w.responder.open_initiation(&msg) {
        assert_eq!(
            &msg[..132],
            &w.initiation[..132],
            "open_initiation accepted a forged initiation"
        );
        assert_eq!(received.peer, w.initiator.public_key());
        assert_eq!(received.sender, INITIATOR_INDEX);
        let mut responder = w.responder_handshake();
        responder
            .consume_initiation(&received)
            .expect("a fresh responder accepts the valid initiation");
        let (response, _) = respond(&mut responder);
        assert_eq!(response, w.response);
    }
    // Addressed to the responder, so mac1 never matches the initiator's key.
    assert!(w.initiator.open_initiation(&msg).is_err());

    // Cookie checker (the responder's).
    {
        let mut checker = w.checker.lock().expect("checker lock");
        let mac1_ok = checker.verify_mac1(&msg).is_ok();
        if mac1_ok {
            assert_eq!(
                &msg[..132],
                &w.initiation[..132],
                "verify_mac1 accepted a forged message"
            );
        }
        match checker.verify_mac2(&msg, &SOURCE) {
            Ok(true) => assert_eq!(
                &msg[..],
                &w.initiation_with_cookie[..],
                "verify_mac2 accepted a forged mac2"
            ),
            Ok(false) => assert!(mac1_ok),
            Err(_) => assert!(!mac1_ok),
        }
        if let Ok(reply) = checker.create_reply(&msg, &SOURCE) {
            let parsed = CookieReply::parse(&reply).expect("cookie reply parses");
            assert_eq!(parsed.receiver.to_le_bytes(), msg[4..8]);
        }
    }

    // Initiator side.
    LIVE.with(|live| {
        let mut live = live.borrow_mut();

        let initiator = live.initiator.get_or_insert_with(|| w.pending_initiator());
        if let Ok(keypair) = initiator.consume_response(&msg) {
            assert_eq!(
                &msg[..76],
                &w.response[..76],
                "consume_response accepted a forged response"
            );
            assert_eq!(
                (keypair.local_index, keypair.remote_index),
                (INITIATOR_INDEX, RESPONDER_INDEX)
            );
            let response = Response::parse(&msg).expect("a consumed response parses");
            assert_eq!(response.receiver, INITIATOR_INDEX);
            live.initiator = None;
        }

        let initiator = live.initiator.get_or_insert_with(|| w.pending_initiator());
        if initiator.consume_cookie_reply(&msg).is_ok() {
            // The receiver index is not authenticated (the caller routes by it).
            assert_eq!(
                &msg[8..],
                &w.cookie_reply[8..],
                "consume_cookie_reply accepted a forged reply"
            );
            assert!(initiator.has_cookie());
            live.initiator = None;
        }

        let keypair = live.keypair.get_or_insert_with(|| w.initiator_keypair());
        let mut buf = msg.clone();
        if let Ok(range) = keypair.open_in_place(&mut buf, NOW) {
            assert_eq!(
                msg, w.transport,
                "open_in_place accepted a forged transport message"
            );
            assert_eq!(&buf[range][..TRANSPORT_PAYLOAD.len()], TRANSPORT_PAYLOAD);
            live.keypair = None;
        }
    });
});
