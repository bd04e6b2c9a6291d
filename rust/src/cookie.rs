//! MAC1, MAC2 and cookie replies (whitepaper §5.4.4, §5.4.7; kernel cookie.c).
//!
//! - mac1 = MAC(HASH("mac1----" || receiver's public key), msg[..len-32]); every
//!   initiation and response carries it and it is checked before any DH.
//! - mac2 = MAC(cookie, msg[..len-16]), or zeros when no fresh cookie is held.
//! - A responder under load answers a message without a valid mac2 with a
//!   cookie reply: cookie = MAC(secret, source IP || source port (big-endian)),
//!   sealed with XChaCha20-Poly1305 under HASH("cookie--" || its public key),
//!   a random 24-byte nonce and the answered message's mac1 as AAD.
//! - The secret is 32 random bytes, replaced once it is older than 120 s.
//! - The initiator accepts a reply only while it has an unanswered mac1, and
//!   uses the cookie for at most 120 - 5 = 115 s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::clock::{has_expired, Clock};
use crate::crypto::{ct_eq, hash, mac, xaead_open, xaead_seal, KEY_LEN, MAC_LEN, XNONCE_LEN};
use crate::error::{Error, Result};
use crate::keys::PublicKey;
use crate::messages::{
    mac_offsets, message_type, CookieReply, COOKIE_REPLY_LEN, TYPE_INITIATION, TYPE_RESPONSE,
};

pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

pub fn mac1_key(receiver: &PublicKey) -> [u8; KEY_LEN] {
    hash(&[LABEL_MAC1, receiver.as_bytes()])
}

pub fn cookie_key(receiver: &PublicKey) -> [u8; KEY_LEN] {
    hash(&[LABEL_COOKIE, receiver.as_bytes()])
}

/// The handshake message (type 1 or 2) that carries the MACs; anything else is refused.
fn handshake_message(msg: &[u8]) -> Result<(usize, usize)> {
    match message_type(msg)? {
        TYPE_INITIATION | TYPE_RESPONSE => Ok(mac_offsets(msg.len())),
        other => Err(crate::messages::MessageError::UnknownType(other).into()),
    }
}

/// Checks mac1 of a handshake message addressed to the holder of `mac1_key`.
pub fn verify_mac1(mac1_key: &[u8; KEY_LEN], msg: &[u8]) -> Result<()> {
    let (m1, m2) = handshake_message(msg)?;
    if ct_eq(&mac(mac1_key, &[&msg[..m1]]), &msg[m1..m2]) {
        Ok(())
    } else {
        Err(Error::InvalidMac1)
    }
}

fn address_bytes(src: &SocketAddr) -> Vec<u8> {
    let mut v = match src.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.extend_from_slice(&src.port().to_be_bytes());
    v
}

/// The responder's side: checks MACs on incoming handshakes and makes cookies.
pub struct CookieChecker {
    mac1_key: [u8; KEY_LEN],
    cookie_key: [u8; KEY_LEN],
    secret: Zeroizing<[u8; KEY_LEN]>,
    secret_birth: Option<Duration>,
    clock: Arc<dyn Clock>,
}

impl CookieChecker {
    pub fn new(local: &PublicKey, clock: Arc<dyn Clock>) -> Self {
        Self {
            mac1_key: mac1_key(local),
            cookie_key: cookie_key(local),
            secret: Zeroizing::new([0u8; KEY_LEN]),
            secret_birth: None,
            clock,
        }
    }

    pub fn verify_mac1(&self, msg: &[u8]) -> Result<()> {
        verify_mac1(&self.mac1_key, msg)
    }

    fn cookie_for(&mut self, src: &SocketAddr) -> [u8; MAC_LEN] {
        let now = self.clock.now();
        let stale = self
            .secret_birth
            .is_none_or(|b| has_expired(b, COOKIE_SECRET_MAX_AGE, now));
        if stale {
            OsRng.fill_bytes(&mut self.secret[..]);
            self.secret_birth = Some(now);
        }
        mac(&self.secret[..], &[&address_bytes(src)])
    }

    /// True when mac1 is valid and mac2 proves a current cookie for `src`.
    pub fn verify_mac2(&mut self, msg: &[u8], src: &SocketAddr) -> Result<bool> {
        self.verify_mac1(msg)?;
        let (_, m2) = mac_offsets(msg.len());
        let cookie = self.cookie_for(src);
        Ok(ct_eq(&mac(&cookie, &[&msg[..m2]]), &msg[m2..]))
    }

    /// A cookie reply to the handshake message `msg` that came from `src`.
    pub fn create_reply(&mut self, msg: &[u8], src: &SocketAddr) -> Result<[u8; COOKIE_REPLY_LEN]> {
        let (m1, m2) = handshake_message(msg)?;
        let mut sender = [0u8; 4];
        sender.copy_from_slice(&msg[4..8]);
        let cookie = self.cookie_for(src);
        let mut nonce = [0u8; XNONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = xaead_seal(&self.cookie_key, &nonce, &cookie, &msg[m1..m2])?;
        let mut encrypted_cookie = [0u8; MAC_LEN + crate::crypto::TAG_LEN];
        encrypted_cookie.copy_from_slice(&sealed);
        Ok(CookieReply {
            receiver: u32::from_le_bytes(sender),
            nonce,
            encrypted_cookie,
        }
        .to_bytes())
    }
}

/// The sender's side, one per peer: adds MACs to our handshake messages and
/// keeps the cookie the peer sent us.
pub struct CookieJar {
    mac1_key: [u8; KEY_LEN],
    cookie_key: [u8; KEY_LEN],
    last_mac1: Option<[u8; MAC_LEN]>,
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, Duration)>,
}

impl CookieJar {
    pub fn new(remote: &PublicKey) -> Self {
        Self {
            mac1_key: mac1_key(remote),
            cookie_key: cookie_key(remote),
            last_mac1: None,
            cookie: None,
        }
    }

    /// Fills in mac1 and mac2 of a type 1 or 2 message we are about to send.
    pub fn add_macs(&mut self, msg: &mut [u8], now: Duration) -> Result<()> {
        let (m1, m2) = handshake_message(msg)?;
        let mac1 = mac(&self.mac1_key, &[&msg[..m1]]);
        msg[m1..m2].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let fresh = self.cookie.as_ref().filter(|(_, birth)| {
            !has_expired(*birth, COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY, now)
        });
        let mac2 = match fresh {
            Some((cookie, _)) => mac(&cookie[..], &[&msg[..m2]]),
            None => [0u8; MAC_LEN],
        };
        msg[m2..].copy_from_slice(&mac2);
        Ok(())
    }

    /// Stores the cookie from a reply to our last handshake message.
    pub fn consume_reply(&mut self, reply: &CookieReply, now: Duration) -> Result<()> {
        let aad = self.last_mac1.ok_or(Error::UnexpectedCookie)?;
        let plain = xaead_open(
            &self.cookie_key,
            &reply.nonce,
            &reply.encrypted_cookie,
            &aad,
        )?;
        let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
        cookie.copy_from_slice(&plain[..MAC_LEN]);
        self.cookie = Some((cookie, now));
        // One reply per mac1 sent, as the kernel's have_sent_mac1.
        self.last_mac1 = None;
        Ok(())
    }

    pub fn has_cookie(&self, now: Duration) -> bool {
        self.cookie.as_ref().is_some_and(|(_, b)| {
            !has_expired(*b, COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY, now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::PrivateKey;
    use crate::messages::INITIATION_LEN;

    fn msg() -> [u8; INITIATION_LEN] {
        let mut m = [7u8; INITIATION_LEN];
        m[0] = 1;
        m[1..4].fill(0);
        m[4..8].copy_from_slice(&0xabcdu32.to_le_bytes());
        m
    }

    #[test]
    fn mac1_matches_python_reference_layout() {
        let responder = PrivateKey::from_bytes([3u8; 32]).public_key();
        let mut jar = CookieJar::new(&responder);
        let mut m = msg();
        jar.add_macs(&mut m, Duration::ZERO).expect("macs");
        let key = hash(&[b"mac1----", responder.as_bytes()]);
        assert_eq!(&m[116..132], &mac(&key, &[&m[..116]]));
        assert_eq!(&m[132..], &[0u8; 16], "no cookie yet: mac2 is zero");
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let checker = CookieChecker::new(&responder, clock);
        assert!(checker.verify_mac1(&m).is_ok());
        m[20] ^= 1;
        assert_eq!(checker.verify_mac1(&m), Err(Error::InvalidMac1));
    }

    #[test]
    fn cookie_round_trip_and_lifetimes() {
        let manual = Arc::new(ManualClock::new(Duration::from_secs(1000), Duration::ZERO));
        let clock: Arc<dyn Clock> = manual.clone();
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder, clock.clone());
        let mut jar = CookieJar::new(&responder);
        let src: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let other_port: SocketAddr = "192.0.2.1:51821".parse().expect("addr");

        let mut m = msg();
        jar.add_macs(&mut m, clock.now()).expect("macs");
        assert_eq!(checker.verify_mac2(&m, &src), Ok(false));
        let reply = checker.create_reply(&m, &src).expect("reply");
        assert_eq!(&reply[..4], &[3, 0, 0, 0]);
        assert_eq!(
            &reply[4..8],
            &0xabcdu32.to_le_bytes(),
            "answers the sender index"
        );
        let reply = CookieReply::parse(&reply).expect("parse");
        jar.consume_reply(&reply, clock.now()).expect("consume");
        // A second reply for the same mac1 is refused.
        assert_eq!(
            jar.consume_reply(&reply, clock.now()),
            Err(Error::UnexpectedCookie)
        );

        let mut m2 = msg();
        jar.add_macs(&mut m2, clock.now()).expect("macs");
        assert_eq!(checker.verify_mac2(&m2, &src), Ok(true));
        assert_eq!(
            checker.verify_mac2(&m2, &other_port),
            Ok(false),
            "the cookie binds the port"
        );

        // Used for at most 115 s.
        manual.advance(Duration::from_secs(115));
        assert!(jar.has_cookie(clock.now()));
        manual.advance(Duration::from_secs(1));
        assert!(!jar.has_cookie(clock.now()));
        let mut m3 = msg();
        jar.add_macs(&mut m3, clock.now()).expect("macs");
        assert_eq!(&m3[132..], &[0u8; 16]);
    }

    #[test]
    fn secret_rotates_after_120_s() {
        let manual = Arc::new(ManualClock::default());
        let clock: Arc<dyn Clock> = manual.clone();
        let responder = PrivateKey::generate().public_key();
        let mut checker = CookieChecker::new(&responder, clock.clone());
        let src: SocketAddr = "[2001:db8::1]:4000".parse().expect("addr");
        let mut jar = CookieJar::new(&responder);
        let mut m = msg();
        jar.add_macs(&mut m, clock.now()).expect("macs");
        let reply =
            CookieReply::parse(&checker.create_reply(&m, &src).expect("reply")).expect("parse");
        jar.consume_reply(&reply, clock.now()).expect("consume");
        manual.advance(Duration::from_secs(100));
        let mut m2 = msg();
        jar.add_macs(&mut m2, clock.now()).expect("macs");
        assert_eq!(checker.verify_mac2(&m2, &src), Ok(true));
        manual.advance(Duration::from_secs(21));
        assert_eq!(
            checker.verify_mac2(&m2, &src),
            Ok(false),
            "secret replaced after 120 s"
        );
    }

    #[test]
    fn reply_with_wrong_aad_is_rejected() {
        let responder = PrivateKey::generate().public_key();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let mut checker = CookieChecker::new(&responder, clock);
        let mut jar = CookieJar::new(&responder);
        let mut m = msg();
        jar.add_macs(&mut m, Duration::ZERO).expect("macs");
        let mut other = msg();
        other[50] = 1;
        CookieJar::new(&responder)
            .add_macs(&mut other, Duration::ZERO)
            .expect("macs");
        let src: SocketAddr = "198.51.100.7:9".parse().expect("addr");
        let reply =
            CookieReply::parse(&checker.create_reply(&other, &src).expect("reply")).expect("parse");
        assert_eq!(
            jar.consume_reply(&reply, Duration::ZERO),
            Err(Error::Decrypt)
        );
        let mut tampered =
            CookieReply::parse(&checker.create_reply(&m, &src).expect("reply")).expect("parse");
        tampered.encrypted_cookie[0] ^= 1;
        assert_eq!(
            jar.consume_reply(&tampered, Duration::ZERO),
            Err(Error::Decrypt)
        );
    }

    #[test]
    fn non_handshake_messages_refused() {
        let responder = PrivateKey::generate().public_key();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let mut checker = CookieChecker::new(&responder, clock);
        let mut t = [0u8; 64];
        t[0] = 4;
        assert!(checker.verify_mac1(&t).is_err());
        assert!(checker
            .create_reply(&t, &"192.0.2.1:1".parse().expect("addr"))
            .is_err());
        assert!(CookieJar::new(&responder)
            .add_macs(&mut t, Duration::ZERO)
            .is_err());
    }
}
