//! Transport messages through `Keypair::{open_in_place, decrypt}`, and the
//! sending API (`seal_in_place`, `encrypt`) with arbitrary sizes.
//!
//! Input: the first byte chooses a mode.
//! - 0: the remaining bytes as a message, to a fresh receiving keypair.
//! - 1..=4: a valid template (keepalive, 1, 64, 1420 bytes) with the remaining
//!   bytes XORed into it (bit 7 of the first byte: cut it to length first).
//! - 5: a sequence of messages sealed with the real key at fuzzer-chosen
//!   counters, some tampered, through one keypair; its answers are checked
//!   against a model of the replay window (accept iff authentic, below
//!   REJECT_AFTER_MESSAGES, not seen and no more than WINDOW_SIZE behind the
//!   greatest counter accepted).
//! - 6: `seal_in_place` with fuzzer-chosen length, MTU and buffer size, and
//!   `encrypt` with a fuzzer-chosen MTU; what is sealed must open again.
//!
//! Every call must return, never panic.

#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wgpy::crypto::{aead_key, aead_seal_in_place, TAG_LEN};
use wgpy::messages::{TransportHeader, TRANSPORT_HEADER_LEN};
use wgpy::replay::WINDOW_SIZE;
use wgpy::session::{encrypted_len, Keypair, REJECT_AFTER_MESSAGES};
use wgpy::Error;
use wgpy_fuzz::{mutate, NOW};
use zeroize::Zeroizing;

const KEY_A: [u8; 32] = [0x61; 32];
const KEY_B: [u8; 32] = [0x62; 32];
const SENDER_INDEX: u32 = 7;
const RECEIVER_INDEX: u32 = 9;

fn sender() -> Keypair {
    Keypair::new(
        &Zeroizing::new(KEY_A),
        &Zeroizing::new(KEY_B),
        SENDER_INDEX,
        RECEIVER_INDEX,
        NOW,
        true,
    )
    .expect("keypair")
}

fn receiver() -> Keypair {
    Keypair::new(
        &Zeroizing::new(KEY_B),
        &Zeroizing::new(KEY_A),
        RECEIVER_INDEX,
        SENDER_INDEX,
        NOW,
        false,
    )
    .expect("keypair")
}

/// Valid messages at counters 0..4 and their plaintexts.
static TEMPLATES: LazyLock<Vec<(Vec<u8>, Vec<u8>)>> = LazyLock::new(|| {
    let s = sender();
    [0usize, 1, 64, 1420]
        .iter()
        .map(|&n| {
            let plain: Vec<u8> = (0..n).map(|i| i as u8).collect();
            (s.encrypt(&plain, 1420, NOW).expect("template"), plain)
        })
        .collect()
});

/// A transport message to `receiver()` sealed with the real key at `counter`.
fn forge(counter: u64, plain: &[u8]) -> Vec<u8> {
    let key = aead_key(&KEY_A).expect("key");
    let mut msg = vec![0u8; TRANSPORT_HEADER_LEN + plain.len() + TAG_LEN];
    let mut header = [0u8; TRANSPORT_HEADER_LEN];
    TransportHeader {
        receiver: RECEIVER_INDEX,
        counter,
    }
    .write(&mut header);
    msg[..TRANSPORT_HEADER_LEN].copy_from_slice(&header);
    msg[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plain.len()].copy_from_slice(plain);
    aead_seal_in_place(&key, counter, &[], &mut msg[TRANSPORT_HEADER_LEN..]).expect("seal");
    msg
}

fn u64_at(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    w[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(w)
}

fn raw(msg: &[u8]) {
    let r = receiver();
    let _ = r.decrypt(msg, NOW);
    let mut buf = msg.to_vec();
    let _ = r.open_in_place(&mut buf, NOW);
}

fn mutated(template: usize, rest: &[u8], truncate: bool) {
    let (valid, plain) = &TEMPLATES[template];
    let msg = mutate(valid, rest, truncate);
    let r = receiver();
    let mut buf = msg.clone();
    let opened = r.open_in_place(&mut buf, NOW);
    if let Ok(range) = &opened {
        assert_eq!(&msg, valid, "open_in_place accepted a forged message");
        assert_eq!(&buf[range.clone()][..plain.len()], &plain[..]);
    }
    // Same message on another fresh keypair through the allocating API.
    let decrypted = receiver().decrypt(&msg, NOW);
    assert_eq!(decrypted.is_ok(), opened.is_ok());
}

/// Records of 10 bytes: flags, 8 counter bytes, payload length.
fn sequence(rest: &[u8]) {
    let r = receiver();
    let mut seen = BTreeSet::new();
    let mut greatest: Option<u64> = None;
    for rec in rest.chunks(10) {
        let flags = rec[0];
        let value = u64_at(&rec[1..]);
        let len = usize::from(rec.get(9).copied().unwrap_or(0));
        let counter = match flags & 3 {
            0 | 1 => value,
            // Near the window's edges: the greatest counter so far plus or minus a bit.
            2 => greatest
                .unwrap_or(0)
                .wrapping_add((value as i16) as i64 as u64),
            _ => REJECT_AFTER_MESSAGES
                .wrapping_sub(value % 16)
                .wrapping_add(8),
        };
        let tamper = flags & 4 != 0;
        let plain: Vec<u8> = (0..len).map(|i| i as u8 ^ flags).collect();
        let mut msg = forge(counter, &plain);
        if tamper {
            let at = TRANSPORT_HEADER_LEN + usize::from(flags >> 3) % (len + TAG_LEN);
            msg[at] ^= 1;
        }
        let fresh = !seen.contains(&counter)
            && counter < REJECT_AFTER_MESSAGES
            && greatest
                .is_none_or(|g| u128::from(counter) + u128::from(WINDOW_SIZE) >= u128::from(g));
        let expect_ok = fresh && !tamper;
        let got = r.decrypt(&msg, NOW);
        match &got {
            Ok(p) => assert_eq!(p, &plain),
            Err(e) => assert!(
                matches!(e, Error::Replay | Error::CounterExhausted | Error::Decrypt),
                "unexpected {e:?}"
            ),
        }
        assert_eq!(
            got.is_ok(),
            expect_ok,
            "counter {counter} tamper {tamper} greatest {greatest:?}: {got:?}"
        );
        if expect_ok {
            seen.insert(counter);
            greatest = Some(greatest.map_or(counter, |g| g.max(counter)));
        }
        assert_eq!(r.greatest_received(), greatest);
    }
}

fn sealing(rest: &[u8]) {
    let len = u64_at(rest) as usize;
    let mtu = u64_at(rest.get(8..).unwrap_or(&[])) as usize;
    let buf_len = usize::from(u16::from_le_bytes([
        rest.get(16).copied().unwrap_or(0),
        rest.get(17).copied().unwrap_or(0),
    ]));
    let payload = rest.get(18..).unwrap_or(&[]);

    let s = sender();
    let mut buf = vec![0xa5u8; buf_len];
    if let Ok(n) = s.seal_in_place(&mut buf, len, mtu, NOW) {
        assert!(n <= buf_len);
        assert_eq!(n, encrypted_len(len, mtu));
        let plain = receiver()
            .decrypt(&buf[..n], NOW)
            .expect("a sealed message opens");
        assert_eq!(plain.len(), n - TRANSPORT_HEADER_LEN - TAG_LEN);
        assert!(plain[len..].iter().all(|&b| b == 0), "padding is zeros");
    }

    let s = sender();
    if let Ok(msg) = s.encrypt(payload, mtu, NOW) {
        assert_eq!(msg.len(), encrypted_len(payload.len(), mtu));
        let plain = receiver()
            .decrypt(&msg, NOW)
            .expect("an encrypted message opens");
        assert_eq!(&plain[..payload.len()], payload);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match (selector & 0x7f) % 7 {
        0 => raw(rest),
        n @ 1..=4 => mutated(usize::from(n - 1), rest, selector & 0x80 != 0),
        5 => sequence(rest),
        _ => sealing(rest),
    }
});
