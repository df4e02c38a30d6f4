//! The libgit2 callbacks of one fetch: credentials for the remote, host-key
//! verification against known_hosts, and the precise error kept when they fail.

use std::cell::RefCell;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::rc::Rc;

use git2::{CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode, RemoteCallbacks};

use super::super::known_hosts::{self, HostKeyStatus, KnownHosts};
use super::super::url::{RemoteUrl, Transport, redact_text, redact_url};
use super::credentials::{is_plain_http, plain_http_refusal, read_secret_file};
use super::{Credentials, SourceError, TOKEN_ENV};

/// State shared by the libgit2 callbacks of one fetch. The callbacks can only
/// return a `git2::Error` (a string); the precise, actionable error is kept
/// here and preferred when the operation fails.
#[derive(Default)]
pub(super) struct CallbackState {
    pub(super) host_key_error: Option<SourceError>,
    pub(super) auth_error: Option<SourceError>,
    pub(super) tried_username: bool,
    pub(super) tried_ssh_key: bool,
    pub(super) tried_userpass: bool,
    /// An SSH key was handed to libssh2 during this fetch: libssh2 only reads
    /// the file then, so a bad file or passphrase fails after the callback.
    pub(super) offered_ssh_key: bool,
}

impl CallbackState {
    pub(super) fn reset_attempts(&mut self) {
        self.tried_username = false;
        self.tried_ssh_key = false;
        self.tried_userpass = false;
    }
}

pub(super) struct CallbackCtx {
    pub(super) url: RemoteUrl,
    pub(super) credentials: Credentials,
    pub(super) state: RefCell<CallbackState>,
}

impl CallbackCtx {
    pub(super) fn callbacks(self: &Rc<Self>) -> RemoteCallbacks<'static> {
        let mut cbs = RemoteCallbacks::new();
        let ctx = Rc::clone(self);
        cbs.credentials(move |url, user_from_url, allowed| {
            ctx.credentials_for(url, user_from_url, allowed)
        });
        let ctx = Rc::clone(self);
        cbs.certificate_check(move |cert, _hostname| {
            // x509 (https): keep libgit2's normal verification against the
            // system CA store.
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let verdict = match (hostkey.hostkey(), hostkey.hostkey_type()) {
                (Some(key), Some(key_type)) => ctx.verify_host_key(key_type.name(), key),
                _ => Err(SourceError::Git {
                    context: format!("connecting to {}", ctx.url.display),
                    cause: "the SSH library did not provide the server's host key".to_owned(),
                }),
            };
            match verdict {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    let message = e.to_string();
                    ctx.state.borrow_mut().host_key_error = Some(e);
                    Err(git2::Error::from_str(&message))
                }
            }
        });
        cbs
    }

    pub(super) fn verify_host_key(&self, key_type: &str, key: &[u8]) -> Result<(), SourceError> {
        let host = self.url.host.clone().unwrap_or_default();
        let port = self.url.ssh_port();
        let name = known_hosts::lookup_name(&host, port);
        let Some(path) = &self.credentials.known_hosts_file else {
            return Err(SourceError::NoKnownHosts { host: name });
        };
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(SourceError::Credentials {
                    cause: format!("cannot read known_hosts file {}: {e}", path.display()),
                });
            }
        };
        let known = KnownHosts::parse(&text);
        if !known.skipped_lines.is_empty() {
            tracing::warn!(
                file = %path.display(),
                lines = ?known.skipped_lines,
                "ignored unparseable known_hosts lines"
            );
        }
        let fingerprint = known_hosts::fingerprint(key);
        let keyscan = if port == 22 {
            format!("ssh-keyscan -t {key_type} {host} >> {}", path.display())
        } else {
            format!(
                "ssh-keyscan -t {key_type} -p {port} {host} >> {}",
                path.display()
            )
        };
        match known.check(&host, port, key_type, key) {
            HostKeyStatus::Trusted => Ok(()),
            HostKeyStatus::Unknown if self.credentials.accept_new_host_keys => {
                append_known_host(path, &known_hosts::format_line(&host, port, key_type, key))
                    .map_err(|e| SourceError::Credentials {
                        cause: format!(
                            "cannot record the new host key of {name} in {}: {e}",
                            path.display()
                        ),
                    })?;
                tracing::warn!(
                    host = %name,
                    key_type,
                    fingerprint = %fingerprint,
                    file = %path.display(),
                    "accepted and recorded a new SSH host key (trust on first use)"
                );
                Ok(())
            }
            HostKeyStatus::Unknown => Err(SourceError::HostKeyUnknown {
                host: name,
                known_hosts: path.display().to_string(),
                key_type: key_type.to_owned(),
                fingerprint,
                hint: format!(
                    "add it with ssh-keyscan (`{keyscan}`, then compare the fingerprint with the one your Git host publishes), or enable --git-accept-new-host-keys"
                ),
            }),
            HostKeyStatus::OtherKeyTypes { known_types } => Err(SourceError::HostKeyUnknown {
                host: name,
                known_hosts: path.display().to_string(),
                key_type: key_type.to_owned(),
                fingerprint,
                hint: format!(
                    "the file only has {} key(s) for this host; add the server's {key_type} key (`{keyscan}`). New key types are not accepted automatically for a known host",
                    known_types.join(", ")
                ),
            }),
            HostKeyStatus::Changed { line } => Err(SourceError::HostKeyChanged {
                host: name,
                known_hosts: path.display().to_string(),
                line,
                key_type: key_type.to_owned(),
                fingerprint,
            }),
            HostKeyStatus::Revoked { line } => Err(SourceError::HostKeyRevoked {
                host: name,
                known_hosts: path.display().to_string(),
                line,
                key_type: key_type.to_owned(),
                fingerprint,
            }),
        }
    }

    /// libgit2 calls this again and again while the server rejects what it is
    /// given; each credential type is offered once per network phase, then
    /// the fetch fails with a clear error instead of looping.
    pub(super) fn credentials_for(
        &self,
        request_url: &str,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        let result = self.pick_credentials(request_url, user_from_url, allowed);
        result.map_err(|e| {
            let message = e.to_string();
            let mut state = self.state.borrow_mut();
            if state.auth_error.is_none() {
                state.auth_error = Some(e);
            }
            git2::Error::from_str(&message)
        })
    }

    pub(super) fn pick_credentials(
        &self,
        request_url: &str,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, SourceError> {
        let url = self.url.display.clone();
        let auth = |cause: String| SourceError::Auth {
            url: url.clone(),
            cause,
        };
        let creds = &self.credentials;
        let user_from_url = user_from_url.or(self.url.user.as_deref());
        let ssh_user = user_from_url.unwrap_or("git");
        let mut state = self.state.borrow_mut();

        if allowed.contains(CredentialType::USERNAME) {
            if state.tried_username {
                return Err(auth(format!(
                    "the server rejected the user name {ssh_user}"
                )));
            }
            state.tried_username = true;
            return Cred::username(ssh_user).map_err(|e| auth(e.message().to_owned()));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &creds.ssh_key_file
        {
            if state.tried_ssh_key {
                return Err(auth(format!(
                    "the server rejected the SSH key {} for user {ssh_user} (is its public key registered as a deploy key with read access?)",
                    key.display()
                )));
            }
            state.tried_ssh_key = true;
            state.offered_ssh_key = true;
            // Checked here because libssh2 reports a missing file as a vague
            // authentication failure.
            fs::metadata(key).map_err(|e| SourceError::Credentials {
                cause: format!("cannot read SSH key {}: {e}", key.display()),
            })?;
            let passphrase = match &creds.ssh_key_passphrase_file {
                Some(p) => Some(read_secret_file(p)?),
                None => None,
            };
            return Cred::ssh_key(
                ssh_user,
                None,
                key,
                passphrase.as_ref().map(|s| s.0.as_str()),
            )
            .map_err(|e| {
                auth(format!(
                    "cannot use SSH key {}: {}",
                    key.display(),
                    e.message()
                ))
            });
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let env = |name: &str| std::env::var(name).ok();
            if let Some(found) = creds.https_auth(user_from_url, &env)? {
                // `open` refused this configuration for an http:// URL; this
                // catches what it cannot see: a redirect to http, or a token
                // variable set after start.
                if is_plain_http(request_url) && !creds.insecure_allow_http {
                    return Err(plain_http_refusal(
                        &format!("the credentials for user {}", found.username),
                        &redact_url(request_url),
                    ));
                }
                if state.tried_userpass {
                    return Err(auth(format!(
                        "the server rejected the credentials for user {} (wrong or expired token/password, or no read access to the repository)",
                        found.username
                    )));
                }
                state.tried_userpass = true;
                return Cred::userpass_plaintext(&found.username, &found.secret.0)
                    .map_err(|e| auth(e.message().to_owned()));
            }
        }
        if self.url.transport == Transport::Ssh {
            Err(auth(
                "the server requires authentication but no SSH key is configured".to_owned(),
            ))
        } else {
            Err(auth(format!(
                "the server requires credentials but none are configured (set a token file or the {TOKEN_ENV} environment variable)"
            )))
        }
    }

    /// Turns a failed network operation into the most precise error we know.
    pub(super) fn network_error(&self, e: &git2::Error) -> SourceError {
        let mut state = self.state.borrow_mut();
        if let Some(err) = state.host_key_error.take() {
            return err;
        }
        if let Some(err) = state.auth_error.take() {
            return err;
        }
        let mut cause = redact_text(e.message());
        if state.offered_ssh_key
            && e.class() == ErrorClass::Ssh
            && is_key_file_error(e.message())
            && let Some(key) = &self.credentials.ssh_key_file
        {
            return self.ssh_key_file_error(key, &cause);
        }
        let url = self.url.display.clone();
        match e.code() {
            ErrorCode::Auth => SourceError::Auth { url, cause },
            ErrorCode::Certificate => SourceError::Tls { url, cause },
            _ => {
                if cause.contains("404") {
                    cause.push_str(
                        " (does the repository exist, and do the credentials grant read access? Some hosts answer 404 for private repositories without access)",
                    );
                }
                SourceError::Unreachable { url, cause }
            }
        }
    }

    /// libssh2 could not load the private key (wrong or missing passphrase,
    /// not a private key, unsupported format). Without this, the error would
    /// read like a network failure (`unreachable`, transient).
    pub(super) fn ssh_key_file_error(&self, key: &Path, cause: &str) -> SourceError {
        let hint = match &self.credentials.ssh_key_passphrase_file {
            Some(p) => format!(
                "check that {} holds this key's passphrase and that the key is an OpenSSH or PEM private key",
                p.display()
            ),
            None => "if the key is encrypted, configure its passphrase file (--git-ssh-passphrase-file); the key must be an OpenSSH or PEM private key".to_owned(),
        };
        SourceError::Credentials {
            cause: format!("cannot use SSH key {}: {cause}; {hint}", key.display()),
        }
    }
}

/// Messages of libssh2 failing to read or decrypt a private key file (as
/// opposed to the server rejecting the key, which libgit2 reports as
/// `ErrorCode::Auth` and which goes through the credentials callback again).
pub(super) fn is_key_file_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["private key", "passphrase", "key file", "public key from"]
        .iter()
        .any(|needle| m.contains(needle))
}

pub(super) fn append_known_host(path: &Path, line: &str) -> std::io::Result<()> {
    let needs_newline = match fs::read(path) {
        Ok(existing) => !existing.is_empty() && !existing.ends_with(b"\n"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if needs_newline {
        file.write_all(b"\n")?;
    }
    file.write_all(line.as_bytes())?;
    file.sync_all()
}
