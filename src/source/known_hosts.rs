//! OpenSSH `known_hosts` parsing and host-key matching (pure).
//!
//! libgit2 only checks `~/.ssh/known_hosts` of the process user, which in a
//! container is usually absent; nodewave checks its own file so that the
//! trust decision is explicit and configured, as Argo CD and Flux do.
//!
//! Supported: `host[,host...] key-type base64` lines, `[host]:port` names,
//! `*`/`?` wildcards and `!negation`, hashed `|1|salt|hash` names
//! (HMAC-SHA1, as written by `ssh-keyscan -H`), `@revoked` markers and
//! comments. `@cert-authority` lines are ignored: certificate host keys are not
//! supported by libgit2's ssh transport.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest as _, Sha256};

/// One usable line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// 1-based line number, for messages.
    line: usize,
    names: Names,
    key_type: String,
    key: Vec<u8>,
    revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    /// Comma-separated patterns, possibly negated with `!`.
    Patterns(Vec<String>),
    /// `|1|base64(salt)|base64(hmac_sha1(salt, name))`.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownHosts {
    entries: Vec<Entry>,
    /// Lines that could not be parsed (1-based), reported in logs only: one
    /// bad line must not make every other host unreachable.
    pub skipped_lines: Vec<usize>,
}

/// Outcome of looking up a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// A line for this host has exactly this key.
    Trusted,
    /// No line names this host.
    Unknown,
    /// Lines for this host exist with keys of other types only (the server
    /// offered a type that is not listed). Not trust-on-first-use material:
    /// the host is known, so a new key type is treated like a changed key.
    OtherKeyTypes { known_types: Vec<String> },
    /// A line for this host has a different key of the same type.
    Changed { line: usize },
    /// The key is listed as `@revoked`.
    Revoked { line: usize },
}

/// The name a host is looked up by: `host` for port 22, `[host]:port`
/// otherwise (OpenSSH convention).
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// OpenSSH-style fingerprint, `SHA256:<base64 without padding>`.
pub fn fingerprint(key: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(key)))
}

/// A line to append for a newly accepted key (plain, not hashed, so that an
/// operator can read what was accepted).
pub fn format_line(host: &str, port: u16, key_type: &str, key: &[u8]) -> String {
    let mut line = String::new();
    let _ = writeln!(
        line,
        "{} {} {}",
        lookup_name(host, port),
        key_type,
        STANDARD.encode(key)
    );
    line
}

impl KnownHosts {
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line, line_no) {
                LineParse::Entry(e) => out.entries.push(e),
                LineParse::Ignored => {}
                LineParse::Invalid => out.skipped_lines.push(line_no),
            }
        }
        out
    }

    /// Looks up the key a server presented for `host`:`port`.
    pub fn check(&self, host: &str, port: u16, key_type: &str, key: &[u8]) -> HostKeyStatus {
        let name = lookup_name(host, port);
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.names.matches(&name))
            .collect();
        // Revocation wins over everything, like OpenSSH.
        if let Some(e) = matching.iter().find(|e| e.revoked && e.key == key) {
            return HostKeyStatus::Revoked { line: e.line };
        }
        let valid: Vec<&&Entry> = matching.iter().filter(|e| !e.revoked).collect();
        if valid.iter().any(|e| e.key == key) {
            return HostKeyStatus::Trusted;
        }
        if let Some(e) = valid.iter().find(|e| e.key_type == key_type) {
            return HostKeyStatus::Changed { line: e.line };
        }
        if valid.is_empty() {
            return HostKeyStatus::Unknown;
        }
        let mut known_types: Vec<String> = valid.iter().map(|e| e.key_type.clone()).collect();
        known_types.sort();
        known_types.dedup();
        HostKeyStatus::OtherKeyTypes { known_types }
    }

    /// Number of usable lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

enum LineParse {
    Entry(Entry),
    Ignored,
    Invalid,
}

fn parse_line(line: &str, line_no: usize) -> LineParse {
    let mut fields = line.split_whitespace();
    let Some(mut first) = fields.next() else {
        return LineParse::Ignored;
    };
    let mut revoked = false;
    if first.starts_with('@') {
        match first {
            "@revoked" => revoked = true,
            // Certificate authorities and unknown markers: not applicable.
            _ => return LineParse::Ignored,
        }
        let Some(next) = fields.next() else {
            return LineParse::Invalid;
        };
        first = next;
    }
    let (Some(key_type), Some(key_b64)) = (fields.next(), fields.next()) else {
        return LineParse::Invalid;
    };
    let Ok(key) = STANDARD.decode(key_b64) else {
        return LineParse::Invalid;
    };
    let names = if let Some(hashed) = first.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return LineParse::Invalid;
        };
        match (STANDARD.decode(salt), STANDARD.decode(hash)) {
            (Ok(salt), Ok(hash)) if hash.len() == 20 => Names::Hashed { salt, hash },
            _ => return LineParse::Invalid,
        }
    } else if first.starts_with('|') {
        // Unknown hash scheme.
        return LineParse::Invalid;
    } else {
        Names::Patterns(
            first
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_ascii_lowercase)
                .collect(),
        )
    };
    LineParse::Entry(Entry {
        line: line_no,
        names,
        key_type: key_type.to_owned(),
        key,
        revoked,
    })
}

impl Names {
    fn matches(&self, name: &str) -> bool {
        match self {
            Names::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
            Names::Patterns(patterns) => {
                let name = name.to_ascii_lowercase();
                let mut positive = false;
                for p in patterns {
                    if let Some(negated) = p.strip_prefix('!') {
                        if glob(negated, &name) {
                            return false;
                        }
                    } else if glob(p, &name) {
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

/// OpenSSH pattern matching: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake SSH public key blob in wire format (string type, then bytes).
    fn blob(key_type: &str, seed: u8) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(key_type.len()).unwrap().to_be_bytes());
        out.extend_from_slice(key_type.as_bytes());
        out.extend_from_slice(&32u32.to_be_bytes());
        out.extend((0..32).map(|i| seed.wrapping_add(i)));
        out
    }

    fn line(names: &str, key_type: &str, seed: u8) -> String {
        format!(
            "{names} {key_type} {}",
            STANDARD.encode(blob(key_type, seed))
        )
    }

    fn hashed_name(name: &str, salt: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
        let tag = ring::hmac::sign(&key, name.as_bytes());
        format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(tag.as_ref())
        )
    }

    const ED: &str = "ssh-ed25519";
    const RSA: &str = "ssh-rsa";

    #[test]
    fn plain_entry_matches() {
        let kh = KnownHosts::parse(&line("github.com", ED, 1));
        assert_eq!(kh.len(), 1);
        assert_eq!(
            kh.check("github.com", 22, ED, &blob(ED, 1)),
            HostKeyStatus::Trusted
        );
        assert_eq!(
            kh.check("GitHub.com", 22, ED, &blob(ED, 1)),
            HostKeyStatus::Trusted
        );
        assert_eq!(
            kh.check("gitlab.com", 22, ED, &blob(ED, 1)),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn changed_key_is_detected() {
        let text = format!("# comment\n\n{}\n", line("github.com", ED, 1));
        let kh = KnownHosts::parse(&text);
        assert_eq!(
            kh.check("github.com", 22, ED, &blob(ED, 2)),
            HostKeyStatus::Changed { line: 3 }
        );
    }

    #[test]
    fn other_key_type_only() {
        let kh = KnownHosts::parse(&line("github.com", RSA, 1));
        assert_eq!(
            kh.check("github.com", 22, ED, &blob(ED, 1)),
            HostKeyStatus::OtherKeyTypes {
                known_types: vec![RSA.to_owned()]
            }
        );
    }

    #[test]
    fn several_keys_for_one_host() {
        let text = format!("{}\n{}\n", line("h", RSA, 1), line("h", ED, 2));
        let kh = KnownHosts::parse(&text);
        assert_eq!(kh.check("h", 22, ED, &blob(ED, 2)), HostKeyStatus::Trusted);
        assert_eq!(
            kh.check("h", 22, RSA, &blob(RSA, 1)),
            HostKeyStatus::Trusted
        );
    }

    #[test]
    fn comma_separated_hosts_and_ports() {
        let kh = KnownHosts::parse(&line(
            "git.example.com,10.0.0.5,[git.example.com]:2222",
            ED,
            7,
        ));
        let key = blob(ED, 7);
        assert_eq!(kh.check("10.0.0.5", 22, ED, &key), HostKeyStatus::Trusted);
        assert_eq!(
            kh.check("git.example.com", 2222, ED, &key),
            HostKeyStatus::Trusted
        );
        // Port 2200 is not listed: `[host]:2222` must not match another port.
        assert_eq!(
            kh.check("git.example.com", 2200, ED, &key),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn hashed_entries() {
        let salt = b"0123456789abcdefghij";
        let text = format!(
            "{}\n{}\n",
            line(&hashed_name("github.com", salt), ED, 3),
            line(&hashed_name("[git.example.com]:2222", salt), ED, 4)
        );
        let kh = KnownHosts::parse(&text);
        assert!(kh.skipped_lines.is_empty());
        assert_eq!(
            kh.check("github.com", 22, ED, &blob(ED, 3)),
            HostKeyStatus::Trusted
        );
        assert_eq!(
            kh.check("github.com", 22, ED, &blob(ED, 9)),
            HostKeyStatus::Changed { line: 1 }
        );
        assert_eq!(
            kh.check("git.example.com", 2222, ED, &blob(ED, 4)),
            HostKeyStatus::Trusted
        );
        assert_eq!(
            kh.check("gitlab.com", 22, ED, &blob(ED, 3)),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn real_openssh_hashed_lines() {
        // Produced by `ssh-keygen -H` for "localhost" and "[git.example.com]:2222";
        // checks our HMAC input format against OpenSSH's, not only against
        // our own encoder.
        let kh = KnownHosts::parse(concat!(
            "|1|vhSIPmEwflj1a4L5PBINNIHPeyE=|m5UVbbK/z79SPqJBeUiO280bHp0= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINOqg/gggYBiYHUeoisA5x2/Ha0ioDThuj035dP6ZGk7\n",
            "|1|cG8RkAggTKtWzbFNCV0HuQXA56M=|YitPNGuuZWXb0jdUDMaqN3VbKRM= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINOqg/gggYBiYHUeoisA5x2/Ha0ioDThuj035dP6ZGk7\n",
        ));
        assert_eq!(kh.len(), 2);
        let key = STANDARD
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAINOqg/gggYBiYHUeoisA5x2/Ha0ioDThuj035dP6ZGk7")
            .unwrap();
        assert_eq!(kh.check("localhost", 22, ED, &key), HostKeyStatus::Trusted);
        assert_eq!(
            kh.check("git.example.com", 2222, ED, &key),
            HostKeyStatus::Trusted
        );
        assert_eq!(
            kh.check("git.example.com", 22, ED, &key),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn wildcards_and_negation() {
        let kh = KnownHosts::parse(&line("*.example.com,!evil.example.com", ED, 5));
        let key = blob(ED, 5);
        assert_eq!(
            kh.check("git.example.com", 22, ED, &key),
            HostKeyStatus::Trusted
        );
        assert_eq!(
            kh.check("evil.example.com", 22, ED, &key),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            kh.check("example.org", 22, ED, &key),
            HostKeyStatus::Unknown
        );
        assert!(glob("git?.example.com", "git1.example.com"));
        assert!(!glob("git?.example.com", "git12.example.com"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn revoked_and_markers() {
        let text = format!(
            "@revoked {}\n@cert-authority *.example.com {}\n{}\n",
            line("h", ED, 1),
            &line("", ED, 2)[1..],
            line("h", ED, 1)
        );
        let kh = KnownHosts::parse(&text);
        assert_eq!(
            kh.check("h", 22, ED, &blob(ED, 1)),
            HostKeyStatus::Revoked { line: 1 }
        );
    }

    #[test]
    fn bad_lines_are_skipped_not_fatal() {
        let text = format!(
            "garbage\nhost ssh-ed25519 !!!notbase64\n|2|x|y ssh-ed25519 AAAA\n{}\n",
            line("h", ED, 1)
        );
        let kh = KnownHosts::parse(&text);
        assert_eq!(kh.skipped_lines, vec![1, 2, 3]);
        assert_eq!(kh.check("h", 22, ED, &blob(ED, 1)), HostKeyStatus::Trusted);
    }

    #[test]
    fn format_and_fingerprint() {
        let key = blob(ED, 1);
        let l = format_line("h", 2222, ED, &key);
        assert!(l.starts_with("[h]:2222 ssh-ed25519 "));
        assert!(l.ends_with('\n'));
        let kh = KnownHosts::parse(&l);
        assert_eq!(kh.check("h", 2222, ED, &key), HostKeyStatus::Trusted);
        let fp = fingerprint(&key);
        assert!(fp.starts_with("SHA256:"));
        assert!(!fp.ends_with('='));
    }
}
