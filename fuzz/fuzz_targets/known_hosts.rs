//! known_hosts parsing and host matching: any file text and any presented key
//! never panic; a line written by `format_line` for the host always trusts the
//! key it was written for (unless a line revokes it); `*` matches every host and
//! `!host` overrides it.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nodewave::source::known_hosts::{HostKeyStatus, KnownHosts, format_line, lookup_name};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    text: &'a str,
    host: &'a str,
    port: u16,
    key_type: &'a str,
    key: &'a [u8],
}

/// A host name and key type as an SSH client would present them.
fn plausible(host: &str, key_type: &str) -> bool {
    let name_ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
    };
    name_ok(host, &['.']) && name_ok(key_type, &['@', '.'])
}

fuzz_target!(|input: Input<'_>| {
    let hosts = KnownHosts::parse(input.text);
    let _ = hosts.check(input.host, input.port, input.key_type, input.key);
    assert!(hosts.len() + hosts.skipped_lines.len() <= input.text.lines().count());

    if !plausible(input.host, input.key_type) || input.key.is_empty() {
        return;
    }
    let line = format_line(input.host, input.port, input.key_type, input.key);
    let with_line = KnownHosts::parse(&format!("{}\n{line}", input.text));
    let status = with_line.check(input.host, input.port, input.key_type, input.key);
    assert!(
        matches!(
            status,
            HostKeyStatus::Trusted | HostKeyStatus::Revoked { .. }
        ),
        "{line:?}: {status:?}"
    );

    let b64 = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let wildcard = KnownHosts::parse(&format!("* {} {b64}\n", input.key_type));
    assert_eq!(
        wildcard.check(input.host, input.port, input.key_type, input.key),
        HostKeyStatus::Trusted
    );
    let negated = KnownHosts::parse(&format!(
        "!{},* {} {b64}\n",
        lookup_name(input.host, input.port),
        input.key_type
    ));
    assert_eq!(
        negated.check(input.host, input.port, input.key_type, input.key),
        HostKeyStatus::Unknown
    );
});
