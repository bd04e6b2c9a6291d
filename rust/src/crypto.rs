//! WireGuard's primitives (whitepaper §5.4), each a thin, total function:
//!
//! - HASH: BLAKE2s-256, unkeyed.
//! - MAC: keyed BLAKE2s with a 16-byte output (the BLAKE2 key parameter, not HMAC).
//! - HMAC: RFC 2104 over BLAKE2s (64-byte block).
//! - KDF1/2/3: HKDF from that HMAC: prk = HMAC(ck, input), T1 = HMAC(prk, 0x1),
//!   Ti = HMAC(prk, Ti-1 || i).
//! - AEAD: ChaCha20-Poly1305 (RFC 8439, ring) with nonce = 4 zero bytes || LE64(counter).
//! - XAEAD: XChaCha20-Poly1305, used only by cookie replies.
//!
//! Derived secrets come back as `Zeroizing` so that they are wiped when dropped.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::XChaCha20Poly1305;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
pub const HASH_LEN: usize = 32;
pub const MAC_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
pub const XNONCE_LEN: usize = 24;
const BLAKE2S_BLOCK: usize = 64;

pub type Secret = Zeroizing<[u8; KEY_LEN]>;

/// HASH(parts[0] || parts[1] || ...)
pub fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// MAC(key, parts...) = keyed BLAKE2s, 16-byte output.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // Callers pass 16- or 32-byte keys, always valid for BLAKE2s, so the error arm is dead;
    // it still returns a value rather than panicking.
    let Ok(mut m) = <Blake2sMac<U16> as KeyInit>::new_from_slice(key) else {
        return [0u8; MAC_LEN];
    };
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize_fixed().into()
}

/// HMAC-BLAKE2s(key, parts...).
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> Secret {
    let mut block = Zeroizing::new([0u8; BLAKE2S_BLOCK]);
    if key.len() > BLAKE2S_BLOCK {
        block[..HASH_LEN].copy_from_slice(&hash(&[key]));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut pad = Zeroizing::new([0u8; BLAKE2S_BLOCK]);
    for (p, k) in pad.iter_mut().zip(block.iter()) {
        *p = k ^ 0x36;
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, &pad[..]);
    for p in parts {
        Digest::update(&mut inner, p);
    }
    let inner_hash = Zeroizing::new(<[u8; HASH_LEN]>::from(inner.finalize()));
    for (p, k) in pad.iter_mut().zip(block.iter()) {
        *p = k ^ 0x5c;
    }
    let mut outer = Blake2s256::new();
    Digest::update(&mut outer, &pad[..]);
    Digest::update(&mut outer, &inner_hash[..]);
    Zeroizing::new(outer.finalize().into())
}

fn kdf<const N: usize>(ck: &[u8], input: &[u8]) -> [Secret; N] {
    let prk = hmac(ck, &[input]);
    let mut out: [Secret; N] = core::array::from_fn(|_| Zeroizing::new([0u8; KEY_LEN]));
    for i in 0..N {
        let counter = [(i + 1) as u8];
        out[i] = if i == 0 {
            hmac(&prk[..], &[&counter])
        } else {
            let prev = out[i - 1].clone();
            hmac(&prk[..], &[&prev[..], &counter])
        };
    }
    out
}

pub fn kdf1(ck: &[u8], input: &[u8]) -> Secret {
    let [a] = kdf::<1>(ck, input);
    a
}

pub fn kdf2(ck: &[u8], input: &[u8]) -> (Secret, Secret) {
    let [a, b] = kdf::<2>(ck, input);
    (a, b)
}

pub fn kdf3(ck: &[u8], input: &[u8]) -> (Secret, Secret, Secret) {
    let [a, b, c] = kdf::<3>(ck, input);
    (a, b, c)
}

/// The 96-bit transport/handshake nonce: 32 zero bits then the little-endian counter.
pub fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A ChaCha20-Poly1305 key for ring. Only fixed-size keys reach here, so
/// ring's length check cannot fail; it is still mapped to an error.
pub fn aead_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::InvalidKey("AEAD key"))
}

/// Encrypts `buf[..len-16]` in place and writes the tag into the last 16 bytes.
pub fn aead_seal_in_place(
    key: &LessSafeKey,
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<()> {
    let plain_len = buf
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(Error::BufferTooSmall {
            needed: TAG_LEN,
            have: buf.len(),
        })?;
    let (plain, tag_out) = buf.split_at_mut(plain_len);
    let tag = key
        .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), plain)
        .map_err(|_| Error::Decrypt)?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(())
}

/// Verifies and decrypts `buf` (ciphertext || tag) in place; returns the plaintext length.
pub fn aead_open_in_place(
    key: &LessSafeKey,
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<usize> {
    key.open_in_place(nonce(counter), Aad::from(aad), buf)
        .map(|p| p.len())
        .map_err(|_| Error::Decrypt)
}

/// One-shot AEAD used by the handshake: `out` receives plaintext || tag.
pub fn aead_seal(
    key: &[u8; KEY_LEN],
    counter: u64,
    plaintext: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let needed = plaintext.len() + TAG_LEN;
    if out.len() != needed {
        return Err(Error::BufferTooSmall {
            needed,
            have: out.len(),
        });
    }
    out[..plaintext.len()].copy_from_slice(plaintext);
    aead_seal_in_place(&aead_key(key)?, counter, aad, out)
}

/// One-shot AEAD open used by the handshake: `out` receives the plaintext.
pub fn aead_open(
    key: &[u8; KEY_LEN],
    counter: u64,
    ciphertext: &[u8],
    aad: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if ciphertext.len() != out.len() + TAG_LEN {
        return Err(Error::BufferTooSmall {
            needed: ciphertext.len().saturating_sub(TAG_LEN),
            have: out.len(),
        });
    }
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    aead_open_in_place(&aead_key(key)?, counter, aad, &mut buf)?;
    out.copy_from_slice(&buf[..out.len()]);
    Ok(())
}

/// XChaCha20-Poly1305 seal: returns ciphertext || tag.
pub fn xaead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut buf = plaintext.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), aad, &mut buf)
        .map_err(|_| Error::Decrypt)?;
    buf.extend_from_slice(&tag);
    Ok(buf)
}

/// XChaCha20-Poly1305 open of ciphertext || tag.
pub fn xaead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let plain_len = ciphertext
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(Error::Decrypt)?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut buf = Zeroizing::new(ciphertext[..plain_len].to_vec());
    let tag = chacha20poly1305::Tag::from_slice(&ciphertext[plain_len..]);
    cipher
        .decrypt_in_place_detached(nonce.into(), aad, &mut buf, tag)
        .map_err(|_| Error::Decrypt)?;
    Ok(buf)
}

/// Constant-time equality for MACs and keys.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test vector hex")
    }

    fn seq(from: u8, n: usize) -> Vec<u8> {
        (0..n).map(|i| from.wrapping_add(i as u8)).collect()
    }

    const LADIES: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";

    #[test]
    fn blake2s_rfc7693_abc() {
        assert_eq!(
            hash(&[b"abc"]).to_vec(),
            h("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
        );
        // Split input gives the same digest as contiguous input.
        assert_eq!(hash(&[b"a", b"bc"]), hash(&[b"abc"]));
    }

    #[test]
    fn blake2s_empty_unkeyed_kernel_selftest_first_vector() {
        assert_eq!(
            hash(&[]).to_vec(),
            h("69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9")
        );
    }

    #[test]
    fn blake2s_keyed_official_vector() {
        // BLAKE2 reference blake2s-kat.txt: key 00..1f, empty input (full 32-byte output).
        let key = seq(0, 32);
        let mut m = <blake2::Blake2sMac256 as KeyInit>::new_from_slice(&key).expect("key");
        Mac::update(&mut m, b"");
        let out: [u8; 32] = m.finalize_fixed().into();
        assert_eq!(
            out.to_vec(),
            h("48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49")
        );
    }

    #[test]
    fn construction_constants() {
        let ci = hash(&[b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"]);
        assert_eq!(
            ci.to_vec(),
            h("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
        );
        let hi = hash(&[&ci, b"WireGuard v1 zx2c4 Jason@zx2c4.com"]);
        assert_eq!(
            hi.to_vec(),
            h("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")
        );
    }

    #[test]
    fn hmac_blake2s_matches_rfc2104_long_key() {
        // A key longer than the block is first hashed; compare with a 32-byte
        // key equal to that hash.
        let long = seq(1, 100);
        let hashed = hash(&[&long]);
        assert_eq!(*hmac(&long, &[b"msg"]), *hmac(&hashed, &[b"msg"]));
    }

    // wireguard-go device/kdf_test.go: the chaining key is the raw key bytes.
    // The same values come out of Python's hmac + hashlib.blake2s.
    fn kdf_case(key: &str, input: &str, t0: &str, t1: &str, t2: &str) {
        let (a, b, c) = kdf3(key.as_bytes(), input.as_bytes());
        assert_eq!(a.to_vec(), h(t0));
        assert_eq!(b.to_vec(), h(t1));
        assert_eq!(c.to_vec(), h(t2));
        let (a2, b2) = kdf2(key.as_bytes(), input.as_bytes());
        assert_eq!((a2.to_vec(), b2.to_vec()), (h(t0), h(t1)));
        assert_eq!(kdf1(key.as_bytes(), input.as_bytes()).to_vec(), h(t0));
    }

    #[test]
    fn kdf_wireguard_go_vectors() {
        kdf_case(
            "test-key",
            "test-input",
            "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
            "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
            "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
        );
        kdf_case(
            "wireguard",
            "wireguard",
            "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
            "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
            "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
        );
        kdf_case(
            "",
            "",
            "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
            "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
            "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
        );
    }

    #[test]
    fn chacha20poly1305_rfc8439_2_8_2() {
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&CHACHA20_POLY1305, &seq(0x80, 32)).expect("key"),
        );
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&h("070000004041424344454647"))
            .expect("nonce");
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let mut buf = LADIES.to_vec();
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(&aad), &mut buf)
            .expect("seal");
        assert_eq!(buf, h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116"));
        assert_eq!(tag.as_ref().to_vec(), h("1ae10b594f09e26a7e902ecbd0600691"));
    }

    #[test]
    fn transport_keepalive_vector() {
        // Key of zeros, counter 1, empty plaintext: only the tag remains.
        let mut out = [0u8; TAG_LEN];
        aead_seal(&[0u8; 32], 1, &[], &[], &mut out).expect("seal");
        assert_eq!(out.to_vec(), h("f072ad3c073a98ba24da8ee143ad5832"));
        let mut plain = [0u8; 0];
        aead_open(&[0u8; 32], 1, &out, &[], &mut plain).expect("open");
        assert_eq!(
            aead_open(&[0u8; 32], 2, &out, &[], &mut plain),
            Err(Error::Decrypt)
        );
    }

    #[test]
    fn xchacha20poly1305_draft_a_3_1() {
        let key: [u8; 32] = seq(0x80, 32).try_into().expect("32");
        let nonce: [u8; 24] = h("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .expect("24");
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let ct = xaead_seal(&key, &nonce, LADIES, &aad).expect("seal");
        assert_eq!(ct[..16].to_vec(), h("bd6d179d3e83d43b9576579493c0e939"));
        assert_eq!(
            ct[ct.len() - 16..].to_vec(),
            h("c0875924c1c7987947deafd8780acf49")
        );
        assert_eq!(
            &xaead_open(&key, &nonce, &ct, &aad).expect("open")[..],
            LADIES
        );
        let mut bad = ct.clone();
        bad[3] ^= 1;
        assert!(xaead_open(&key, &nonce, &bad, &aad).is_err());
        assert!(xaead_open(&key, &nonce, &ct[..10], &aad).is_err());
    }
}
