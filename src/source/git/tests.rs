use super::callbacks::{append_known_host, is_key_file_error};
use super::credentials::is_plain_http;
use super::*;
use git2::CredentialType;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn token_file_is_trimmed_and_uses_default_user() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "ghp_abc\n").unwrap();
    let creds = Credentials {
        token_file: Some(token),
        ..Credentials::default()
    };
    let auth = creds.https_auth(None, &no_env).unwrap().unwrap();
    assert_eq!(auth.username, TOKEN_USERNAME);
    assert_eq!(auth.secret.0, "ghp_abc");
    // Debug never shows the secret.
    assert!(!format!("{auth:?}").contains("ghp_abc"));
}

#[test]
fn password_file_needs_a_username() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    fs::write(&pw, "hunter2\r\n").unwrap();
    let mut creds = Credentials {
        password_file: Some(pw),
        ..Credentials::default()
    };
    let err = creds.https_auth(None, &no_env).unwrap_err();
    assert_eq!(err.metric_label(), "credentials");
    assert!(!err.to_string().contains("hunter2"));
    // The user in the URL is enough.
    let auth = creds.https_auth(Some("bob"), &no_env).unwrap().unwrap();
    assert_eq!(auth.username, "bob");
    creds.username = Some("alice".into());
    let auth = creds.https_auth(Some("bob"), &no_env).unwrap().unwrap();
    assert_eq!(auth.username, "alice");
    assert_eq!(auth.secret.0, "hunter2");
}

#[test]
fn env_vars_are_the_fallback() {
    let env = |name: &str| (name == TOKEN_ENV).then(|| "tok\n".to_owned());
    let auth = Credentials::default()
        .https_auth(None, &env)
        .unwrap()
        .unwrap();
    assert_eq!(auth.secret.0, "tok");
    let env = |name: &str| (name == PASSWORD_ENV).then(|| "pw".to_owned());
    let creds = Credentials {
        username: Some("u".into()),
        ..Credentials::default()
    };
    let auth = creds.https_auth(None, &env).unwrap().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.secret.0.as_str()),
        ("u", "pw")
    );
    assert!(
        Credentials::default()
            .https_auth(None, &no_env)
            .unwrap()
            .is_none()
    );
}

#[test]
fn empty_or_missing_secret_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    fs::write(&empty, "\n").unwrap();
    for path in [empty, dir.path().join("missing")] {
        let creds = Credentials {
            token_file: Some(path.clone()),
            ..Credentials::default()
        };
        let err = creds.https_auth(None, &no_env).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn subpath_normalisation() {
    assert_eq!(normalize_subpath("").unwrap(), "");
    assert_eq!(normalize_subpath(".").unwrap(), "");
    assert_eq!(normalize_subpath("/").unwrap(), "");
    assert_eq!(normalize_subpath("./deploy/").unwrap(), "deploy");
    assert_eq!(normalize_subpath("/a//b/").unwrap(), "a/b");
    assert!(normalize_subpath("a/../../etc").is_err());
}

#[test]
fn ref_validation() {
    assert!(validate_ref(&GitRef::Branch("main".into())).is_ok());
    assert!(validate_ref(&GitRef::Tag("v1.2.0".into())).is_ok());
    assert!(validate_ref(&GitRef::Branch(String::new())).is_err());
    assert!(validate_ref(&GitRef::Branch("refs/heads/main".into())).is_err());
    assert!(validate_ref(&GitRef::Branch("a..b".into())).is_err());
    assert!(validate_ref(&GitRef::Branch("with space".into())).is_err());
}

#[test]
fn error_messages_are_actionable() {
    let e = SourceError::HostKeyUnknown {
        host: "github.com".into(),
        known_hosts: "/etc/nodewave/known_hosts".into(),
        key_type: "ssh-ed25519".into(),
        fingerprint: "SHA256:abc".into(),
        hint: "add it with ssh-keyscan, or enable --git-accept-new-host-keys".into(),
    };
    assert_eq!(
        e.to_string(),
        "host key for github.com is not in /etc/nodewave/known_hosts (server offered ssh-ed25519 SHA256:abc); add it with ssh-keyscan, or enable --git-accept-new-host-keys"
    );
    let e = SourceError::RefNotFound {
        kind: "branch",
        name: "main".into(),
        url: "https://github.com/o/r".into(),
    };
    assert_eq!(
        e.to_string(),
        "branch main not found on remote https://github.com/o/r"
    );
    assert_eq!(e.metric_label(), "ref_not_found");
}

fn ssh_ctx(known_hosts: Option<PathBuf>, accept_new: bool) -> CallbackCtx {
    CallbackCtx {
        url: RemoteUrl::parse("ssh://git@git.example.com:2222/org/repo.git").unwrap(),
        credentials: Credentials {
            known_hosts_file: known_hosts,
            accept_new_host_keys: accept_new,
            ..Credentials::default()
        },
        state: RefCell::new(CallbackState::default()),
    }
}

const KEY: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER_KEY: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[test]
fn host_key_verification_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");

    // No file configured: refused.
    let err = ssh_ctx(None, true)
        .verify_host_key("ssh-ed25519", KEY)
        .unwrap_err();
    assert_eq!(err.metric_label(), "no_known_hosts");
    assert!(err.to_string().contains("[git.example.com]:2222"), "{err}");

    // Unknown host, file missing: refused with an ssh-keyscan hint.
    let err = ssh_ctx(Some(kh.clone()), false)
        .verify_host_key("ssh-ed25519", KEY)
        .unwrap_err();
    assert_eq!(err.metric_label(), "host_key_unknown");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "host key for [git.example.com]:2222 is not in {}",
            kh.display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("ssh-keyscan -t ssh-ed25519 -p 2222 git.example.com"),
        "{msg}"
    );
    assert!(msg.contains("--git-accept-new-host-keys"), "{msg}");
    assert!(!kh.exists());

    // accept_new: recorded, then trusted without accept_new.
    ssh_ctx(Some(kh.clone()), true)
        .verify_host_key("ssh-ed25519", KEY)
        .unwrap();
    assert!(
        fs::read_to_string(&kh)
            .unwrap()
            .starts_with("[git.example.com]:2222 ssh-ed25519 ")
    );
    ssh_ctx(Some(kh.clone()), false)
        .verify_host_key("ssh-ed25519", KEY)
        .unwrap();

    // Changed key: refused even with accept_new, file untouched.
    let before = fs::read_to_string(&kh).unwrap();
    let err = ssh_ctx(Some(kh.clone()), true)
        .verify_host_key("ssh-ed25519", OTHER_KEY)
        .unwrap_err();
    assert_eq!(err.metric_label(), "host_key_changed");
    assert!(err.to_string().contains("CHANGED"), "{err}");
    assert_eq!(fs::read_to_string(&kh).unwrap(), before);

    // A new key type for a known host is not trust-on-first-use.
    let err = ssh_ctx(Some(kh.clone()), true)
        .verify_host_key("ecdsa-sha2-nistp256", b"\0\0\0\x13ecdsa-sha2-nistp256xyz")
        .unwrap_err();
    assert_eq!(err.metric_label(), "host_key_unknown");
    assert_eq!(fs::read_to_string(&kh).unwrap(), before);
}

#[test]
fn credentials_callback_gives_up_after_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    fs::write(&key, "not really a key").unwrap();
    let mut ctx = ssh_ctx(None, false);
    ctx.credentials.ssh_key_file = Some(key);
    let allowed = CredentialType::SSH_KEY;
    assert!(
        ctx.credentials_for("ssh://git@example.com/r", Some("git"), allowed)
            .is_ok()
    );
    let Err(err) = ctx.credentials_for("ssh://git@example.com/r", Some("git"), allowed) else {
        panic!("a second SSH key attempt must fail");
    };
    assert!(
        err.message().contains("rejected the SSH key"),
        "{}",
        err.message()
    );
    let recorded = ctx.state.borrow_mut().auth_error.take().unwrap();
    assert_eq!(recorded.metric_label(), "auth");
    // The first username request is answered, a repeat is refused.
    assert!(
        ctx.credentials_for("ssh://example.com/r", None, CredentialType::USERNAME)
            .is_ok()
    );
    assert!(
        ctx.credentials_for("ssh://example.com/r", None, CredentialType::USERNAME)
            .is_err()
    );
}

#[test]
fn key_file_errors_are_told_apart_from_rejections() {
    // What libssh2 says when it cannot load the key (the first seen
    // against a real sshd in tests/source_ssh.rs, the others from
    // libssh2's sources) ...
    assert!(is_key_file_error(
        "failed to authenticate SSH session: Unable to extract public key from private key: Unsupported private key format"
    ));
    for message in [
        "Unable to initialize private key from file",
        "Wrong passphrase for private key",
        "bcrypt-encrypted without passphrase",
        "Unable to open private key file",
    ] {
        assert!(is_key_file_error(message), "{message}");
    }
    // ... and not when the server refuses the key or the network fails.
    assert!(!is_key_file_error(
        "failed to authenticate SSH session: Username/PublicKey combination invalid"
    ));
    assert!(!is_key_file_error(
        "failed to connect to 127.0.0.1: Connection refused"
    ));

    let mut ctx = ssh_ctx(None, false);
    ctx.credentials.ssh_key_file = Some(PathBuf::from("/keys/id"));
    let err = ctx.ssh_key_file_error(Path::new("/keys/id"), "Unsupported private key format");
    assert_eq!(err.metric_label(), "credentials");
    assert!(
        err.to_string().contains("--git-ssh-passphrase-file"),
        "{err}"
    );
    ctx.credentials.ssh_key_passphrase_file = Some(PathBuf::from("/keys/pass"));
    let err = ctx.ssh_key_file_error(Path::new("/keys/id"), "Unsupported private key format");
    assert!(
        err.to_string().contains("check that /keys/pass holds"),
        "{err}"
    );
}

#[test]
fn appending_known_hosts_adds_missing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/known_hosts");
    append_known_host(&path, "a ssh-ed25519 AAAA\n").unwrap();
    fs::write(&path, "a ssh-ed25519 AAAA").unwrap();
    append_known_host(&path, "b ssh-ed25519 BBBB\n").unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "a ssh-ed25519 AAAA\nb ssh-ed25519 BBBB\n"
    );
}

#[test]
fn credentials_for_plain_http_are_refused_unless_overridden() {
    let http = RemoteUrl::parse("http://git.example.com/org/repo.git").unwrap();
    let https = RemoteUrl::parse("https://git.example.com/org/repo.git").unwrap();
    let token_env = |name: &str| (name == TOKEN_ENV).then(|| "ghp_abc".to_owned());
    let password_env = |name: &str| (name == PASSWORD_ENV).then(|| "pw".to_owned());
    let blank_env = |_: &str| Some("  ".to_owned());
    let file = Credentials {
        token_file: Some(PathBuf::from("/etc/nodewave/token")),
        ..Credentials::default()
    };
    let password = Credentials {
        username: Some("bob".into()),
        password_file: Some(PathBuf::from("/etc/nodewave/password")),
        ..Credentials::default()
    };
    let none = Credentials::default();

    for (creds, env, what) in [
        (
            &file,
            &no_env as &dyn Fn(&str) -> Option<String>,
            "/etc/nodewave/token",
        ),
        (&password, &no_env, "/etc/nodewave/password"),
        (&none, &token_env, TOKEN_ENV),
        (&none, &password_env, PASSWORD_ENV),
    ] {
        let err = creds.check_transport(&http, env).unwrap_err();
        assert_eq!(err.metric_label(), "config");
        let message = err.to_string();
        assert!(message.contains(what), "{message}");
        assert!(
            message.contains("http://git.example.com/org/repo.git")
                && message.contains("--insecure-allow-http-credentials")
                && message.contains("NODEWAVE_INSECURE_ALLOW_HTTP_CREDENTIALS")
                && message.contains("insecure-allow-http-credentials = true"),
            "{message}"
        );
        // https, and the explicit override, are fine.
        assert!(creds.check_transport(&https, env).is_ok());
        let allowed = Credentials {
            insecure_allow_http: true,
            ..creds.clone()
        };
        assert!(allowed.check_transport(&http, env).is_ok());
    }
    // No credentials anywhere (blank variables count as unset): plain
    // http is allowed, nothing secret would be sent.
    assert!(none.check_transport(&http, &no_env).is_ok());
    assert!(none.check_transport(&http, &blank_env).is_ok());
    let embedded = RemoteUrl::parse("HTTP://bob:hunter2@git.example.com/r.git").unwrap();
    let err = none.check_transport(&embedded, &no_env).unwrap_err();
    assert!(err.to_string().contains("embedded in the URL"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // ssh and local remotes have no http credentials to leak.
    for url in ["ssh://git@host/r", "file:///srv/r"] {
        let url = RemoteUrl::parse(url).unwrap();
        assert!(file.check_transport(&url, &token_env).is_ok());
    }
}

#[test]
fn credentials_callback_refuses_a_redirect_to_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    fs::write(&token, "ghp_abc\n").unwrap();
    let ctx = |insecure_allow_http| CallbackCtx {
        url: RemoteUrl::parse("https://git.example.com/org/repo.git").unwrap(),
        credentials: Credentials {
            token_file: Some(token.clone()),
            insecure_allow_http,
            ..Credentials::default()
        },
        state: RefCell::new(CallbackState::default()),
    };
    let plain = ctx(false);
    let Err(err) = plain.credentials_for(
        "http://u:p@mirror.example.com/org/repo.git",
        None,
        CredentialType::USER_PASS_PLAINTEXT,
    ) else {
        panic!("credentials handed to a plain http URL");
    };
    assert!(err.message().contains("plain http://"), "{}", err.message());
    assert!(!err.message().contains("u:p@"), "{}", err.message());
    let recorded = plain.state.borrow_mut().auth_error.take().unwrap();
    assert_eq!(recorded.metric_label(), "config");
    assert!(
        plain
            .credentials_for(
                "https://git.example.com/org/repo.git",
                None,
                CredentialType::USER_PASS_PLAINTEXT
            )
            .is_ok()
    );
    assert!(
        ctx(true)
            .credentials_for(
                "http://mirror.example.com/org/repo.git",
                None,
                CredentialType::USER_PASS_PLAINTEXT
            )
            .is_ok()
    );
    assert!(is_plain_http("HTTP://x") && !is_plain_http("https://x") && !is_plain_http("http"));
}
