//! Arbitrary bytes through every message parser.
//!
//! Properties: nothing panics; exactly the parser of the type `message_type`
//! reports succeeds; a successful parse serialises back to the input;
//! `receiver_index` agrees with the parsed field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgpy::messages::{
    mac_offsets, message_type, receiver_index, CookieReply, Initiation, Response, TransportHeader,
    TRANSPORT_HEADER_LEN, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE, TYPE_TRANSPORT,
};

fuzz_target!(|data: &[u8]| {
    let kind = message_type(data).ok();
    let index = receiver_index(data).ok();
    let initiation = Initiation::parse(data);
    let response = Response::parse(data);
    let cookie_reply = CookieReply::parse(data);
    let transport = TransportHeader::parse(data);

    assert_eq!(initiation.is_ok(), kind == Some(TYPE_INITIATION));
    assert_eq!(response.is_ok(), kind == Some(TYPE_RESPONSE));
    assert_eq!(cookie_reply.is_ok(), kind == Some(TYPE_COOKIE_REPLY));
    assert_eq!(transport.is_ok(), kind == Some(TYPE_TRANSPORT));
    if let Some(k) = kind {
        assert_eq!(data[0], k);
        assert_eq!(&data[1..4], &[0, 0, 0]);
    }

    if let Ok(m) = &initiation {
        assert_eq!(&m.to_bytes()[..], data);
        assert_eq!(index, None);
        assert_eq!(mac_offsets(data.len()), (116, 132));
    }
    if let Ok(m) = &response {
        assert_eq!(&m.to_bytes()[..], data);
        assert_eq!(index, Some(m.receiver));
        assert_eq!(mac_offsets(data.len()), (60, 76));
    }
    if let Ok(m) = &cookie_reply {
        assert_eq!(&m.to_bytes()[..], data);
        assert_eq!(index, Some(m.receiver));
    }
    if let Ok(h) = &transport {
        let mut out = [0u8; TRANSPORT_HEADER_LEN];
        h.write(&mut out);
        assert_eq!(&out[..], &data[..TRANSPORT_HEADER_LEN]);
        assert_eq!(index, Some(h.receiver));
    }
    if kind.is_none() || kind == Some(TYPE_INITIATION) {
        assert_eq!(index, None);
    }
});
