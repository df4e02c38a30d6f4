//! Webhook authentication and payload parsing. Properties: arbitrary headers and
//! bodies never panic; a body signed with the secret is never refused for its
//! signature, and any other body or signature is; an empty secret authenticates
//! nothing; GitLab tokens authenticate only when equal to the secret.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use nodewave::source::GitRef;
use nodewave::source::webhook::{WebhookError, authenticate, is_for};
use sha2::Sha256;

const NAMES: [&str; 6] = [
    "x-github-event",
    "x-hub-signature-256",
    "x-gitlab-event",
    "x-gitlab-token",
    "x-nodewave-signature",
    "content-type",
];

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Raw headers: (index into NAMES, value bytes).
    raw_headers: Vec<(u8, &'a [u8])>,
    body: &'a [u8],
    secret: &'a [u8],
    /// 0: GitHub, 1: generic, 2: GitLab.
    provider: u8,
    event: Option<&'a str>,
    /// Flip one body byte after signing.
    tamper: Option<(u16, u8)>,
    branch: &'a str,
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn is_signature_error(e: &WebhookError) -> bool {
    matches!(
        e,
        WebhookError::BadSignature | WebhookError::MissingSignature
    )
}

fuzz_target!(|input: Input<'_>| {
    let reference = GitRef::Branch(input.branch.to_string());

    // Arbitrary headers: no panic, whatever they hold.
    let mut headers = HeaderMap::new();
    for (name, value) in input.raw_headers.iter().take(8) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(
                HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]),
                v,
            );
        }
    }
    if let Ok(event) = authenticate(&headers, input.body, input.secret) {
        let _ = is_for(&event, &reference);
        assert!(
            !input.secret.is_empty(),
            "an empty secret authenticated {event:?}"
        );
    }

    // A delivery signed the way the provider does it.
    let mut body = input.body.to_vec();
    let signature = sign(input.secret, &body);
    let mut tampered = false;
    if let Some((at, xor)) = input.tamper {
        if !body.is_empty() && xor != 0 {
            let i = usize::from(at) % body.len();
            body[i] ^= xor;
            tampered = true;
        }
    }
    let mut headers = HeaderMap::new();
    let provider = input.provider % 3;
    let credential = if provider == 2 {
        input.secret.to_vec()
    } else {
        signature.into_bytes()
    };
    let Ok(credential) = HeaderValue::from_bytes(&credential) else {
        return;
    };
    // HeaderValue trims nothing, but authenticate trims surrounding whitespace.
    let trimmed_credential = credential.as_bytes().trim_ascii() != credential.as_bytes();
    let (cred_name, event_name) = match provider {
        0 => ("x-hub-signature-256", Some("x-github-event")),
        1 => ("x-nodewave-signature", None),
        _ => ("x-gitlab-token", Some("x-gitlab-event")),
    };
    headers.insert(HeaderName::from_static(cred_name), credential);
    if let (Some(name), Some(event)) = (event_name, input.event) {
        if let Ok(v) = HeaderValue::from_str(event) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let result = authenticate(&headers, &body, input.secret);
    if input.secret.is_empty() {
        assert!(result.is_err(), "empty secret: {result:?}");
        return;
    }
    let gitlab_changed = provider == 2 && trimmed_credential;
    match &result {
        Ok(event) => {
            assert!(
                !(tampered && provider != 2),
                "a tampered body authenticated"
            );
            let _ = is_for(event, &reference);
        }
        Err(e) if is_signature_error(e) => {
            assert!(
                (tampered && provider != 2) || gitlab_changed,
                "a correctly signed delivery was refused: {e}"
            );
        }
        Err(_) => {}
    }
});
