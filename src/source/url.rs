//! Repository URL classification and redaction.
//!
//! libgit2 understands every form we accept, so the URL handed to it is the
//! configured one (local paths made absolute). We still parse it ourselves
//! because host-key checking needs the host and port, credential lookup needs
//! to know the transport, and every message must be free of `user:pass@`.

use std::path::Path;

/// How nodewave talks to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Https,
    Http,
    Ssh,
    /// `git://` (git daemon): anonymous and read-only, never any credentials.
    Git,
    /// `file://` URLs and plain paths: no network, no credentials.
    Local,
}

/// A parsed remote URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub transport: Transport,
    /// Host name (without brackets for IPv6); `None` for local remotes.
    pub host: Option<String>,
    /// Explicit port, if the URL has one.
    pub port: Option<u16>,
    /// User name from the URL (`git` in `git@github.com:org/repo.git`).
    pub user: Option<String>,
    /// Whether the URL embeds a password (`https://user:pass@host/...`).
    pub has_password: bool,
    /// What libgit2 is given.
    pub libgit2_url: String,
    /// The URL without userinfo, for messages and logs.
    pub display: String,
}

impl RemoteUrl {
    /// Parses `https://`, `http://`, `ssh://`, `git://`, scp-style
    /// `user@host:path`, `file://` and plain local paths.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("the URL is empty".to_owned());
        }
        let display = redact_url(url);
        if let Some((scheme, rest)) = url.split_once("://") {
            let transport = match scheme.to_ascii_lowercase().as_str() {
                "https" => Transport::Https,
                "http" => Transport::Http,
                "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
                "git" => Transport::Git,
                "file" => {
                    return Ok(Self {
                        transport: Transport::Local,
                        host: None,
                        port: None,
                        user: None,
                        has_password: false,
                        libgit2_url: url.to_owned(),
                        display,
                    });
                }
                other => {
                    return Err(format!(
                        "unsupported scheme {other}:// (use https://, http://, ssh://, git://, file:// or user@host:path)"
                    ));
                }
            };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let (userinfo, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport)?;
            let (user, has_password) = match userinfo {
                Some(u) => match u.split_once(':') {
                    Some((name, _)) => (Some(name.to_owned()), true),
                    None => (Some(u.to_owned()), false),
                },
                None => (None, false),
            };
            // libgit2's ssh transport only understands ssh://.
            let libgit2_url = if transport == Transport::Ssh && scheme != "ssh" {
                format!("ssh://{rest}")
            } else {
                url.to_owned()
            };
            return Ok(Self {
                transport,
                host: Some(host),
                port,
                user: user.filter(|u| !u.is_empty()),
                has_password,
                libgit2_url,
                display,
            });
        }
        if let Some((user_host, path)) = scp_parts(url) {
            let (user, host) = match user_host.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_owned()), h),
                None => (None, user_host),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || path.is_empty() {
                return Err("scp-style URLs look like git@host:org/repo.git".to_owned());
            }
            return Ok(Self {
                transport: Transport::Ssh,
                host: Some(host.to_owned()),
                port: None,
                user: user.filter(|u| !u.is_empty()),
                has_password: false,
                libgit2_url: url.to_owned(),
                display,
            });
        }
        // A plain path. Made absolute so that a later change of the working
        // directory cannot point the cache at another repository.
        let absolute = std::path::absolute(Path::new(url))
            .map_err(|e| format!("cannot make {url} an absolute path: {e}"))?;
        let libgit2_url = absolute.to_string_lossy().into_owned();
        Ok(Self {
            transport: Transport::Local,
            host: None,
            port: None,
            user: None,
            has_password: false,
            display: libgit2_url.clone(),
            libgit2_url,
        })
    }

    /// The port used for SSH host-key lookup (22 unless given).
    pub fn ssh_port(&self) -> u16 {
        self.port.unwrap_or(22)
    }
}

/// `user@host:path` (no `://`, a `:` before any `/`, and not a Windows drive
/// letter such as `C:\repo`).
fn scp_parts(url: &str) -> Option<(&str, &str)> {
    let colon = url.find(':')?;
    if url[..colon].contains('/') {
        return None;
    }
    if colon == 1 && url.as_bytes()[0].is_ascii_alphabetic() {
        return None;
    }
    // `[host:with:colons]:path`
    if url.starts_with('[') || url.contains("@[") {
        let close = url.find("]:")?;
        return Some((&url[..=close], &url[close + 2..]));
    }
    Some((&url[..colon], &url[colon + 1..]))
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unterminated [IPv6] host".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    let port = match port {
        Some("") | None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?}"))?,
        ),
    };
    Ok((host.to_owned(), port))
}

/// Removes userinfo (`user:pass@`, `token@`) from a URL so it can be logged.
/// scp-style `git@host:path` is left alone: it cannot carry a password.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!("{}{}", &url[..authority_start], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Redacts userinfo of every URL inside free text (libgit2 error messages can
/// quote the URL they were given).
///
/// The authority ends only where a URL's authority can end (`/`, `?`, `#`) or at
/// whitespace, not at quotes: quotes are legal in a password (RFC 3986
/// sub-delims), and stopping there leaked the rest of it (found by the
/// `url_redaction` fuzz target). A closing quote after the host stays in the
/// text, since everything up to the last `@` is what gets removed.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let authority_start = pos + 3;
        out.push_str(&rest[..authority_start]);
        let tail = &rest[authority_start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#'))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                // A trailing `:` before `//` is the next URL's `://`: leave it to
                // the next round.
                let next_url = authority.ends_with(':') && tail[end..].starts_with("//");
                let keep_end = if next_url { end - 1 } else { end };
                out.push_str(&authority[(at + 1).min(keep_end)..keep_end]);
                rest = &tail[keep_end..];
            }
            // Nothing to remove: scan on from just after `://`, since the `/` that
            // ended this authority may begin the `//` of another URL's `://`
            // (`x://ssh://u:p@h`, found by the fuzz target).
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo() {
        assert_eq!(
            redact_url("https://user:s3cret@github.com/org/repo.git"),
            "https://github.com/org/repo.git"
        );
        assert_eq!(
            redact_url("https://ghp_token@github.com/org/repo"),
            "https://github.com/org/repo"
        );
        assert_eq!(
            redact_url("ssh://git@example.com:2222/repo.git"),
            "ssh://example.com:2222/repo.git"
        );
        assert_eq!(
            redact_url("https://github.com/org/re@po"),
            "https://github.com/org/re@po"
        );
        assert_eq!(
            redact_url("git@github.com:org/repo.git"),
            "git@github.com:org/repo.git"
        );
        assert_eq!(redact_url("/srv/git/repo"), "/srv/git/repo");
        assert_eq!(
            redact_url("https://a:b@c@host.example"),
            "https://host.example"
        );
    }

    #[test]
    fn redacts_inside_text() {
        assert_eq!(
            redact_text("failed to fetch 'https://u:p@h.io/x.git': 401; retry https://h.io/y"),
            "failed to fetch 'https://h.io/x.git': 401; retry https://h.io/y"
        );
        assert_eq!(redact_text("no url here"), "no url here");
        assert_eq!(
            redact_text("'https://h.io' and \"http://u:p@h.io\""),
            "'https://h.io' and \"http://h.io\""
        );
    }

    /// Crashes found by `fuzz/fuzz_targets/url_redaction.rs`, kept as regressions.
    #[test]
    fn quotes_in_userinfo_do_not_leak_the_password() {
        for (text, secret) in [
            (" https://':S3crpp_~~a@/ ", "S3crpp_~~a"),
            ("'https://user:pa'ss'word@host/x.git'", "pa'ss'word"),
            ("fetch \"https://tok\"en@host\" failed", "tok\"en"),
            (
                "://\0oo'ssh://\u{3}>\u{3}6oo:S3cr@@@@@@@@:26739/'",
                "6oo:S3cr",
            ),
            ("a://ssh://u:S3cret@h/", "S3cret"),
            ("://a@b://c:S3cret@d/", "S3cret"),
        ] {
            let redacted = redact_text(text);
            assert!(!redacted.contains(secret), "{text:?} -> {redacted:?}");
        }
    }

    #[test]
    fn parses_https() {
        let u = RemoteUrl::parse("https://bot:pw@git.example.com:8443/org/repo.git").unwrap();
        assert_eq!(u.transport, Transport::Https);
        assert_eq!(u.host.as_deref(), Some("git.example.com"));
        assert_eq!(u.port, Some(8443));
        assert_eq!(u.user.as_deref(), Some("bot"));
        assert!(u.has_password);
        assert_eq!(u.display, "https://git.example.com:8443/org/repo.git");
    }

    #[test]
    fn parses_ssh_forms() {
        let u = RemoteUrl::parse("ssh://git@[::1]:2222/repo.git").unwrap();
        assert_eq!(u.transport, Transport::Ssh);
        assert_eq!(u.host.as_deref(), Some("::1"));
        assert_eq!(u.ssh_port(), 2222);
        assert_eq!(u.user.as_deref(), Some("git"));

        let u = RemoteUrl::parse("git@github.com:org/repo.git").unwrap();
        assert_eq!(u.transport, Transport::Ssh);
        assert_eq!(u.host.as_deref(), Some("github.com"));
        assert_eq!(u.ssh_port(), 22);
        assert_eq!(u.user.as_deref(), Some("git"));
        assert_eq!(u.libgit2_url, "git@github.com:org/repo.git");

        let u = RemoteUrl::parse("git+ssh://git@host/repo").unwrap();
        assert_eq!(u.libgit2_url, "ssh://git@host/repo");
    }

    #[test]
    fn parses_local() {
        let u = RemoteUrl::parse("file:///srv/git/repo.git").unwrap();
        assert_eq!(u.transport, Transport::Local);
        let u = RemoteUrl::parse("/srv/git/repo").unwrap();
        assert_eq!(u.transport, Transport::Local);
        assert_eq!(u.libgit2_url, "/srv/git/repo");
        let u = RemoteUrl::parse("relative/repo").unwrap();
        assert!(Path::new(&u.libgit2_url).is_absolute());
        // A path with a colon after a slash is not scp-style.
        let u = RemoteUrl::parse("./a:b").unwrap();
        assert_eq!(u.transport, Transport::Local);
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(RemoteUrl::parse("").is_err());
        assert!(RemoteUrl::parse("ftp://host/repo").is_err());
        assert!(RemoteUrl::parse("https://host:notaport/repo").is_err());
        assert!(RemoteUrl::parse("https:///repo").is_err());
    }
}
