//! SSH signatures (`gpg.format=ssh`, namespace `git`) and the OpenSSH
//! `allowed_signers` file that says which keys are trusted. Pure; the SSHSIG
//! format and the cryptography are `ssh-key`'s, the file format and policy
//! follow `ssh-keygen(1)` "ALLOWED SIGNERS".
//!
//! Each line: `principals [options] keytype base64-key [comment]`, with
//! options `namespaces="git,..."`, `valid-after="YYYYMMDD[HHMM[SS]][Z]"`,
//! `valid-before=...` (without `Z` the time is local, as in OpenSSH).
//! `cert-authority` lines are refused when the file is loaded: nodewave does
//! not verify SSH certificates, and silently ignoring a CA line would leave
//! every signer it was meant to trust rejected without saying why.
//!
//! One difference from git: git checks `valid-after`/`valid-before` at the
//! commit's (self-declared) committer time; nodewave checks them at the time
//! of deployment, like OpenPGP expiry, so a key past its `valid-before` no
//! longer deploys anything.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use ssh_key::{Algorithm, HashAlg, PublicKey, SshSig};

use super::{SignatureFormat, Signer, Unverified, format_time};

const FORMAT: SignatureFormat = SignatureFormat::Ssh;
/// The namespace git signs and verifies commits with.
pub const NAMESPACE: &str = "git";

/// One `allowed_signers` line.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    principals: String,
    /// Pattern list; `None` means any namespace.
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    key: PublicKey,
}

/// A parsed `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    entries: Vec<Entry>,
    source: String,
}

impl AllowedSigners {
    /// Parses the file's text; times without `Z` are read in `tz`. Every
    /// malformed line is an error naming its line number: a half-read trust
    /// file would reject signers for no visible reason.
    pub fn parse(text: &str, source: &str, tz: &TimeZone) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_line(line, n + 1, tz).map_err(|e| format!("line {}: {e}", n + 1))?;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err("no signer lines (expected `principals [options] keytype key`, e.g. `alice@example.com namespaces=\"git\" ssh-ed25519 AAAA...`)".to_owned());
        }
        Ok(Self {
            entries,
            source: source.to_owned(),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits off the next whitespace-separated token, honouring double quotes
/// (OpenSSH allows quoted principals and quoted option values).
fn next_token(s: &str) -> Result<(&str, &str), String> {
    let s = s.trim_start();
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => return Ok((&s[..i], &s[i..])),
            _ => {}
        }
    }
    if in_quotes {
        return Err("unterminated quote".to_owned());
    }
    Ok((s, ""))
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

fn parse_line(line: &str, n: usize, tz: &TimeZone) -> Result<Entry, String> {
    let (principals, rest) = next_token(line)?;
    let principals = unquote(principals).to_owned();
    if principals.is_empty() {
        return Err("empty principals".to_owned());
    }
    let (second, after) = next_token(rest)?;
    if second.is_empty() {
        return Err("missing the public key".to_owned());
    }
    let (options, key_text) = if second.parse::<Algorithm>().is_ok() {
        ("", rest.trim())
    } else {
        (second, after.trim())
    };
    let mut entry = Entry {
        line: n,
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: PublicKey::from_openssh(key_text).map_err(|e| {
            format!("cannot parse the public key ({e}); expected `keytype base64 [comment]`")
        })?,
    };
    for option in split_options(options)? {
        let (name, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v))),
            None => (option, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", _) => {
                return Err("cert-authority (SSH certificate) lines are not supported; list each signer's public key instead".to_owned());
            }
            ("namespaces", Some(v)) => entry.namespaces = Some(v.to_owned()),
            ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(v, tz)?),
            ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(v, tz)?),
            (other, _) => {
                return Err(format!(
                    "unsupported option {other:?} (known: namespaces, valid-after, valid-before)"
                ));
            }
        }
    }
    if matches!(entry.key.algorithm(), Algorithm::Dsa) {
        return Err("DSA keys are not supported (OpenSSH disabled them); use ed25519".to_owned());
    }
    Ok(entry)
}

/// Comma-separated options, commas inside quotes kept.
fn split_options(options: &str) -> Result<Vec<&str>, String> {
    if options.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    for (i, c) in options.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                out.push(&options[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&options[start..]);
    if out.iter().any(|o| o.is_empty()) {
        return Err(format!("malformed options {options:?}"));
    }
    Ok(out)
}

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, `Z` suffix for UTC.
fn parse_time(value: &str, tz: &TimeZone) -> Result<i64, String> {
    let (digits, utc) = match value.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (value, false),
    };
    let bad = || format!("invalid time {value:?} (expected YYYYMMDD[HHMM[SS]][Z])");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i16, String> {
        digits
            .get(range)
            .map_or(Ok(0), str::parse::<i16>)
            .map_err(|_| bad())
    };
    let year = num(0..4)?;
    let month = i8::try_from(num(4..6)?).map_err(|_| bad())?;
    let day = i8::try_from(num(6..8)?).map_err(|_| bad())?;
    let hour = i8::try_from(num(8..10)?).map_err(|_| bad())?;
    let minute = i8::try_from(num(10..12)?).map_err(|_| bad())?;
    let second = i8::try_from(num(12..14)?).map_err(|_| bad())?;
    let civil = DateTime::new(year, month, day, hour, minute, second, 0).map_err(|_| bad())?;
    let zone = if utc { TimeZone::UTC } else { tz.clone() };
    civil
        .to_zoned(zone)
        .map(|z| z.timestamp().as_second())
        .map_err(|_| bad())
}

/// OpenSSH `match_pattern`: `*` any run, `?` any one character.
fn match_pattern(s: &[u8], pattern: &[u8]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_pattern(&s[i..], rest)),
        Some((b'?', rest)) => !s.is_empty() && match_pattern(&s[1..], rest),
        Some((c, rest)) => s.first() == Some(c) && match_pattern(&s[1..], rest),
    }
}

/// OpenSSH `match_pattern_list`: comma-separated patterns; a matching
/// `!pattern` vetoes the whole list.
fn match_pattern_list(s: &str, list: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',').map(str::trim) {
        if let Some(negated) = pattern.strip_prefix('!') {
            if match_pattern(s.as_bytes(), negated.as_bytes()) {
                return false;
            }
        } else if match_pattern(s.as_bytes(), pattern.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn fingerprint(key: &ssh_key::public::KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The signing key's fingerprint from an armored signature, for messages.
pub fn key_of(armored: &[u8]) -> Option<String> {
    SshSig::from_pem(armored)
        .ok()
        .map(|s| fingerprint(s.public_key()))
}

/// Verifies an armored SSH signature over `payload` against `signers` at
/// `now` (seconds since the epoch).
pub fn verify(
    armored: &[u8],
    payload: &[u8],
    signers: &AllowedSigners,
    now: i64,
) -> Result<Signer, Unverified> {
    let bad = |detail: String| Unverified::BadSignature {
        format: FORMAT,
        detail,
    };
    let sig = SshSig::from_pem(armored)
        .map_err(|e| bad(format!("cannot parse the SSH signature: {e}")))?;
    if sig.namespace() != NAMESPACE {
        return Err(bad(format!(
            "it was made for namespace {:?}, not {NAMESPACE:?} (git signs commits with namespace git)",
            sig.namespace()
        )));
    }
    if sig.algorithm() == (Algorithm::Rsa { hash: None }) {
        return Err(bad(
            "it is an ssh-rsa (SHA-1) signature; sign with rsa-sha2-512 (ssh-keygen's default) or an ed25519 key"
                .to_owned(),
        ));
    }
    let key = fingerprint(sig.public_key());
    let listed: Vec<&Entry> = signers
        .entries
        .iter()
        .filter(|e| e.key.key_data() == sig.public_key())
        .collect();
    if listed.is_empty() {
        return Err(Unverified::UnknownKey {
            format: FORMAT,
            key,
            hint: format!(
                "; it is not in the allowed signers file {} ({} line(s))",
                signers.source,
                signers.len()
            ),
        });
    }
    let for_git: Vec<&Entry> = listed
        .into_iter()
        .filter(|e| {
            e.namespaces
                .as_deref()
                .is_none_or(|ns| match_pattern_list(NAMESPACE, ns))
        })
        .collect();
    let Some(first) = for_git.first() else {
        return Err(Unverified::UnknownKey {
            format: FORMAT,
            key,
            hint: format!(
                "; {} lists it only for other namespaces than \"git\" (add git to namespaces=)",
                signers.source
            ),
        });
    };
    first
        .key
        .verify(NAMESPACE, payload, &sig)
        .map_err(|e| bad(format!(
            "the signature by {key} does not match the commit's content ({e}): the commit was changed after it was signed, or the signature was copied from another commit"
        )))?;
    let in_window = |e: &&&Entry| {
        e.valid_after.is_none_or(|t| now >= t) && e.valid_before.is_none_or(|t| now < t)
    };
    let Some(entry) = for_git.iter().find(in_window) else {
        let e = first;
        let detail = match (e.valid_after, e.valid_before) {
            (Some(after), _) if now < after => format!(
                "is not valid before {} (line {} of {})",
                format_time(after),
                e.line,
                signers.source
            ),
            (_, Some(before)) => format!(
                "expired at {} (valid-before on line {} of {})",
                format_time(before),
                e.line,
                signers.source
            ),
            _ => "is outside its validity period".to_owned(),
        };
        return Err(Unverified::ExpiredKey {
            format: FORMAT,
            key,
            detail,
        });
    };
    Ok(Signer {
        format: FORMAT,
        fingerprint: key,
        identity: entry.principals.clone(),
        subkey: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn parse(text: &str) -> Result<AllowedSigners, String> {
        AllowedSigners::parse(text, "allowed_signers", &TimeZone::UTC)
    }

    #[test]
    fn lines_with_and_without_options() {
        let s = parse(&format!(
            "# team\n\nalice@example.com {KEY} alice's laptop\n\"bob@example.com,carol@example.com\" namespaces=\"git,file\",valid-after=\"20240101\",valid-before=\"202501011230Z\" {KEY}\n"
        ))
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.entries[0].principals, "alice@example.com");
        assert_eq!(s.entries[0].line, 3);
        assert!(s.entries[0].namespaces.is_none());
        let bob = &s.entries[1];
        assert_eq!(bob.principals, "bob@example.com,carol@example.com");
        assert_eq!(bob.namespaces.as_deref(), Some("git,file"));
        assert_eq!(bob.valid_after, Some(1_704_067_200));
        assert_eq!(bob.valid_before, Some(1_735_734_600));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        for (text, needle) in [
            (format!("a@b cert-authority {KEY}"), "cert-authority"),
            (format!("a@b nosuch=\"x\" {KEY}"), "unsupported option"),
            (format!("a@b valid-after=\"2024\" {KEY}"), "invalid time"),
            (
                format!("a@b valid-after=\"20241301\" {KEY}"),
                "invalid time",
            ),
            (
                "a@b ssh-ed25519 notbase64!".to_owned(),
                "cannot parse the public key",
            ),
            ("a@b".to_owned(), "missing the public key"),
            (format!("\"a@b {KEY}"), "unterminated quote"),
            (
                format!("a@b namespaces=\"git\",,x {KEY}"),
                "malformed options",
            ),
        ] {
            let e = parse(&format!("# header\n{text}\n")).unwrap_err();
            assert!(e.starts_with("line 2: "), "{text}: {e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(
            parse("# only comments\n")
                .unwrap_err()
                .contains("no signer lines")
        );
    }

    #[test]
    fn times_without_z_are_local() {
        let tz = TimeZone::fixed(jiff::tz::offset(2));
        assert_eq!(parse_time("20240101", &tz), Ok(1_704_067_200 - 7200));
        assert_eq!(parse_time("20240101Z", &tz), Ok(1_704_067_200));
        assert_eq!(
            parse_time("20240101000001", &TimeZone::UTC),
            Ok(1_704_067_201)
        );
        assert!(parse_time("2024010100", &TimeZone::UTC).is_err());
        assert!(parse_time("+2024010", &TimeZone::UTC).is_err());
    }

    #[test]
    fn pattern_lists_follow_openssh() {
        assert!(match_pattern_list("git", "git"));
        assert!(match_pattern_list("git", "file,git"));
        assert!(match_pattern_list("git", "*"));
        assert!(match_pattern_list("git", "g?t"));
        assert!(!match_pattern_list("git", "file"));
        assert!(!match_pattern_list("git", "*,!git"));
        assert!(!match_pattern_list("git", "gi"));
        assert!(match_pattern(b"", b"*"));
        assert!(!match_pattern(b"", b"?"));
    }

    #[test]
    fn malformed_signatures_are_bad_signatures() {
        let s = parse(&format!("a@b {KEY}\n")).unwrap();
        for sig in [
            "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n",
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
        ] {
            let e = verify(sig.as_bytes(), b"data", &s, 0).unwrap_err();
            assert_eq!(e.metric_label(), "bad_signature", "{e}");
        }
    }
}
