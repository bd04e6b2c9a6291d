//! Curve25519 keys in WireGuard's forms.
//!
//! - Text form: standard base64 of the 32 bytes, exactly 44 characters with
//!   the `=` pad and canonical trailing bits, as `wg genkey`/`wg pubkey`/
//!   `wg genpsk` print and accept.
//! - `generate` clamps the private scalar as `wg genkey` does; keys read from
//!   text keep their bytes (clamping is applied inside every DH anyway).
//! - A DH whose result is all zeros (a low-order public key) is an error.
//! - Private and preshared keys are wiped on drop and never printed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::crypto::{Secret, KEY_LEN};
use crate::error::{Error, Result};

const BASE64_LEN: usize = 44;

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    if text.len() != BASE64_LEN || !text.ends_with('=') {
        return Err(Error::InvalidKey(
            "a key is 44 characters of base64 ending in '='",
        ));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    match STANDARD.decode_slice(text.as_bytes(), &mut out[..]) {
        Ok(KEY_LEN) => Ok(out),
        _ => Err(Error::InvalidKey("not valid base64 for a 32-byte key")),
    }
}

fn encode_key(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(bytes))
}

fn random_bytes() -> Zeroizing<[u8; KEY_LEN]> {
    let mut b = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut b[..]);
    b
}

/// RFC 7748 clamping, as `curve25519_clamp_secret`.
pub fn clamp(bytes: &mut [u8; KEY_LEN]) {
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn from_base64(text: &str) -> Result<Self> {
        Ok(Self(*decode_key(text)?))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

#[derive(Clone)]
pub struct PrivateKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl PrivateKey {
    pub fn generate() -> Self {
        let mut b = random_bytes();
        clamp(&mut b);
        Self::from_bytes(*b)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = Zeroizing::new(bytes);
        let secret = StaticSecret::from(*bytes);
        bytes.iter_mut().for_each(|b| *b = 0);
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    pub fn from_base64(text: &str) -> Result<Self> {
        Ok(Self::from_bytes(*decode_key(text)?))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(&self.to_bytes())
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// X25519(self, peer), rejecting the all-zero result.
    pub fn dh(&self, peer: &PublicKey) -> Result<Secret> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if !shared.was_contributory() {
            return Err(Error::ZeroDh);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        crate::crypto::ct_eq(&self.to_bytes()[..], &other.to_bytes()[..])
    }
}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivateKey(public={})", self.public.to_base64())
    }
}

#[derive(Clone)]
pub struct PresharedKey(Secret);

impl PresharedKey {
    /// The all-zero key, which WireGuard uses when no preshared key is set.
    pub fn zero() -> Self {
        Self(Zeroizing::new([0u8; KEY_LEN]))
    }

    pub fn generate() -> Self {
        Self(random_bytes())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn from_base64(text: &str) -> Result<Self> {
        Ok(Self(decode_key(text)?))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(&self.0)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        crate::crypto::ct_eq(&self.0[..], &other.0[..])
    }
}

impl core::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).expect("hex").try_into().expect("32 bytes")
    }

    #[test]
    fn rfc7748_6_1_alice_and_bob() {
        let alice = PrivateKey::from_bytes(h32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = PrivateKey::from_bytes(h32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public_key().as_bytes(),
            &h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public_key().as_bytes(),
            &h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = h32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*alice.dh(&bob.public_key()).expect("dh"), shared);
        assert_eq!(*bob.dh(&alice.public_key()).expect("dh"), shared);
    }

    #[test]
    fn rfc7748_5_2_single_step() {
        let cases = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (k, u, out) in cases {
            let key = PrivateKey::from_bytes(h32(k));
            assert_eq!(
                *key.dh(&PublicKey::from_bytes(h32(u))).expect("dh"),
                h32(out)
            );
        }
    }

    #[test]
    fn rfc7748_5_2_iterated() {
        let mut k = [0u8; 32];
        k[0] = 9;
        let mut u = k;
        for i in 1..=1000 {
            let r = x25519_dalek::x25519(k, u);
            u = k;
            k = r;
            if i == 1 {
                assert_eq!(
                    k,
                    h32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                );
            }
        }
        assert_eq!(
            k,
            h32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    #[test]
    fn low_order_points_give_zero_dh_error() {
        let me = PrivateKey::generate();
        // The identity and a point of order 8 (from the Curve25519 low-order list).
        let zero = PublicKey::from_bytes([0u8; 32]);
        let order8 = PublicKey::from_bytes(h32(
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        ));
        assert_eq!(me.dh(&zero).err(), Some(Error::ZeroDh));
        assert_eq!(me.dh(&order8).err(), Some(Error::ZeroDh));
    }

    #[test]
    fn base64_round_trip_and_strictness() {
        let k = PrivateKey::generate();
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(PrivateKey::from_base64(&text).expect("parse"), k);
        // Generated keys are clamped like `wg genkey`.
        let b = k.to_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
        let p = k.public_key();
        assert_eq!(PublicKey::from_base64(&p.to_base64()).expect("parse"), p);
        for bad in [
            "",
            "AAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 43, no pad
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", // 45
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", // non-canonical trailing bits
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*A=", // bad character
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // no pad
        ] {
            assert!(
                PublicKey::from_base64(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(PublicKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_ok());
    }

    #[test]
    fn wg_pubkey_known_answer() {
        // `wg pubkey` of the RFC 7748 Alice key, in base64 on both sides.
        let alice =
            PrivateKey::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").expect("parse");
        assert_eq!(
            alice.public_key().to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let k = PrivateKey::from_bytes([7u8; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains(&*k.to_base64()));
        assert!(s.contains(&k.public_key().to_base64()));
        let psk = PresharedKey::from_bytes([7u8; 32]);
        assert_eq!(format!("{psk:?}"), "PresharedKey(<redacted>)");
    }
}
