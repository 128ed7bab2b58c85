//! Forwards between a pool's sidecars, authenticated.
//!
//! A forwarded request is served where it lands (the loop guard), so the mark that says "a peer
//! forwarded this" must not be something a client can send. The forwarding sidecar signs the
//! request with HMAC-SHA256 under a key derived from the pool key (every sidecar of the pool has
//! it, no client does); the receiving sidecar accepts the mark only if the signature verifies with
//! a key of its ring, names it as the destination, and is fresh.
//!
//! Header value, fields separated by single spaces:
//!
//! ```text
//! v1 <key id> <unix seconds> <from pod> <to pod> <base64url HMAC-SHA256>
//! ```
//!
//! The MAC covers the version, key id, time, both pod names, the method, the path and query, and
//! the session id of the request's cookie, so a captured mark cannot be moved to another request,
//! another session or another pod, and is worthless after [`MAX_SKEW`] (the replay window).

use base64_simd::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::KeyRing;

type HmacSha256 = Hmac<Sha256>;

/// The replay window: a mark older (or newer) than this, by the receiver's clock, is refused.
/// Pods of one cluster keep their clocks within a second of each other; this leaves room for a
/// slow request body too.
pub const MAX_SKEW: u64 = 30;
const VERSION: &str = "v1";
/// Pod names are DNS subdomains (at most 253 bytes); anything longer is refused unread.
const MAX_HEADER_BYTES: usize = 700;

/// What a forward mark vouches for.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub method: &'a str,
    /// Path and query, as sent on the wire.
    pub path: &'a str,
    /// The session id of the request's cookie.
    pub session: &'a str,
}

/// Why a forward mark was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerAuthError {
    #[error("malformed forward mark")]
    Malformed,
    #[error("forward mark signed with unknown key {0}")]
    UnknownKey(u32),
    #[error("forward mark is {0} s away from this pod's clock")]
    Stale(u64),
    #[error("forward mark names another pod")]
    WrongPod,
    #[error("forward mark does not verify")]
    BadMac,
}

impl PeerAuthError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerAuthError::Malformed => "malformed",
            PeerAuthError::UnknownKey(_) => "unknown_key",
            PeerAuthError::Stale(_) => "stale",
            PeerAuthError::WrongPod => "wrong_pod",
            PeerAuthError::BadMac => "bad_mac",
        }
    }
}

fn mac(key: &[u8; 32], key_id: u32, at: u64, f: &Forward<'_>) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    let id = key_id.to_string();
    let at = at.to_string();
    // Every field is length-prefixed, so no two different field lists hash the same bytes.
    for field in [VERSION, &id, &at, f.from, f.to, f.method, f.path, f.session] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac
}

/// The header value marking `f` as forwarded by `f.from`, signed with the ring's current key.
pub fn sign(ring: &KeyRing, f: &Forward<'_>, now: u64) -> String {
    let key = ring.current();
    let tag = mac(&key.forward, key.id, now, f).finalize().into_bytes();
    format!("{VERSION} {} {now} {} {} {}", key.id, f.from, f.to, URL_SAFE_NO_PAD.encode_to_string(tag))
}

/// Checks a forward mark received by pod `f.to` for the request described by `f` (its `from` is
/// ignored: it comes from the mark). Returns the forwarding pod's name.
pub fn verify(ring: &KeyRing, value: &[u8], f: &Forward<'_>, now: u64) -> Result<String, PeerAuthError> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(PeerAuthError::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| PeerAuthError::Malformed)?;
    let mut fields = text.split(' ');
    let (Some(VERSION), Some(id), Some(at), Some(from), Some(to), Some(tag), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(PeerAuthError::Malformed);
    };
    let id: u32 = id.parse().map_err(|_| PeerAuthError::Malformed)?;
    let at: u64 = at.parse().map_err(|_| PeerAuthError::Malformed)?;
    let tag = URL_SAFE_NO_PAD.decode_to_vec(tag).map_err(|_| PeerAuthError::Malformed)?;
    let key = ring.get(id).ok_or(PeerAuthError::UnknownKey(id))?;
    let skew = now.abs_diff(at);
    if skew > MAX_SKEW {
        return Err(PeerAuthError::Stale(skew));
    }
    if to != f.to {
        return Err(PeerAuthError::WrongPod);
    }
    let claimed = Forward { from, ..*f };
    // `verify_slice` compares in constant time.
    mac(&key.forward, id, at, &claimed).verify_slice(&tag).map_err(|_| PeerAuthError::BadMac)?;
    Ok(from.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_line;
    use proptest::prelude::*;

    fn ring(ids: &[u32]) -> KeyRing {
        let text: Vec<String> = ids.iter().map(|id| generate_line(*id, 0)).collect();
        KeyRing::parse(&text.join("\n")).expect("valid ring")
    }

    const F: Forward<'static> =
        Forward { from: "pod-a", to: "pod-b", method: "POST", path: "/incr?x=1", session: "s-1" };

    #[test]
    fn a_signed_forward_verifies_at_its_destination() {
        let keys = ring(&[1]);
        let mark = sign(&keys, &F, 1_000);
        assert_eq!(verify(&keys, mark.as_bytes(), &Forward { from: "", ..F }, 1_010), Ok("pod-a".to_owned()));
    }

    #[test]
    fn a_mark_moved_to_another_request_session_or_pod_is_refused() {
        let keys = ring(&[1]);
        let mark = sign(&keys, &F, 1_000);
        for other in [Forward { path: "/admin", ..F }, Forward { method: "GET", ..F }, Forward { session: "s-2", ..F }]
        {
            assert_eq!(verify(&keys, mark.as_bytes(), &other, 1_000), Err(PeerAuthError::BadMac), "{other:?}");
        }
        assert_eq!(verify(&keys, mark.as_bytes(), &Forward { to: "pod-c", ..F }, 1_000), Err(PeerAuthError::WrongPod));
        let forged_from = mark.replace("pod-a", "pod-x");
        assert_eq!(verify(&keys, forged_from.as_bytes(), &F, 1_000), Err(PeerAuthError::BadMac));
    }

    #[test]
    fn a_replayed_mark_is_refused_after_the_window() {
        let keys = ring(&[1]);
        let mark = sign(&keys, &F, 1_000);
        assert!(verify(&keys, mark.as_bytes(), &F, 1_000 + MAX_SKEW).is_ok());
        assert_eq!(verify(&keys, mark.as_bytes(), &F, 1_000 + MAX_SKEW + 1), Err(PeerAuthError::Stale(MAX_SKEW + 1)));
        assert_eq!(verify(&keys, mark.as_bytes(), &F, 1_000 - MAX_SKEW - 1), Err(PeerAuthError::Stale(MAX_SKEW + 1)));
    }

    #[test]
    fn marks_of_another_pool_or_a_rotated_out_key_are_refused() {
        let mark = sign(&ring(&[1]), &F, 1_000);
        assert_eq!(verify(&ring(&[1]), mark.as_bytes(), &F, 1_000), Err(PeerAuthError::BadMac), "same id, other key");
        assert_eq!(verify(&ring(&[2]), mark.as_bytes(), &F, 1_000), Err(PeerAuthError::UnknownKey(1)));
    }

    #[test]
    fn a_rotated_ring_verifies_marks_of_its_previous_key() {
        let (k1, k2) = (generate_line(1, 0), generate_line(2, 0));
        let before = KeyRing::parse(&k1).expect("valid");
        let after = KeyRing::parse(&format!("{k2}\n{k1}")).expect("valid");
        let mark = sign(&before, &F, 1_000);
        assert!(verify(&after, mark.as_bytes(), &F, 1_000).is_ok());
    }

    #[test]
    fn what_a_client_can_send_is_refused() {
        let keys = ring(&[1]);
        for value in ["pod-a", "", "v1 1 1000 pod-a pod-b", "v1 x 1000 pod-a pod-b AAAA", "v2 1 1000 a b AAAA"] {
            assert_eq!(verify(&keys, value.as_bytes(), &F, 1_000), Err(PeerAuthError::Malformed), "{value:?}");
        }
        assert_eq!(verify(&keys, &[b'v'; 5000], &F, 1_000), Err(PeerAuthError::Malformed));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_verify(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let keys = ring(&[1]);
            prop_assert!(verify(&keys, &raw, &F, 1_000).is_err());
        }
    }
}
