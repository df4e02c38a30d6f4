//! Remote URL parsing and redaction. Property: a password or token embedded in a
//! URL's userinfo never appears in any output meant for people (`redact_url`,
//! `redact_text` on text quoting the URL, `RemoteUrl::display`, parse errors);
//! only `libgit2_url`, which is handed to libgit2, carries it. Arbitrary strings
//! never panic, and redaction is idempotent.
//!
//! Secrets are drawn from the characters RFC 3986 allows in userinfo (unreserved,
//! `%`, sub-delims, `:`) plus `@`; `/`, `?`, `#` and whitespace end a URL's
//! authority and must be percent-encoded in a password.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nodewave::source::url::{RemoteUrl, redact_text, redact_url};

const SECRET_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:@";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a str,
    scheme: u8,
    user: Option<&'a str>,
    secret: Vec<u8>,
    host: &'a str,
    port: Option<u16>,
    path: &'a str,
    before: &'a str,
    after: &'a str,
}

/// Occurrences of `needle` in `hay`, overlapping ones included.
fn occurrences(hay: &str, needle: &str) -> usize {
    let (mut count, mut from) = (0, 0);
    while let Some(at) = hay[from..].find(needle) {
        count += 1;
        from += at + needle.chars().next().map_or(1, char::len_utf8);
    }
    count
}

fuzz_target!(|input: Input<'_>| {
    // Arbitrary text: no panic, idempotent.
    let once = redact_url(input.raw);
    assert_eq!(redact_url(&once), once);
    let once = redact_text(input.raw);
    assert_eq!(redact_text(&once), once);
    let _ = RemoteUrl::parse(input.raw);

    // A URL with a secret in its userinfo.
    let secret: String =
        std::iter::once("S3cr")
            .map(str::to_string)
            .chain(input.secret.iter().map(|b| {
                char::from(SECRET_CHARS[usize::from(*b) % SECRET_CHARS.len()]).to_string()
            }))
            .collect();
    if secret.len() < 8 {
        return;
    }
    let scheme = ["https", "http", "ssh", "git+ssh", "HTTPS"][usize::from(input.scheme) % 5];
    let clean = |s: &str| !s.contains(['/', '?', '#', '@']) && !s.chars().any(char::is_whitespace);
    let user = input.user.unwrap_or("");
    if !clean(input.host) || !clean(user) || user.contains(':') {
        return;
    }
    let port = input.port.map(|p| format!(":{p}")).unwrap_or_default();
    let userinfo = if input.user.is_some() {
        format!("{user}:{secret}")
    } else {
        secret.clone()
    };
    let path = input.path.trim_start_matches('/');
    let url = format!("{scheme}://{userinfo}@{}{port}/{path}", input.host);
    // The property is about the secret: it must occur in the URL exactly once,
    // in its userinfo (not also in the path, nor across the path's end).
    if occurrences(&url, &secret) != 1 {
        return;
    }

    let redacted = redact_url(&url);
    assert!(
        !redacted.contains(&secret),
        "redact_url({url:?}) = {redacted:?}"
    );
    // Text quoting the URL the way libgit2 messages do.
    for text in [
        format!("{} {url} {}", input.before, input.after),
        format!("{}'{url}'{}", input.before, input.after),
        format!("{}\"{url}\"", input.before),
        format!("{}{url}", input.before),
    ] {
        // Also not in the text around the URL, nor across its edges.
        if occurrences(&text, &secret) != 1 {
            continue;
        }
        let r = redact_text(&text);
        assert!(!r.contains(&secret), "redact_text({text:?}) = {r:?}");
    }
    match RemoteUrl::parse(&url) {
        Ok(parsed) => {
            assert!(!parsed.display.contains(&secret), "{parsed:?}");
            // With a user name in front, the secret is the password; alone, it is
            // a token in the user-name position (which libgit2 needs as given).
            if input.user.is_some() {
                assert!(parsed.has_password, "{url:?}");
                assert!(!parsed.user.as_deref().unwrap_or_default().contains(&secret));
            }
        }
        Err(e) => assert!(!e.contains(&secret), "{url:?}: {e}"),
    }
});
