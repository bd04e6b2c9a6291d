//! The handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with WireGuard's
//! identifier as the prologue (whitepaper §5.4.2-5.4.5, kernel noise.c).
//!
//! - C = HASH(Construction), H = HASH(C || Identifier || responder's static).
//! - Initiation: e (mixes E into H *and* C), es, s (encrypted static), ss,
//!   {timestamp}. Response: e, ee, se, psk (KDF3; zeros when none), {}.
//! - Every handshake AEAD uses counter 0 and H as the associated data.
//! - mac1 is verified before any DH; an all-zero DH fails the handshake.
//! - A responder accepts an initiation only if its TAI64N timestamp is
//!   strictly newer than the newest accepted from that peer, and at least
//!   20 ms (1/50 s) after the last initiation it consumed from that peer.
//! - A response is consumed only by the handshake that sent the initiation
//!   it answers (state and receiver index both match).
//! - Transport keys: (T1, T2) = KDF2(C, ""); the initiator sends with T1.
//! - Sender indices are random 32-bit values; the caller keeps them unique
//!   (the data plane's index table allocates them, `create_*_at`).

use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::cookie::{mac1_key, verify_mac1, CookieJar};
use crate::crypto::{
    aead_open, aead_seal, hash, kdf1, kdf2, kdf3, Secret, HASH_LEN, KEY_LEN, TAG_LEN,
};
use crate::error::{Error, Result};
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::messages::{CookieReply, Initiation, Response, INITIATION_LEN, RESPONSE_LEN};
use crate::session::Keypair;
use crate::tai64n::{Tai64N, TIMESTAMP_LEN};

pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
pub const INITIATIONS_PER_SECOND: u32 = 50;
const MIN_INITIATION_INTERVAL: Duration =
    Duration::from_millis(1000 / INITIATIONS_PER_SECOND as u64);

type Hash = Zeroizing<[u8; HASH_LEN]>;

/// HASH(Construction) and HASH(that || Identifier): the fixed starting point.
pub fn initial_chaining_key() -> [u8; HASH_LEN] {
    hash(&[CONSTRUCTION])
}

pub fn initial_hash() -> [u8; HASH_LEN] {
    hash(&[&initial_chaining_key(), IDENTIFIER])
}

fn mix_hash(h: &mut Hash, data: &[u8]) {
    **h = hash(&[&h[..], data]);
}

/// The `e` token: H = HASH(H || E), C = KDF1(C, E).
fn mix_ephemeral(ck: &mut Secret, h: &mut Hash, ephemeral: &[u8; KEY_LEN]) {
    mix_hash(h, ephemeral);
    *ck = kdf1(&ck[..], ephemeral);
}

/// A DH token that also yields a key: (C, k) = KDF2(C, dh).
fn mix_dh_key(ck: &mut Secret, dh: &Secret) -> Secret {
    let (c, k) = kdf2(&ck[..], &dh[..]);
    *ck = c;
    k
}

fn random_index() -> u32 {
    OsRng.next_u32()
}

/// This side's static key with what is derived from it once.
pub struct Identity {
    private: PrivateKey,
    public: PublicKey,
    mac1_key: [u8; KEY_LEN],
}

impl Identity {
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self {
            mac1_key: mac1_key(&public),
            private,
            public,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }

    /// Checks mac1 of a handshake message sent to us.
    pub fn verify_mac1(&self, msg: &[u8]) -> Result<()> {
        verify_mac1(&self.mac1_key, msg)
    }

    /// First half of consuming an initiation: checks mac1 and decrypts the
    /// initiator's static key and timestamp. Which peer sent it is only known
    /// after this, so the replay and flood rules are applied by that peer's
    /// `Handshake::consume_initiation`.
    pub fn open_initiation(&self, msg: &[u8]) -> Result<ReceivedInitiation> {
        let init = Initiation::parse(msg)?;
        self.verify_mac1(msg)?;
        let mut ck: Secret = Zeroizing::new(initial_chaining_key());
        let mut h: Hash = Zeroizing::new(hash(&[&initial_hash(), self.public.as_bytes()]));
        mix_ephemeral(&mut ck, &mut h, &init.ephemeral);
        let k = mix_dh_key(
            &mut ck,
            &self.private.dh(&PublicKey::from_bytes(init.ephemeral))?,
        );
        let mut static_bytes = [0u8; KEY_LEN];
        aead_open(&k, 0, &init.encrypted_static, &h[..], &mut static_bytes)?;
        mix_hash(&mut h, &init.encrypted_static);
        let peer = PublicKey::from_bytes(static_bytes);
        let k = mix_dh_key(&mut ck, &self.private.dh(&peer)?);
        let mut ts = [0u8; TIMESTAMP_LEN];
        aead_open(&k, 0, &init.encrypted_timestamp, &h[..], &mut ts)?;
        mix_hash(&mut h, &init.encrypted_timestamp);
        Ok(ReceivedInitiation {
            peer,
            sender: init.sender,
            ephemeral: init.ephemeral,
            hash: h,
            ck,
            timestamp: Tai64N(ts),
        })
    }
}

/// A decrypted, not yet accepted initiation.
pub struct ReceivedInitiation {
    pub peer: PublicKey,
    pub sender: u32,
    pub timestamp: Tai64N,
    ephemeral: [u8; KEY_LEN],
    hash: Hash,
    ck: Secret,
}

impl core::fmt::Debug for ReceivedInitiation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReceivedInitiation")
            .field("peer", &self.peer)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

enum State {
    Zeroed,
    CreatedInitiation {
        local_index: u32,
        ephemeral: PrivateKey,
        hash: Hash,
        ck: Secret,
    },
    ConsumedInitiation {
        remote_index: u32,
        remote_ephemeral: [u8; KEY_LEN],
        hash: Hash,
        ck: Secret,
    },
}

/// The handshake state with one peer.
///
/// What survives a change of our own static key (`set_identity`, kernel
/// `wg_noise_precompute_static_static`): the newest timestamp accepted and
/// the time of the last initiation consumed, so a replay stays a replay; the
/// cookie from the peer. What does not: the handshake in progress.
pub struct Handshake {
    identity: Arc<Identity>,
    remote: PublicKey,
    psk: PresharedKey,
    /// DH(our static, their static), computed once; `None` if it is all zeros.
    static_static: Option<Secret>,
    state: State,
    latest_timestamp: Tai64N,
    last_initiation_consumed: Option<Duration>,
    cookies: CookieJar,
    clock: Arc<dyn Clock>,
}

impl Handshake {
    pub fn new(
        identity: Arc<Identity>,
        remote: PublicKey,
        psk: Option<PresharedKey>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let static_static = identity.private.dh(&remote).ok();
        Self {
            cookies: CookieJar::new(&remote),
            identity,
            remote,
            psk: psk.unwrap_or_else(PresharedKey::zero),
            static_static,
            state: State::Zeroed,
            latest_timestamp: Tai64N::default(),
            last_initiation_consumed: None,
            clock,
        }
    }

    pub fn remote_public_key(&self) -> PublicKey {
        self.remote
    }

    /// Our static key changed: the static-static secret is recomputed and
    /// any handshake in progress forgotten; the replay and flood state stays.
    pub fn set_identity(&mut self, identity: Arc<Identity>) {
        self.static_static = identity.private.dh(&self.remote).ok();
        self.identity = identity;
        self.clear();
    }

    pub fn local_public_key(&self) -> PublicKey {
        self.identity.public
    }

    /// Takes effect at the next handshake, as in the kernel and wireguard-go.
    pub fn set_preshared_key(&mut self, psk: Option<PresharedKey>) {
        self.psk = psk.unwrap_or_else(PresharedKey::zero);
    }

    /// The local index of the initiation in flight, if any.
    pub fn pending_index(&self) -> Option<u32> {
        match &self.state {
            State::CreatedInitiation { local_index, .. } => Some(*local_index),
            _ => None,
        }
    }

    pub fn has_cookie(&self) -> bool {
        self.cookies.has_cookie(self.clock.now())
    }

    /// Forgets any handshake in progress (kernel `handshake_zero`).
    pub fn clear(&mut self) {
        self.state = State::Zeroed;
    }

    fn static_static(&self) -> Result<&Secret> {
        self.static_static.as_ref().ok_or(Error::ZeroDh)
    }

    /// A new initiation with a fresh ephemeral key, timestamp and random index.
    pub fn create_initiation(&mut self) -> Result<[u8; INITIATION_LEN]> {
        self.create_initiation_at(random_index())
    }

    /// A new initiation naming `local_index` (allocated by the caller's index table).
    pub fn create_initiation_at(&mut self, local_index: u32) -> Result<[u8; INITIATION_LEN]> {
        let ts = Tai64N::from_unix(self.clock.unix_time());
        self.create_initiation_with(PrivateKey::generate(), local_index, ts)
    }

    /// `create_initiation` with chosen inputs, for known-answer tests.
    pub fn create_initiation_with(
        &mut self,
        ephemeral: PrivateKey,
        local_index: u32,
        timestamp: Tai64N,
    ) -> Result<[u8; INITIATION_LEN]> {
        let ss = self.static_static()?.clone();
        let mut ck: Secret = Zeroizing::new(initial_chaining_key());
        let mut h: Hash = Zeroizing::new(hash(&[&initial_hash(), self.remote.as_bytes()]));
        let e_pub = ephemeral.public_key();
        mix_ephemeral(&mut ck, &mut h, e_pub.as_bytes());
        let k = mix_dh_key(&mut ck, &ephemeral.dh(&self.remote)?);
        let mut encrypted_static = [0u8; KEY_LEN + TAG_LEN];
        aead_seal(
            &k,
            0,
            self.identity.public.as_bytes(),
            &h[..],
            &mut encrypted_static,
        )?;
        mix_hash(&mut h, &encrypted_static);
        let k = mix_dh_key(&mut ck, &ss);
        let mut encrypted_timestamp = [0u8; TIMESTAMP_LEN + TAG_LEN];
        aead_seal(&k, 0, &timestamp.0, &h[..], &mut encrypted_timestamp)?;
        mix_hash(&mut h, &encrypted_timestamp);
        let mut msg = Initiation {
            sender: local_index,
            ephemeral: *e_pub.as_bytes(),
            encrypted_static,
            encrypted_timestamp,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .to_bytes();
        self.cookies.add_macs(&mut msg, self.clock.now())?;
        self.state = State::CreatedInitiation {
            local_index,
            ephemeral,
            hash: h,
            ck,
        };
        Ok(msg)
    }

    /// Second half of consuming an initiation: it must be from this peer,
    /// newer than any accepted before, and not part of a flood.
    pub fn consume_initiation(&mut self, init: &ReceivedInitiation) -> Result<()> {
        if init.peer != self.remote {
            return Err(Error::WrongPeer);
        }
        // Proves the initiator used the static-static secret we expect (it
        // already did to produce a timestamp we could open); checking here
        // also refuses peers whose static key gives an all-zero DH.
        self.static_static()?;
        if !init.timestamp.is_after(&self.latest_timestamp) {
            return Err(Error::ReplayedTimestamp);
        }
        let now = self.clock.now();
        if self
            .last_initiation_consumed
            .is_some_and(|t| now.saturating_sub(t) < MIN_INITIATION_INTERVAL)
        {
            return Err(Error::Flood);
        }
        self.latest_timestamp = init.timestamp;
        self.last_initiation_consumed = Some(now);
        self.state = State::ConsumedInitiation {
            remote_index: init.sender,
            remote_ephemeral: init.ephemeral,
            hash: init.hash.clone(),
            ck: init.ck.clone(),
        };
        Ok(())
    }

    /// The response to the consumed initiation, and the new keypair (which
    /// the caller must not send with until the initiator has used it).
    pub fn create_response(&mut self) -> Result<([u8; RESPONSE_LEN], Keypair)> {
        self.create_response_at(random_index())
    }

    /// `create_response` naming `local_index` (allocated by the caller's index table).
    pub fn create_response_at(
        &mut self,
        local_index: u32,
    ) -> Result<([u8; RESPONSE_LEN], Keypair)> {
        self.create_response_with(PrivateKey::generate(), local_index)
    }

    /// `create_response` with chosen inputs, for known-answer tests.
    pub fn create_response_with(
        &mut self,
        ephemeral: PrivateKey,
        local_index: u32,
    ) -> Result<([u8; RESPONSE_LEN], Keypair)> {
        let State::ConsumedInitiation {
            remote_index,
            remote_ephemeral,
            hash: h0,
            ck: ck0,
        } = &self.state
        else {
            return Err(Error::UnexpectedMessage);
        };
        let remote_index = *remote_index;
        let mut h = h0.clone();
        let mut ck = ck0.clone();
        let e_pub = ephemeral.public_key();
        mix_ephemeral(&mut ck, &mut h, e_pub.as_bytes());
        *ck = *kdf1(
            &ck[..],
            &ephemeral.dh(&PublicKey::from_bytes(*remote_ephemeral))?[..],
        );
        *ck = *kdf1(&ck[..], &ephemeral.dh(&self.remote)?[..]);
        let (c, tau, k) = kdf3(&ck[..], self.psk.as_bytes());
        ck = c;
        mix_hash(&mut h, &tau[..]);
        let mut encrypted_nothing = [0u8; TAG_LEN];
        aead_seal(&k, 0, &[], &h[..], &mut encrypted_nothing)?;
        mix_hash(&mut h, &encrypted_nothing);
        let mut msg = Response {
            sender: local_index,
            receiver: remote_index,
            ephemeral: *e_pub.as_bytes(),
            encrypted_nothing,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .to_bytes();
        self.cookies.add_macs(&mut msg, self.clock.now())?;
        let (t1, t2) = kdf2(&ck[..], &[]);
        let keypair = Keypair::new(&t2, &t1, local_index, remote_index, self.clock.now(), false)?;
        self.state = State::Zeroed;
        Ok((msg, keypair))
    }

    /// Consumes the response to our initiation; returns the new keypair.
    pub fn consume_response(&mut self, msg: &[u8]) -> Result<Keypair> {
        let resp = Response::parse(msg)?;
        self.identity.verify_mac1(msg)?;
        let State::CreatedInitiation {
            local_index,
            ephemeral,
            hash: h0,
            ck: ck0,
        } = &self.state
        else {
            return Err(Error::UnexpectedMessage);
        };
        if resp.receiver != *local_index {
            return Err(Error::IndexMismatch);
        }
        let mut h = h0.clone();
        let mut ck = ck0.clone();
        let e_remote = PublicKey::from_bytes(resp.ephemeral);
        mix_ephemeral(&mut ck, &mut h, &resp.ephemeral);
        *ck = *kdf1(&ck[..], &ephemeral.dh(&e_remote)?[..]);
        *ck = *kdf1(&ck[..], &self.identity.private.dh(&e_remote)?[..]);
        let (c, tau, k) = kdf3(&ck[..], self.psk.as_bytes());
        ck = c;
        mix_hash(&mut h, &tau[..]);
        aead_open(&k, 0, &resp.encrypted_nothing, &h[..], &mut [])?;
        let (t1, t2) = kdf2(&ck[..], &[]);
        let keypair = Keypair::new(&t1, &t2, *local_index, resp.sender, self.clock.now(), true)?;
        self.state = State::Zeroed;
        Ok(keypair)
    }

    /// Stores the cookie from a cookie reply to our last handshake message.
    /// The caller routes the reply here by its receiver index.
    pub fn consume_cookie_reply(&mut self, msg: &[u8]) -> Result<()> {
        let reply = CookieReply::parse(msg)?;
        self.cookies.consume_reply(&reply, self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    struct Pair {
        clock: Arc<ManualClock>,
        init: Handshake,
        resp: Handshake,
        resp_identity: Arc<Identity>,
    }

    fn pair(psk: Option<PresharedKey>) -> Pair {
        let clock = Arc::new(ManualClock::new(
            Duration::from_secs(100),
            Duration::from_secs(1_700_000_000),
        ));
        let dynclock: Arc<dyn Clock> = clock.clone();
        let a = Arc::new(Identity::new(PrivateKey::generate()));
        let b = Arc::new(Identity::new(PrivateKey::generate()));
        let init = Handshake::new(a.clone(), b.public_key(), psk.clone(), dynclock.clone());
        let resp = Handshake::new(b.clone(), a.public_key(), psk, dynclock);
        Pair {
            clock,
            init,
            resp,
            resp_identity: b,
        }
    }

    fn complete(p: &mut Pair) -> (Keypair, Keypair) {
        let m1 = p.init.create_initiation().expect("initiation");
        let r = p.resp_identity.open_initiation(&m1).expect("open");
        assert_eq!(r.peer, p.init.local_public_key());
        p.resp.consume_initiation(&r).expect("consume");
        let (m2, kr) = p.resp.create_response().expect("response");
        let ki = p.init.consume_response(&m2).expect("consume response");
        (ki, kr)
    }

    #[test]
    fn handshake_yields_matching_keys() {
        for psk in [None, Some(PresharedKey::generate())] {
            let mut p = pair(psk);
            let (ki, kr) = complete(&mut p);
            assert!(ki.is_initiator && !kr.is_initiator);
            assert_eq!(ki.remote_index, kr.local_index);
            assert_eq!(kr.remote_index, ki.local_index);
            let now = p.clock.now();
            let m = ki.encrypt(b"ping", 0, now).expect("encrypt");
            assert_eq!(&kr.decrypt(&m, now).expect("decrypt")[..4], b"ping");
            let m = kr.encrypt(b"pong", 0, now).expect("encrypt");
            assert_eq!(&ki.decrypt(&m, now).expect("decrypt")[..4], b"pong");
        }
    }

    #[test]
    fn psk_mismatch_fails_at_the_initiator() {
        let mut p = pair(Some(PresharedKey::generate()));
        p.resp.set_preshared_key(Some(PresharedKey::generate()));
        let m1 = p.init.create_initiation().expect("initiation");
        p.resp
            .consume_initiation(&p.resp_identity.open_initiation(&m1).expect("open"))
            .expect("consume");
        let (m2, _) = p.resp.create_response().expect("response");
        assert_eq!(p.init.consume_response(&m2).err(), Some(Error::Decrypt));
    }

    #[test]
    fn replayed_initiation_is_rejected() {
        let mut p = pair(None);
        let m1 = p.init.create_initiation().expect("initiation");
        p.resp
            .consume_initiation(&p.resp_identity.open_initiation(&m1).expect("open"))
            .expect("consume");
        p.clock.advance(Duration::from_secs(1));
        let again = p
            .resp_identity
            .open_initiation(&m1)
            .expect("still decrypts");
        assert_eq!(
            p.resp.consume_initiation(&again).err(),
            Some(Error::ReplayedTimestamp)
        );
    }

    #[test]
    fn a_new_identity_keeps_the_replay_state() {
        let mut p = pair(None);
        let m1 = p.init.create_initiation().expect("initiation");
        p.resp
            .consume_initiation(&p.resp_identity.open_initiation(&m1).expect("open"))
            .expect("consume");
        let ours = Arc::new(Identity::new(PrivateKey::generate()));
        p.resp.set_identity(ours.clone());
        assert!(p.resp.pending_index().is_none());
        let clock: Arc<dyn Clock> = p.clock.clone();
        let mut init = Handshake::new(p.init.identity.clone(), ours.public_key(), None, clock);
        // Past the flood rule, but the wall clock shows the same time.
        p.clock.advance(Duration::from_secs(1));
        p.clock.set_unix_time(Duration::from_secs(1_700_000_000));
        let same_time = init.create_initiation().expect("initiation");
        assert_eq!(
            p.resp
                .consume_initiation(&ours.open_initiation(&same_time).expect("open"))
                .err(),
            Some(Error::ReplayedTimestamp),
            "the newest timestamp survives the key change"
        );
        p.clock.set_unix_time(Duration::from_secs(1_700_000_001));
        let later = init.create_initiation().expect("initiation");
        p.resp
            .consume_initiation(&ours.open_initiation(&later).expect("open"))
            .expect("a newer one is accepted");
        assert!(p.resp.create_response().is_ok());
    }

    #[test]
    fn flood_rule_is_20_ms() {
        let mut p = pair(None);
        let m1 = p.init.create_initiation().expect("initiation");
        p.resp
            .consume_initiation(&p.resp_identity.open_initiation(&m1).expect("open"))
            .expect("consume");
        // Newer timestamp (wall clock moved 1 s) but only 19 ms of monotonic time.
        p.clock.set_unix_time(Duration::from_secs(1_700_000_001));
        p.clock.advance(Duration::from_millis(19));
        let m2 = p.init.create_initiation().expect("initiation");
        assert_eq!(
            p.resp
                .consume_initiation(&p.resp_identity.open_initiation(&m2).expect("open"))
                .err(),
            Some(Error::Flood)
        );
        p.clock.advance(Duration::from_millis(1));
        let m3 = p.init.create_initiation().expect("initiation");
        assert!(p
            .resp
            .consume_initiation(&p.resp_identity.open_initiation(&m3).expect("open"))
            .is_ok());
    }

    #[test]
    fn bad_mac1_and_wrong_recipient() {
        let mut p = pair(None);
        let mut m1 = p.init.create_initiation().expect("initiation");
        m1[116] ^= 1;
        assert_eq!(
            p.resp_identity.open_initiation(&m1).err(),
            Some(Error::InvalidMac1)
        );
        let stranger = Identity::new(PrivateKey::generate());
        let m1 = p.init.create_initiation().expect("initiation");
        assert_eq!(
            stranger.open_initiation(&m1).err(),
            Some(Error::InvalidMac1)
        );
        // Valid mac1 but a corrupted ciphertext fails authentication.
        let mut m1 = p.init.create_initiation().expect("initiation");
        m1[50] ^= 1;
        let mut jar = CookieJar::new(&p.resp_identity.public_key());
        jar.add_macs(&mut m1, Duration::ZERO).expect("macs");
        assert_eq!(
            p.resp_identity.open_initiation(&m1).err(),
            Some(Error::Decrypt)
        );
    }

    #[test]
    fn response_checks_state_and_index() {
        let mut p = pair(None);
        let m1 = p.init.create_initiation().expect("initiation");
        p.resp
            .consume_initiation(&p.resp_identity.open_initiation(&m1).expect("open"))
            .expect("consume");
        let (m2, _) = p.resp.create_response().expect("response");
        assert_eq!(
            p.resp.create_response().err(),
            Some(Error::UnexpectedMessage),
            "one response per initiation"
        );
        let mut wrong = m2;
        wrong[8] ^= 1;
        let mut jar = CookieJar::new(&p.init.local_public_key());
        jar.add_macs(&mut wrong, Duration::ZERO).expect("macs");
        assert_eq!(
            p.init.consume_response(&wrong).err(),
            Some(Error::IndexMismatch)
        );
        assert!(p.init.consume_response(&m2).is_ok());
        assert_eq!(
            p.init.consume_response(&m2).err(),
            Some(Error::UnexpectedMessage),
            "consumed only once"
        );
    }

    #[test]
    fn initiation_from_other_peer_is_refused_by_this_handshake() {
        let mut p = pair(None);
        let third = Arc::new(Identity::new(PrivateKey::generate()));
        let clock: Arc<dyn Clock> = p.clock.clone();
        let mut h3 = Handshake::new(third, p.resp_identity.public_key(), None, clock);
        let m = h3.create_initiation().expect("initiation");
        let r = p.resp_identity.open_initiation(&m).expect("open");
        assert_eq!(p.resp.consume_initiation(&r).err(), Some(Error::WrongPeer));
    }

    #[test]
    fn low_order_peer_key_fails() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let me = Arc::new(Identity::new(PrivateKey::generate()));
        let mut h = Handshake::new(me, PublicKey::from_bytes([0u8; 32]), None, clock);
        assert_eq!(h.create_initiation().err(), Some(Error::ZeroDh));
    }

    #[test]
    fn cookie_reply_feeds_mac2() {
        let mut p = pair(None);
        let clock: Arc<dyn Clock> = p.clock.clone();
        let mut checker = crate::cookie::CookieChecker::new(&p.resp_identity.public_key(), clock);
        let src: std::net::SocketAddr = "203.0.113.5:1234".parse().expect("addr");
        let m1 = p.init.create_initiation().expect("initiation");
        assert_eq!(checker.verify_mac2(&m1, &src), Ok(false));
        let reply = checker.create_reply(&m1, &src).expect("reply");
        p.init.consume_cookie_reply(&reply).expect("cookie");
        assert!(p.init.has_cookie());
        let m1b = p.init.create_initiation().expect("initiation");
        assert_eq!(checker.verify_mac2(&m1b, &src), Ok(true));
    }
}
