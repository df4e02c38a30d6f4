//! OpenPGP: trusted keyrings and the signatures `git commit -S` writes with
//! GnuPG. Pure; the cryptography is rpgp's (`pgp` crate), the policy (which
//! key may sign, expiry, revocation, weak hashes) is ours and follows what
//! GnuPG reports as a good signature by a valid key (git accepts only that).
//!
//! Policy, checked at the time of verification:
//! - the signature is a binary or text data signature whose hash is not
//!   MD5, SHA-1 or RIPEMD-160 (SHA-1 collisions can be forged for PGP);
//! - the issuing key (primary key or subkey) is in the keyring and the
//!   signature verifies over the signed commit data;
//! - the primary key has a valid self-signature and no valid revocation; a
//!   subkey has a valid binding (with the primary-key back-signature GnuPG
//!   makes for signing subkeys) and no valid revocation;
//! - neither the primary key nor the signing subkey has expired, and the key
//!   is flagged for signing (when it carries key flags at all);
//! - the signature itself has not expired.
//!
//! Any revocation counts, whatever its reason code: a deploy gate should not
//! trust a key its owner has withdrawn.

use std::io::Cursor;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{PublicKey, PublicSubkey, Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails, Tag, Timestamp};

use super::{SignatureFormat, Signer, Unverified, format_time};

const FORMAT: SignatureFormat = SignatureFormat::OpenPgp;
const PUBLIC_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const PUBLIC_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
const PRIVATE_BEGIN: &str = "-----BEGIN PGP PRIVATE KEY BLOCK-----";
/// Fingerprints named in an unknown-key message; a keyring of a whole company
/// would otherwise make the message (and the Event) enormous.
const LISTED_KEYS: usize = 5;

/// Trusted OpenPGP public keys.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    /// Where the keys came from, for messages (a file name).
    source: String,
}

impl Keyring {
    /// Parses one or more public keys: armored blocks (several may follow
    /// each other, as `cat alice.asc bob.asc` or `https://github.com/<user>.gpg`
    /// give them; text around the blocks is ignored) or binary `gpg --export`
    /// output.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self, String> {
        let keys = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            SignedPublicKey::from_bytes_many(Cursor::new(bytes))
                .map_err(|e| format!("not an OpenPGP keyring: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cannot parse an OpenPGP key: {e}"))?
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "neither an armored nor a binary OpenPGP keyring".to_owned())?;
            if text.contains(PRIVATE_BEGIN) {
                return Err(
                    "it contains a PRIVATE key block; give only public keys (gpg --export --armor KEYID)"
                        .to_owned(),
                );
            }
            let mut keys = Vec::new();
            for (n, block) in armored_blocks(text).enumerate() {
                let (parsed, _) = SignedPublicKey::from_armor_many(Cursor::new(block))
                    .map_err(|e| format!("public key block {}: {e}", n + 1))?;
                for key in parsed {
                    keys.push(key.map_err(|e| format!("public key block {}: {e}", n + 1))?);
                }
            }
            keys
        };
        if keys.is_empty() {
            return Err(format!(
                "no OpenPGP public key found (expected {PUBLIC_BEGIN} blocks, e.g. from gpg --export --armor)"
            ));
        }
        Ok(Self {
            keys,
            source: source.to_owned(),
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// "2 key(s): FPR1, FPR2", at most [`LISTED_KEYS`] fingerprints.
    fn describe(&self) -> String {
        let fprs = self.fingerprints();
        let listed = fprs
            .iter()
            .take(LISTED_KEYS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = match fprs.len().checked_sub(LISTED_KEYS) {
            Some(n) if n > 0 => format!(", and {n} more"),
            _ => String::new(),
        };
        format!("{} key(s): {listed}{more}", fprs.len())
    }

    /// Primary key fingerprints, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex_upper(k.primary_key.fingerprint().as_bytes()))
            .collect()
    }
}

fn armored_blocks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(PUBLIC_BEGIN)?;
        let after = &rest[start..];
        let end = after
            .find(PUBLIC_END)
            .map_or(after.len(), |e| e + PUBLIC_END.len());
        let block = &after[..end];
        rest = &after[end..];
        Some(block)
    })
}

fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

fn parse_signature(armored: &[u8]) -> Result<Signature, Unverified> {
    let (sig, _) = DetachedSignature::from_armor_single(Cursor::new(armored)).map_err(|e| {
        Unverified::BadSignature {
            format: FORMAT,
            detail: format!("cannot parse the OpenPGP signature: {e}"),
        }
    })?;
    Ok(sig.signature)
}

/// Who the signature says issued it (fingerprint, else key id), for messages.
pub fn issuer_of(armored: &[u8]) -> Option<String> {
    parse_signature(armored).ok().and_then(|s| issuer(&s))
}

fn issuer(sig: &Signature) -> Option<String> {
    sig.issuer_fingerprint()
        .first()
        .map(|f| hex_upper(f.as_bytes()))
        .or_else(|| sig.issuer_key_id().first().map(|k| hex_upper(k.as_ref())))
}

/// The key (component) that may have made a signature.
enum Component<'a> {
    Primary,
    Subkey(&'a SignedPublicSubKey),
}

fn matches(sig: &Signature, key: &impl KeyDetails) -> bool {
    let ids = sig.issuer_key_id();
    let fps = sig.issuer_fingerprint();
    // Without issuer subpackets every key is a candidate; the cryptography decides.
    (ids.is_empty() && fps.is_empty())
        || ids.iter().any(|id| **id == key.legacy_key_id())
        || fps.iter().any(|fp| **fp == key.fingerprint())
}

fn secs(t: Timestamp) -> i64 {
    i64::from(t.as_secs())
}

fn created(sig: &Signature) -> i64 {
    sig.created().map_or(0, secs)
}

/// Verifies an armored OpenPGP signature over `payload` against `ring` at
/// `now` (seconds since the epoch).
pub fn verify(
    armored: &[u8],
    payload: &[u8],
    ring: &Keyring,
    now: i64,
) -> Result<Signer, Unverified> {
    let sig = parse_signature(armored)?;
    let bad = |detail: String| Unverified::BadSignature {
        format: FORMAT,
        detail,
    };
    if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
        return Err(bad(format!(
            "a {:?} signature is not a signature over data",
            sig.typ()
        )));
    }
    if let Some(alg @ (HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160)) =
        sig.hash_alg()
    {
        return Err(bad(format!(
            "it uses the {alg} hash, for which collisions can be forged; sign with SHA-256 or better (GnuPG's default)"
        )));
    }
    let candidates: Vec<(&SignedPublicKey, Component<'_>)> = ring
        .keys
        .iter()
        .flat_map(|key| {
            let primary = matches(&sig, &key.primary_key).then_some((key, Component::Primary));
            let subs = key
                .public_subkeys
                .iter()
                .filter(|s| matches(&sig, &s.key))
                .map(move |s| (key, Component::Subkey(s)));
            primary.into_iter().chain(subs)
        })
        .collect();
    let issuer_name = issuer(&sig).unwrap_or_else(|| "(no issuer in the signature)".to_owned());
    if candidates.is_empty() {
        return Err(Unverified::UnknownKey {
            format: FORMAT,
            key: issuer_name,
            hint: format!(
                "; it is not in the OpenPGP keyring {} ({})",
                ring.source,
                ring.describe()
            ),
        });
    }
    let Some((key, component)) = candidates.into_iter().find(|(key, c)| match c {
        Component::Primary => sig.verify(&key.primary_key, payload).is_ok(),
        Component::Subkey(s) => sig.verify(&s.key, payload).is_ok(),
    }) else {
        return Err(bad(format!(
            "the signature by {issuer_name} does not match the commit's content (the commit was changed after it was signed, or the signature was copied from another commit)"
        )));
    };
    let fingerprint = hex_upper(key.primary_key.fingerprint().as_bytes());
    let subkey = match component {
        Component::Primary => None,
        Component::Subkey(s) => Some(hex_upper(s.key.fingerprint().as_bytes())),
    };
    let key_name = subkey.clone().unwrap_or_else(|| fingerprint.clone());
    if created(&sig)
        < secs(match component {
            Component::Primary => key.primary_key.created_at(),
            Component::Subkey(s) => s.key.created_at(),
        })
    {
        return Err(bad(format!(
            "the signature claims to be older than key {key_name}"
        )));
    }
    check_primary(key, now, matches!(component, Component::Primary))?;
    if let Component::Subkey(s) = component {
        check_subkey(&key.primary_key, s, now)?;
    }
    if let Some(valid_for) = sig
        .signature_expiration_time()
        .map(|d| i64::from(d.as_secs()))
        && valid_for > 0
        && created(&sig) + valid_for <= now
    {
        return Err(Unverified::ExpiredSignature {
            expired_at: format_time(created(&sig) + valid_for),
        });
    }
    Ok(Signer {
        format: FORMAT,
        fingerprint,
        identity: primary_user_id(key, now).unwrap_or_else(|| "(no user ID)".to_owned()),
        subkey,
    })
}

/// The newest self-signature on the primary key (direct-key signature or
/// user-ID certification) that verifies and is not from the future.
fn newest_self_signature(key: &SignedPublicKey, now: i64) -> Option<&Signature> {
    let primary = &key.primary_key;
    let direct = key
        .details
        .direct_signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::Key) && s.verify_key(primary).is_ok());
    let certs = key.details.users.iter().flat_map(|u| {
        u.signatures.iter().filter(move |s| {
            is_certification(s)
                && matches(s, primary)
                && s.verify_certification(primary, Tag::UserId, &u.id).is_ok()
        })
    });
    direct
        .chain(certs)
        .filter(|s| created(s) <= now)
        .max_by_key(|s| created(s))
}

fn is_certification(sig: &Signature) -> bool {
    matches!(
        sig.typ(),
        Some(
            SignatureType::CertGeneric
                | SignatureType::CertPersona
                | SignatureType::CertCasual
                | SignatureType::CertPositive
        )
    )
}

fn has_key_flags(sig: &Signature) -> bool {
    sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    })
}

fn expiry(created_at: Timestamp, binding: &Signature) -> Option<i64> {
    binding
        .key_expiration_time()
        .map(|d| i64::from(d.as_secs()))
        .filter(|d| *d > 0)
        .map(|d| secs(created_at) + d)
}

fn revocation_detail(sig: &Signature) -> String {
    let reason = sig
        .revocation_reason_string()
        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        .filter(|s| !s.is_empty());
    let code = sig.revocation_reason_code().map(|c| format!("{c:?}"));
    match (code, reason) {
        (Some(c), Some(r)) => format!(" at {} ({c}: {r})", format_time(created(sig))),
        (Some(c), None) => format!(" at {} ({c})", format_time(created(sig))),
        (None, Some(r)) => format!(" at {} ({r})", format_time(created(sig))),
        (None, None) => format!(" at {}", format_time(created(sig))),
    }
}

fn check_primary(key: &SignedPublicKey, now: i64, signs: bool) -> Result<(), Unverified> {
    let primary = &key.primary_key;
    let name = hex_upper(primary.fingerprint().as_bytes());
    if let Some(rev) = key.details.revocation_signatures.iter().find(|s| {
        s.typ() == Some(SignatureType::KeyRevocation)
            && matches(s, primary)
            && s.verify_key(primary).is_ok()
    }) {
        return Err(Unverified::RevokedKey {
            format: FORMAT,
            key: name,
            detail: revocation_detail(rev),
        });
    }
    let Some(self_sig) = newest_self_signature(key, now) else {
        return Err(Unverified::UnusableKey {
            format: FORMAT,
            key: name,
            detail: "the key has no valid self-signature".to_owned(),
        });
    };
    if let Some(at) = expiry(primary.created_at(), self_sig)
        && at <= now
    {
        return Err(Unverified::ExpiredKey {
            format: FORMAT,
            key: name,
            detail: format!(
                "expired at {}; extend it (gpg --quick-set-expire) and re-export it, or re-sign the commit with a valid key",
                format_time(at)
            ),
        });
    }
    if signs && has_key_flags(self_sig) && !self_sig.key_flags().sign() {
        return Err(Unverified::UnusableKey {
            format: FORMAT,
            key: name,
            detail: "the primary key is not flagged for signing".to_owned(),
        });
    }
    Ok(())
}

fn check_subkey(primary: &PublicKey, sub: &SignedPublicSubKey, now: i64) -> Result<(), Unverified> {
    let name = hex_upper(sub.key.fingerprint().as_bytes());
    let binds = |s: &&Signature| s.verify_subkey_binding(primary, &sub.key).is_ok();
    if let Some(rev) = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
        .find(binds)
    {
        return Err(Unverified::RevokedKey {
            format: FORMAT,
            key: name,
            detail: revocation_detail(rev),
        });
    }
    let Some(binding) = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding) && created(s) <= now)
        .filter(binds)
        .max_by_key(|s| created(s))
    else {
        return Err(Unverified::UnusableKey {
            format: FORMAT,
            key: name,
            detail: "the subkey has no valid binding to its primary key".to_owned(),
        });
    };
    if !binding.key_flags().sign() {
        return Err(Unverified::UnusableKey {
            format: FORMAT,
            key: name,
            detail: "the subkey is not flagged for signing".to_owned(),
        });
    }
    // A signing subkey must prove it agrees to belong to this primary key,
    // or anyone could bind someone else's signing key to their own.
    let back_signed = binding
        .embedded_signature()
        .is_some_and(|back| back_signature_ok(back, &sub.key, primary));
    if !back_signed {
        return Err(Unverified::UnusableKey {
            format: FORMAT,
            key: name,
            detail: "the signing subkey has no valid back-signature (primary key binding)"
                .to_owned(),
        });
    }
    if let Some(at) = expiry(sub.key.created_at(), binding)
        && at <= now
    {
        return Err(Unverified::ExpiredKey {
            format: FORMAT,
            key: name,
            detail: format!(
                "expired at {}; extend it (gpg --quick-set-expire KEY 1y SUBKEY) and re-export the key",
                format_time(at)
            ),
        });
    }
    Ok(())
}

fn back_signature_ok(back: &Signature, sub: &PublicSubkey, primary: &PublicKey) -> bool {
    back.verify_primary_key_binding(sub, primary).is_ok()
}

/// The primary user ID (or the first one) with a valid self-certification
/// and no valid self-revocation.
fn primary_user_id(key: &SignedPublicKey, now: i64) -> Option<String> {
    let primary = &key.primary_key;
    let valid = key.details.users.iter().filter(|u| {
        let verified = |s: &&Signature| {
            matches(s, primary) && s.verify_certification(primary, Tag::UserId, &u.id).is_ok()
        };
        let certified = u
            .signatures
            .iter()
            .filter(|s| is_certification(s) && created(s) <= now)
            .any(|s| verified(&s));
        let revoked = u
            .signatures
            .iter()
            .filter(|s| s.typ() == Some(SignatureType::CertRevocation))
            .any(|s| verified(&s));
        certified && !revoked
    });
    let mut first = None;
    for user in valid {
        let name = String::from_utf8_lossy(user.id.id()).into_owned();
        if user.is_primary() {
            return Some(name);
        }
        first.get_or_insert(name);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_errors_are_clear() {
        let e = Keyring::parse(b"", "k.asc").unwrap_err();
        assert!(e.contains("no OpenPGP public key found"), "{e}");
        let e = Keyring::parse(b"just some text\n", "k.asc").unwrap_err();
        assert!(e.contains("no OpenPGP public key found"), "{e}");
        let e = Keyring::parse(
            b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxx\n-----END PGP PRIVATE KEY BLOCK-----\n",
            "k.asc",
        )
        .unwrap_err();
        assert!(e.contains("PRIVATE"), "{e}");
        let e = Keyring::parse(
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
            "k.asc",
        )
        .unwrap_err();
        assert!(e.starts_with("public key block 1:"), "{e}");
        let e = Keyring::parse(&[0xff, 0x00, 0x01], "k.gpg").unwrap_err();
        assert!(!e.is_empty());
        let e = Keyring::parse(&[0x41, 0xff, 0xfe], "k.gpg").unwrap_err();
        assert!(e.contains("neither an armored nor a binary"), "{e}");
    }

    #[test]
    fn armored_blocks_are_split_and_surrounding_text_ignored() {
        let text = format!(
            "# alice\n{PUBLIC_BEGIN}\nA\n{PUBLIC_END}\n\n# bob\n{PUBLIC_BEGIN}\nB\n{PUBLIC_END}\ntrailer\n{PUBLIC_BEGIN}\nunterminated"
        );
        let blocks: Vec<&str> = armored_blocks(&text).collect();
        assert_eq!(blocks.len(), 3);
        assert!(blocks[0].ends_with(PUBLIC_END) && blocks[0].contains("\nA\n"));
        assert!(blocks[1].contains("\nB\n"));
        assert!(blocks[2].ends_with("unterminated"));
    }

    #[test]
    fn malformed_signatures_are_bad_signatures() {
        let ring = Keyring {
            keys: Vec::new(),
            source: "k".into(),
        };
        for sig in [
            "-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n",
            "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n",
            "-----BEGIN PGP SIGNATURE-----\n\n\u{0}\u{1}",
        ] {
            let e = verify(sig.as_bytes(), b"data", &ring, 0).unwrap_err();
            assert_eq!(e.metric_label(), "bad_signature", "{sig}: {e}");
        }
    }
}
