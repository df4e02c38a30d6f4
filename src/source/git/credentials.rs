//! Git credentials: where secrets come from (files read at fetch time, or the
//! environment), and the refusal to send them over plain http.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::super::url::{RemoteUrl, Transport};
use super::{PASSWORD_ENV, SourceError, TOKEN_ENV, TOKEN_USERNAME};
/// Where to find secrets. Only paths are held here; contents are read at
/// fetch time and dropped right after, so `Debug` is safe to derive.
///
/// https: `token_file` (sent as the password, with `username` or
/// [`TOKEN_USERNAME`]), else `password_file` with `username` (or the user in
/// the URL), else the environment variables [`TOKEN_ENV`], [`PASSWORD_ENV`].
/// File contents have trailing newlines removed. There is deliberately no way
/// to pass a secret on the command line (it would show in `ps`).
///
/// ssh: `ssh_key_file` (OpenSSH or PEM private key, optionally encrypted
/// with the passphrase in `ssh_key_passphrase_file`); the user is the one in
/// the URL, else `git`. Host keys are verified against `known_hosts_file`;
/// unknown hosts are refused unless `accept_new_host_keys` (then the key is
/// appended to that file); changed keys are always refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub token_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub ssh_key_passphrase_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub accept_new_host_keys: bool,
    /// Send the https token/password to a plain `http://` remote too
    /// (`--insecure-allow-http-credentials`). Off: such a configuration is
    /// refused before anything is sent, because anyone on the path could read
    /// the secret.
    pub insecure_allow_http: bool,
}

/// A secret value; never printed.
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// User name and password/token for https.
#[derive(Debug)]
pub(crate) struct HttpsAuth {
    pub(super) username: String,
    pub(super) secret: Secret,
}

impl Credentials {
    /// Resolves https credentials. `env` looks up an environment variable
    /// (injected so tests do not depend on the process environment).
    pub(crate) fn https_auth(
        &self,
        url_user: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<HttpsAuth>, SourceError> {
        let token_user = || {
            self.username
                .clone()
                .or_else(|| url_user.map(str::to_owned))
                .unwrap_or_else(|| TOKEN_USERNAME.to_owned())
        };
        let basic_user = |source: &str| {
            self.username
                .clone()
                .or_else(|| url_user.map(str::to_owned))
                .ok_or_else(|| SourceError::Credentials {
                    cause: format!(
                        "{source} is set but no username is configured (set the git username, or use a token)"
                    ),
                })
        };
        if let Some(path) = &self.token_file {
            return Ok(Some(HttpsAuth {
                username: token_user(),
                secret: read_secret_file(path)?,
            }));
        }
        if let Some(path) = &self.password_file {
            let username = basic_user(&format!("password file {}", path.display()))?;
            return Ok(Some(HttpsAuth {
                username,
                secret: read_secret_file(path)?,
            }));
        }
        if let Some(token) = env(TOKEN_ENV).filter(|v| !v.trim().is_empty()) {
            return Ok(Some(HttpsAuth {
                username: token_user(),
                secret: Secret(token.trim_end_matches(['\r', '\n']).to_owned()),
            }));
        }
        if let Some(password) = env(PASSWORD_ENV).filter(|v| !v.is_empty()) {
            let username = basic_user(PASSWORD_ENV)?;
            return Ok(Some(HttpsAuth {
                username,
                secret: Secret(password.trim_end_matches(['\r', '\n']).to_owned()),
            }));
        }
        Ok(None)
    }
}

impl Credentials {
    /// Refuses, before anything is sent, a configuration that would hand a
    /// token or password to a plain `http://` remote (issue 10): anyone on the
    /// network path could read it. Looks only at where credentials would come
    /// from (files are not read). `env` as in [`Credentials::https_auth`].
    pub(crate) fn check_transport(
        &self,
        url: &RemoteUrl,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), SourceError> {
        if url.transport != Transport::Http || self.insecure_allow_http {
            return Ok(());
        }
        let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        let what = if url.has_password {
            "the password embedded in the URL".to_owned()
        } else if let Some(p) = &self.token_file {
            format!("the token from {}", p.display())
        } else if let Some(p) = &self.password_file {
            format!("the password from {}", p.display())
        } else if set(TOKEN_ENV) {
            format!("the token from {TOKEN_ENV}")
        } else if set(PASSWORD_ENV) {
            format!("the password from {PASSWORD_ENV}")
        } else {
            return Ok(());
        };
        Err(plain_http_refusal(&what, &url.display))
    }
}

/// The flag, environment variable and config key that allow credentials over
/// plain http, as named in errors.
pub const INSECURE_HTTP_OVERRIDE: &str = "--insecure-allow-http-credentials (NODEWAVE_INSECURE_ALLOW_HTTP_CREDENTIALS=true, or insecure-allow-http-credentials = true in the config file)";

pub(super) fn plain_http_refusal(what: &str, display: &str) -> SourceError {
    SourceError::InvalidConfig {
        reason: format!(
            "refusing to send {what} to {display} over plain http://, where anyone on the network path can read it; use the repository's https:// URL, or, only on a network you trust, set {INSECURE_HTTP_OVERRIDE}"
        ),
    }
}

/// Whether the URL libgit2 is about to authenticate against is plain http
/// (the configured URL, or where a server redirected to).
pub(super) fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

pub(super) fn read_secret_file(path: &Path) -> Result<Secret, SourceError> {
    let text = fs::read_to_string(path).map_err(|e| SourceError::Credentials {
        cause: format!("cannot read {}: {e}", path.display()),
    })?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(SourceError::Credentials {
            cause: format!("{} is empty", path.display()),
        });
    }
    Ok(Secret(value.to_owned()))
}
