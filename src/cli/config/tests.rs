use super::*;
use clap::Parser;

#[derive(Parser)]
struct T {
    #[command(flatten)]
    run: RunArgs,
}

#[test]
fn flags_override_the_config_file_and_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(&cfg, "repo = \"file:///from-file\"\npoll-interval = \"30s\"\nprune = false\nallow-namespaces = [\"logging\"]\nallow-kinds = [\"ConfigMap\"]\n[severity]\nprobes-missing = \"error\"\n").unwrap();
    let t = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--repo",
        "file:///from-flag",
    ]);
    let r = t.run.resolve().unwrap();
    assert_eq!(r.repo, "file:///from-flag");
    assert_eq!(r.poll_interval, Duration::from_secs(30));
    assert!(!r.prune);
    assert!(r.self_heal);
    assert_eq!(r.reference, GitRef::Branch("main".into()));
    assert_eq!(r.rules.allow_namespaces, vec!["logging"]);
    assert_eq!(r.rules.allow_kinds, vec!["ConfigMap"]);
    assert_eq!(
        r.rules.severities,
        vec![("probes-missing".to_string(), Severity::Error)]
    );
    assert_eq!(r.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(r.http, ServerConfig::new(r.http.listen));
}

#[test]
fn namespaced_mode_needs_allowed_namespaces_and_no_namespace_creation() {
    let t = T::parse_from(["x", "--repo", "file:///r", "--namespaced"]);
    let e = t.run.resolve().unwrap_err();
    assert!(
        e.contains("--namespaced needs at least one --allow-namespace"),
        "{e}"
    );
    let t = T::parse_from([
        "x",
        "--repo",
        "file:///r",
        "--namespaced",
        "--allow-namespace",
        "logging",
        "--create-namespaces",
    ]);
    let e = t.run.resolve().unwrap_err();
    assert!(e.contains("exclude each other"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nnamespaced = true\nallow-namespaces = [\"logging\", \"monitoring\"]\n",
    )
    .unwrap();
    let r = T::parse_from(["x", "--config", cfg.to_str().unwrap()])
        .run
        .resolve()
        .unwrap();
    assert!(r.namespaced);
    assert_eq!(r.rules.allow_namespaces, vec!["logging", "monitoring"]);
    let r = T::parse_from(["x", "--repo", "file:///r"])
        .run
        .resolve()
        .unwrap();
    assert!(!r.namespaced);
}

#[test]
fn insecure_http_credentials_from_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(&cfg, "repo = \"http://git.lan/r.git\"\n").unwrap();
    let off = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
    assert!(!off.run.resolve().unwrap().credentials.insecure_allow_http);
    let flag = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--insecure-allow-http-credentials",
    ]);
    assert!(flag.run.resolve().unwrap().credentials.insecure_allow_http);
    std::fs::write(
        &cfg,
        "repo = \"http://git.lan/r.git\"\ninsecure-allow-http-credentials = true\n",
    )
    .unwrap();
    let file = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
    assert!(file.run.resolve().unwrap().credentials.insecure_allow_http);
}

#[test]
fn http_server_settings_from_flags_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nmetrics-listen = \"127.0.0.1:9090\"\nhttp-header-timeout = \"3s\"\nhttp-max-connections = 8\nwebhook-replay-window = \"1h\"\nwebhook-coalesce-window = \"0s\"\n",
    )
    .unwrap();
    let t = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--http-request-timeout",
        "7s",
        "--http-max-connections",
        "16",
    ]);
    let http = t.run.resolve().unwrap().http;
    assert_eq!(http.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(http.limits.header_read_timeout, Duration::from_secs(3));
    assert_eq!(http.limits.request_timeout, Duration::from_secs(7));
    assert_eq!(http.limits.max_connections, 16, "the flag wins");
    assert_eq!(http.replay_window, Duration::from_hours(1));
    assert_eq!(http.fetch_coalesce_window, Duration::ZERO);

    for (args, needle) in [
        (&["--http-header-timeout", "0s"][..], "http-header-timeout"),
        (&["--http-request-timeout", "0s"], "http-request-timeout"),
        (&["--http-max-connections", "0"], "between 1 and"),
        (&["--http-max-connections", "1000000"], "between 1 and"),
        (&["--webhook-replay-window", "1m"], "at least 300s"),
        (
            &[
                "--listen",
                "127.0.0.1:8080",
                "--metrics-listen",
                "127.0.0.1:8080",
            ],
            "same address",
        ),
    ] {
        let mut argv = vec!["x", "--repo", "file:///r"];
        argv.extend_from_slice(args);
        let e = T::parse_from(argv).run.resolve().unwrap_err();
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nhttp-request-timeout = \"soon\"\n",
    )
    .unwrap();
    let e = T::parse_from(["x", "--config", cfg.to_str().unwrap()])
        .run
        .resolve()
        .unwrap_err();
    assert!(e.contains("http-request-timeout"), "{e}");
}

#[test]
fn render_settings_come_from_flags_and_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nstate-dir = \"/var/lib/nw\"\nhelm = \"/opt/helm\"\nrender-timeout = \"5s\"\nrender-max-bytes = 1048576\nrender-allow-network = true\n",
    )
    .unwrap();
    let t = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--render-timeout",
        "7s",
    ]);
    let r = t.run.resolve().unwrap().render;
    // NODEWAVE_HELM / NODEWAVE_KUSTOMIZE, when a developer has them set, win as flags do.
    let env = |v: &str| std::env::var_os(v).map(PathBuf::from);
    assert_eq!(
        r.helm,
        env("NODEWAVE_HELM").or(Some(PathBuf::from("/opt/helm")))
    );
    assert_eq!(r.kustomize, env("NODEWAVE_KUSTOMIZE"));
    assert_eq!(r.timeout, Duration::from_secs(7));
    assert_eq!(r.max_output_bytes, 1_048_576);
    assert!(r.allow_network);
    assert_eq!(
        r.work_dir,
        Some(PathBuf::from("/var/lib/nw/nodewave-render"))
    );
}

#[test]
fn verification_settings_come_from_flags_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nverify-commits = \"head\"\ntrusted-gpg-keys = \"/keys/gpg.asc\"\n",
    )
    .unwrap();
    let t = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
    let r = t.run.resolve().unwrap();
    assert_eq!(r.verify_commits, VerifyMode::Head);
    assert_eq!(r.trust_files.openpgp, Some(PathBuf::from("/keys/gpg.asc")));
    assert_eq!(r.trust_files.ssh, None);

    let t = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--verify-commits",
        "off",
        "--trusted-ssh-signers",
        "/keys/allowed_signers",
    ]);
    let r = t.run.resolve().unwrap();
    assert_eq!(r.verify_commits, VerifyMode::Off);
    assert_eq!(
        r.trust_files.ssh,
        Some(PathBuf::from("/keys/allowed_signers"))
    );

    // head without any key file is refused, not silently unverified.
    let t = T::parse_from(["x", "--repo", "file:///r", "--verify-commits", "head"]);
    assert!(t.run.resolve().unwrap_err().contains("--trusted-gpg-keys"));
    assert!(T::try_parse_from(["x", "--repo", "r", "--verify-commits", "all"]).is_err());
    std::fs::write(&cfg, "repo = \"r\"\nverify-commits = \"always\"\n").unwrap();
    let t = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
    assert!(t.run.resolve().unwrap_err().contains("off or head"));
}

#[test]
fn limits_come_from_flags_then_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nmax-file-bytes = \"8MiB\"\nmax-files = 10\nmax-depth = 32\n",
    )
    .unwrap();
    let t = T::parse_from(["x", "--config", cfg.to_str().unwrap(), "--max-files", "20"]);
    let limits = t.run.resolve().unwrap().rules.load_options().limits;
    assert_eq!(limits.max_file_bytes, 8 << 20);
    assert_eq!(limits.max_files, 20);
    assert_eq!(limits.max_depth, 32);
    assert_eq!(
        limits.max_nodes,
        crate::manifest::Limits::default().max_nodes
    );
    std::fs::write(&cfg, "repo = \"file:///r\"\nmax-object-bytes = \"lots\"\n").unwrap();
    let t = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
    let e = t.run.resolve().unwrap_err();
    assert!(e.contains("max-object-bytes"), "{e}");
}

#[test]
fn absurd_intervals_are_refused() {
    for (flag, value) in [("--poll-interval", "0"), ("--poll-interval", "25h")] {
        let t = T::parse_from(["x", "--repo", "file:///r", flag, value]);
        let e = t.run.resolve().unwrap_err();
        assert!(e.contains("is outside"), "{flag} {value}: {e}");
    }
    // Overflowing values are clap errors, not panics.
    assert!(T::try_parse_from(["x", "--poll-interval", "1s18446744073709551615s"]).is_err());
}

#[test]
fn prometheus_urls_come_from_the_flag_or_the_file_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(
        &cfg,
        "repo = \"file:///r\"\nallow-prometheus-urls = [\"http://prom:9090\", \"https://thanos.example/\"]\n",
    )
    .unwrap();
    let r = T::parse_from(["x", "--config", cfg.to_str().unwrap()])
        .run
        .resolve()
        .unwrap();
    assert_eq!(
        r.rules.load_options().allowed_prometheus_urls,
        vec!["http://prom:9090", "https://thanos.example/"]
    );
    let r = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--allow-prometheus-url",
        "http://other:9090",
    ])
    .run
    .resolve()
    .unwrap();
    assert_eq!(r.rules.allow_prometheus_urls, vec!["http://other:9090"]);
    let r = T::parse_from(["x", "--repo", "r"]).run.resolve().unwrap();
    assert!(r.rules.load_options().allowed_prometheus_urls.is_empty());
    assert!(
        T::try_parse_from(["x", "--repo", "r", "--allow-prometheus-url", "prom:9090"]).is_err()
    );
    std::fs::write(
        &cfg,
        "repo = \"r\"\nallow-prometheus-urls = [\"ftp://x\"]\n",
    )
    .unwrap();
    let e = T::parse_from(["x", "--config", cfg.to_str().unwrap()])
        .run
        .resolve()
        .unwrap_err();
    assert!(
        e.contains("allow-prometheus-urls") && e.contains("http://"),
        "{e}"
    );
}

#[test]
fn the_prune_limit_comes_from_the_flag_or_the_file_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(&cfg, "repo = \"file:///r\"\nmax-prune-percent = 25\n").unwrap();
    let r = T::parse_from(["x", "--config", cfg.to_str().unwrap()])
        .run
        .resolve()
        .unwrap();
    assert_eq!(r.prune_limit.max_percent(), 25);
    let r = T::parse_from([
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--max-prune-percent",
        "0",
    ])
    .run
    .resolve()
    .unwrap();
    assert_eq!(r.prune_limit.max_percent(), 0, "the flag wins");
    let r = T::parse_from(["x", "--repo", "file:///r"])
        .run
        .resolve()
        .unwrap();
    assert_eq!(r.prune_limit, PruneLimit::DEFAULT);
    let e = T::parse_from(["x", "--repo", "file:///r", "--max-prune-percent", "150"])
        .run
        .resolve()
        .unwrap_err();
    assert!(e.contains("between 0 and 100"), "{e}");
}

#[test]
fn unknown_config_keys_and_missing_repo_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nodewave.toml");
    std::fs::write(&cfg, "repository = \"x\"\n").unwrap();
    let t = T::parse_from(["x", "--config", cfg.to_str().unwrap()]);
    let e = t.run.resolve().unwrap_err();
    assert!(e.contains("unknown field `repository`"), "{e}");
    let t = T::parse_from(["x"]);
    assert!(t.run.resolve().unwrap_err().contains("--repo"));
}
