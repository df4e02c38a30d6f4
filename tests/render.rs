//! Rendering Kustomize and Helm sources with the real renderers (no cluster): the
//! server's path (a Git commit checked out by the source worker) and `nodewave
//! validate` on a directory give the same objects; failures and refusals are
//! findings naming the source directory or template.
//!
//! Needs helm and kustomize as `hack/build-renderers.sh` builds them; `hack/test.sh`
//! puts them on PATH. Without them every test fails and says how to build them.

// A failed setup step should just fail the test.
#![allow(clippy::unwrap_used)]

mod render_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nodewave::manifest::{self, LoadOptions, ManifestFile, REMOTE_SOURCE_REFUSED, RENDER_ERROR};
use nodewave::render::{self, RenderError, RenderOptions};
use nodewave::source::{Credentials, GitRef, GitSourceConfig, SourceWorker};
use render_common::{agent_ds, commit, helm_chart, kustomize_fleet, options, owned, write};
use serde_json::Value;

fn rejected(r: Result<Vec<ManifestFile>, RenderError>) -> Vec<nodewave::manifest::Finding> {
    match r {
        Err(RenderError::Rejected(f)) => f,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The server's path: a worker on a clone of `repo`, tracking `tracked`.
async fn server_files(
    repo: &Path,
    tracked: &str,
    opts: &RenderOptions,
) -> Result<Vec<ManifestFile>, RenderError> {
    let state = tempfile::tempdir().unwrap();
    let worker = SourceWorker::open(GitSourceConfig {
        url: format!("file://{}", repo.display()),
        reference: GitRef::Branch("main".into()),
        path: tracked.into(),
        checkout_dir: state.path().join("clone"),
        credentials: Credentials::default(),
        limits: nodewave::manifest::Limits::default(),
    })
    .unwrap();
    let head = worker.fetch().await.unwrap().head;
    let opts = RenderOptions {
        work_dir: Some(state.path().join("render")),
        ..opts.clone()
    };
    let files = render::desired_files(&worker, &head, tracked, &opts).await;
    // The checkout is gone once the files are returned.
    if let Ok(entries) = std::fs::read_dir(state.path().join("render")) {
        assert_eq!(entries.count(), 0, "temporary checkout left behind");
    }
    files
}

fn daemonset_manifest(files: &[ManifestFile], ns: &str, name: &str) -> Value {
    let state = manifest::load(files, &LoadOptions::default())
        .unwrap_or_else(|r| panic!("rendered files do not validate: {r}"));
    state
        .daemonsets
        .get(&manifest::ObjectKey::new(ns, name))
        .unwrap_or_else(|| panic!("no DaemonSet {ns}/{name} in {:?}", state.daemonsets.keys()))
        .manifest
        .clone()
}

fn nodewave(args: &[&str], path_env: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodewave"));
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("NODEWAVE_HELM")
        .env_remove("NODEWAVE_KUSTOMIZE");
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tool_flags() -> Vec<String> {
    vec![
        "--helm".into(),
        render_common::helm().display().to_string(),
        "--kustomize".into(),
        render_common::kustomize().display().to_string(),
    ]
}

fn validate(dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = vec!["validate".into(), dir.display().to_string()];
    args.extend(tool_flags());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    nodewave(&refs, None)
}

#[tokio::test]
async fn kustomize_overlay_with_a_base_outside_the_tracked_path() {
    let repo = tempfile::tempdir().unwrap();
    let mut files = kustomize_fleet("fluent-bit", "logging", "1.2.3", "");
    files.push(("clusters/prod/README.md", "not a manifest".into()));
    write(repo.path(), &files);
    commit(repo.path(), "fleet", &[]);

    let server = server_files(repo.path(), "clusters/prod", &options())
        .await
        .unwrap();
    assert_eq!(
        server.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["clusters/prod (kustomize)"]
    );
    let ds = daemonset_manifest(&server, "logging", "fluent-bit");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/fluent-bit:1.2.3"
    );
    assert_eq!(ds["metadata"]["labels"]["cluster"], "prod");

    // validate on the work tree renders the same objects.
    let local = render::render_dir(&repo.path().join("clusters/prod"), &options()).unwrap();
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].contents, server[0].contents);
    let (code, out) = validate(&repo.path().join("clusters/prod"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 DaemonSet(s)"), "{out}");

    // Tracking the parent: the base is used by the overlay, so it is not applied on its own.
    let server = server_files(repo.path(), "", &options()).await.unwrap();
    assert_eq!(
        server.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["clusters/prod (kustomize)"]
    );
}

#[tokio::test]
async fn config_map_generator_names_are_hashed_and_referenced() {
    let repo = tempfile::tempdir().unwrap();
    let ds = agent_ds("fluent-bit", None, "registry.example/fluent-bit:1.0.0", "")
        .replace(
            "      containers:\n",
            "      volumes:\n        - name: config\n          configMap: {name: fluent-bit-config}\n      containers:\n",
        );
    write(
        repo.path(),
        &[
            ("agents/fluent-bit/daemonset.yaml", ds),
            (
                "agents/fluent-bit/kustomization.yaml",
                "resources: [daemonset.yaml]\nconfigMapGenerator:\n  - name: fluent-bit-config\n    files: [fluent-bit.conf]\n".into(),
            ),
            ("agents/fluent-bit/fluent-bit.conf", "[SERVICE]\n  Flush 1\n".into()),
            (
                "clusters/prod/kustomization.yaml",
                "namespace: logging\nresources: [../../agents/fluent-bit]\n".into(),
            ),
        ],
    );
    commit(repo.path(), "generator", &[]);
    let files = server_files(repo.path(), "clusters/prod", &options())
        .await
        .unwrap();
    let text = &files[0].contents;
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let name = cm["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("fluent-bit-config-") && name.len() > "fluent-bit-config-".len(),
        "{name}"
    );
    assert_eq!(cm["data"]["fluent-bit.conf"], "[SERVICE]\n  Flush 1\n");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(
        ds["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"], name,
        "the DaemonSet refers to the hashed name"
    );
}

#[tokio::test]
async fn helm_chart_with_values_files_and_inline_values() {
    let repo = tempfile::tempdir().unwrap();
    let chart = helm_chart(
        "node-agent",
        "monitoring",
        "2.0.0",
        "nodeSelector:\n  kubernetes.io/os: linux\n",
    );
    let mut files = owned(&chart);
    files.push((
        "plain/other.yaml",
        agent_ds(
            "other",
            Some("monitoring"),
            "registry.example/other:1.0",
            "",
        ),
    ));
    write(repo.path(), &files);
    commit(repo.path(), "chart", &[]);

    let server = server_files(repo.path(), "", &options()).await.unwrap();
    assert_eq!(
        server.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec![
            "charts/node-agent/templates/daemonset.yaml (helm)",
            "plain/other.yaml"
        ]
    );
    let ds = daemonset_manifest(&server, "monitoring", "node-agent");
    // Chart values < values-prod.yaml < inline values; the namespace came from nodewave.yaml.
    assert_eq!(ds["metadata"]["namespace"], "monitoring");
    assert_eq!(ds["metadata"]["labels"]["tier"], "prod");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/node-agent:2.0.0"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/os"],
        "linux"
    );
    daemonset_manifest(&server, "monitoring", "other");

    let local = render::render_dir(repo.path(), &options()).unwrap();
    assert_eq!(
        local, server,
        "validate and the server render the same files"
    );
    let (code, out) = validate(repo.path(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 DaemonSet(s)"), "{out}");
}

#[tokio::test]
async fn a_broken_template_rejects_with_helms_message_and_the_template() {
    let repo = tempfile::tempdir().unwrap();
    let mut chart = helm_chart("node-agent", "monitoring", "2.0.0", "");
    chart.push((
        "charts/node-agent/templates/broken.yaml".into(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: {{ .Values.missing.key }}\n".into(),
    ));
    write(repo.path(), &owned(&chart));
    commit(repo.path(), "broken", &[]);
    let findings = rejected(server_files(repo.path(), "", &options()).await);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(f.check, RENDER_ERROR);
    assert_eq!(
        f.location.to_string(),
        "charts/node-agent/templates/broken.yaml:6"
    );
    assert!(
        f.message.starts_with("helm template failed: "),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("nil pointer evaluating"),
        "{}",
        f.message
    );

    let (code, out) = validate(repo.path(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "charts/node-agent/templates/broken.yaml:6: error[render-error] helm template failed"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn a_kustomize_failure_names_the_directory_without_the_checkout_path() {
    let repo = tempfile::tempdir().unwrap();
    let mut files = kustomize_fleet("fluent-bit", "logging", "1.2.3", "");
    files.push((
        "clusters/prod/kustomization.yaml",
        "resources:\n  - ../../agents/fluent-bit\n  - ../../agents/missing\n".into(),
    ));
    write(repo.path(), &files);
    commit(repo.path(), "missing base", &[]);
    let findings = rejected(server_files(repo.path(), "clusters/prod", &options()).await);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(
        (f.check, f.location.to_string()),
        (RENDER_ERROR, "clusters/prod".to_owned())
    );
    assert!(
        f.message
            .starts_with("kustomize build failed: accumulating resources"),
        "{}",
        f.message
    );
    assert!(f.message.contains("agents/missing"), "{}", f.message);
    assert!(
        !f.message.contains("nodewave-render-"),
        "checkout path leaked: {}",
        f.message
    );

    let (code, out) = validate(&repo.path().join("clusters/prod"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(".: error[render-error] kustomize build failed"),
        "{out}"
    );
}

#[tokio::test]
async fn remote_bases_are_refused_by_default() {
    let repo = tempfile::tempdir().unwrap();
    write(
        repo.path(),
        &[(
            "clusters/prod/kustomization.yaml",
            "resources:\n  - https://github.com/fluent/fluent-bit-kustomize//base?ref=v3.0.0\n"
                .into(),
        )],
    );
    commit(repo.path(), "remote", &[]);
    let findings = rejected(server_files(repo.path(), "clusters/prod", &options()).await);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].check, REMOTE_SOURCE_REFUSED);
    assert_eq!(
        findings[0].location.to_string(),
        "clusters/prod/kustomization.yaml:2"
    );
    assert!(findings[0].message.contains("--render-allow-network"));

    let (code, out) = validate(&repo.path().join("clusters/prod"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("kustomization.yaml:2: error[remote-source-refused]"),
        "{out}"
    );
}

#[tokio::test]
async fn a_base_outside_the_repository_is_refused() {
    let outer = tempfile::tempdir().unwrap();
    let repo = outer.path().join("repo");
    write(
        outer.path(),
        &[
            (
                "repo/clusters/prod/kustomization.yaml",
                "resources:\n  - ../../../elsewhere\n".into(),
            ),
            ("elsewhere/kustomization.yaml", "resources: []\n".into()),
        ],
    );
    commit(&repo, "escape", &[]);
    let findings = rejected(server_files(&repo, "clusters/prod", &options()).await);
    assert_eq!(findings[0].check, REMOTE_SOURCE_REFUSED);
    assert!(
        findings[0]
            .message
            .contains("points outside the repository")
    );
    // validate inside the work tree applies the same bound.
    let findings = rejected(render::render_dir(&repo.join("clusters/prod"), &options()));
    assert_eq!(findings[0].check, REMOTE_SOURCE_REFUSED);
}

#[tokio::test]
async fn a_helm_dependency_that_is_not_vendored_is_refused() {
    let repo = tempfile::tempdir().unwrap();
    let mut chart = helm_chart("node-agent", "monitoring", "2.0.0", "");
    chart[0].1.push_str("dependencies:\n  - name: common\n    version: 2.x.x\n    repository: https://charts.example.invalid\n");
    write(repo.path(), &owned(&chart));
    commit(repo.path(), "dependency", &[]);
    let findings = rejected(server_files(repo.path(), "", &options()).await);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].check, REMOTE_SOURCE_REFUSED);
    assert_eq!(
        findings[0].location.to_string(),
        "charts/node-agent/Chart.yaml:5"
    );
    assert!(
        findings[0].message.contains("helm dependency build"),
        "{}",
        findings[0].message
    );

    let (code, out) = validate(repo.path(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error[remote-source-refused]"), "{out}");

    // Allowed, Helm itself is asked to fetch it (and fails here: it has no repository
    // configured and no network), so the refusal was the only thing in the way.
    let opts = RenderOptions {
        allow_network: true,
        timeout: Duration::from_secs(30),
        ..options()
    };
    let findings = rejected(render::render_dir(repo.path(), &opts));
    assert_eq!(findings[0].check, RENDER_ERROR, "{findings:?}");
    assert!(
        findings[0].message.contains("helm template failed"),
        "{}",
        findings[0].message
    );

    // Vendoring the dependency makes the chart render.
    write(
        repo.path(),
        &[(
            "charts/node-agent/charts/common/Chart.yaml",
            "apiVersion: v2\nname: common\nversion: 2.0.0\ntype: library\n".into(),
        )],
    );
    commit(repo.path(), "vendored", &[]);
    let files = server_files(repo.path(), "", &options()).await.unwrap();
    daemonset_manifest(&files, "monitoring", "node-agent");
}

#[tokio::test]
async fn a_render_past_the_time_limit_is_stopped() {
    let repo = tempfile::tempdir().unwrap();
    let mut chart = helm_chart("node-agent", "monitoring", "2.0.0", "");
    // Ten billion iterations: far longer than the limit.
    chart.push((
        "charts/node-agent/templates/slow.yaml".into(),
        "{{- range $i := until 100000 }}{{- range $j := until 100000 }}{{- end }}{{- end }}\n"
            .into(),
    ));
    write(repo.path(), &owned(&chart));
    commit(repo.path(), "slow", &[]);
    let opts = RenderOptions {
        timeout: Duration::from_secs(2),
        ..options()
    };
    let findings = rejected(server_files(repo.path(), "", &opts).await);
    assert_eq!(findings[0].check, RENDER_ERROR);
    assert_eq!(findings[0].location.to_string(), "charts/node-agent");
    assert!(
        findings[0]
            .message
            .contains("did not finish within 2s (--render-timeout)"),
        "{}",
        findings[0].message
    );
    let (code, out) = validate(repo.path(), &["--render-timeout", "2s"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("did not finish within 2s"), "{out}");
}

#[tokio::test]
async fn output_past_the_size_limit_is_stopped() {
    let repo = tempfile::tempdir().unwrap();
    let mut chart = helm_chart("node-agent", "monitoring", "2.0.0", "");
    // About 4 MiB of comment lines.
    chart.push((
        "charts/node-agent/templates/huge.yaml".into(),
        "{{- range $i := until 60000 }}\n# padding padding padding padding padding padding padding padding\n{{- end }}\n".into(),
    ));
    write(repo.path(), &owned(&chart));
    commit(repo.path(), "huge", &[]);
    let opts = RenderOptions {
        max_output_bytes: 1 << 20,
        ..options()
    };
    let findings = rejected(server_files(repo.path(), "", &opts).await);
    assert_eq!(findings[0].check, RENDER_ERROR);
    assert!(
        findings[0]
            .message
            .contains("over 1048576 bytes (--render-max-bytes)"),
        "{}",
        findings[0].message
    );
    let (code, out) = validate(repo.path(), &["--render-max-bytes", "1Mi"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("over 1048576 bytes"), "{out}");
    // Under the default limit the same chart renders.
    let (code, out) = validate(repo.path(), &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_finds_the_renderers_on_path_or_says_what_is_missing() {
    let repo = tempfile::tempdir().unwrap();
    write(
        repo.path(),
        &kustomize_fleet("fluent-bit", "logging", "1.2.3", ""),
    );
    write(
        repo.path(),
        &owned(&helm_chart("node-agent", "monitoring", "2.0.0", "")),
    );
    let dirs = [render_common::helm(), render_common::kustomize()]
        .iter()
        .map(|p| p.parent().unwrap().display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let dir = repo.path().display().to_string();
    let (code, out) = nodewave(&["validate", &dir], Some(&format!("{dirs}:/usr/bin:/bin")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 DaemonSet(s)"), "{out}");

    let (code, out) = nodewave(&["validate", &dir], Some("/nonexistent"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("charts/node-agent: error[render-error] helm is needed to render charts/node-agent but was not found on PATH"), "{out}");
    assert!(
        out.contains("clusters/prod: error[render-error] kustomize is needed"),
        "{out}"
    );
    assert!(out.contains("hack/build-renderers.sh"), "{out}");

    let (code, out) = nodewave(
        &["validate", &dir, "--helm", "/nonexistent/helm"],
        Some(&dirs),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot run /nonexistent/helm"), "{out}");
}

#[tokio::test]
async fn plain_repositories_are_read_as_before_without_a_checkout() {
    let repo = tempfile::tempdir().unwrap();
    write(
        repo.path(),
        &[
            (
                "fleet/ds.yaml",
                agent_ds("a", Some("ns"), "registry.example/a:1", ""),
            ),
            ("fleet/.github/workflow.yaml", "not: a manifest\n".into()),
        ],
    );
    commit(repo.path(), "plain", &[]);
    // The renderers are not even needed: none is configured or on PATH here.
    let opts = RenderOptions {
        helm: Some("/nonexistent/helm".into()),
        kustomize: Some("/nonexistent/kustomize".into()),
        ..RenderOptions::default()
    };
    let files = server_files(repo.path(), "fleet", &opts).await.unwrap();
    assert_eq!(
        files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["fleet/ds.yaml"]
    );
    let local = render::render_dir(&repo.path().join("fleet"), &opts).unwrap();
    assert_eq!(
        local,
        manifest::read_dir(
            &repo.path().join("fleet"),
            &nodewave::manifest::Limits::default()
        )
        .unwrap()
    );
}

#[tokio::test]
async fn checkouts_follow_symlinks_only_inside_the_repository_and_are_bounded() {
    let repo = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.yaml"), "secret: 1\n").unwrap();
    write(
        repo.path(),
        &[
            (
                "agents/fb/daemonset.yaml",
                agent_ds("fb", Some("logging"), "registry.example/fb:1", ""),
            ),
            (
                "agents/fb/kustomization.yaml",
                "resources: [linked.yaml]\n".into(),
            ),
        ],
    );
    std::os::unix::fs::symlink("daemonset.yaml", repo.path().join("agents/fb/linked.yaml"))
        .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        repo.path().join("agents/fb/secret.yaml"),
    )
    .unwrap();
    commit(repo.path(), "links", &[]);
    let files = server_files(repo.path(), "agents/fb", &options())
        .await
        .unwrap();
    daemonset_manifest(&files, "logging", "fb");

    // The checkout itself: the inside link became a file, the outside one is absent.
    let state = tempfile::tempdir().unwrap();
    let mut source = nodewave::source::GitSource::open(GitSourceConfig {
        url: format!("file://{}", repo.path().display()),
        reference: GitRef::Branch("main".into()),
        path: String::new(),
        checkout_dir: state.path().join("clone"),
        credentials: Credentials::default(),
        limits: nodewave::manifest::Limits::default(),
    })
    .unwrap();
    let head = source.fetch().unwrap().head;
    let dest = state.path().join("tree");
    std::fs::create_dir(&dest).unwrap();
    let limits = nodewave::source::TreeLimits {
        max_files: 10,
        max_bytes: 1 << 20,
    };
    let stats = source.write_tree(&head, &dest, &limits).unwrap();
    assert_eq!((stats.files, stats.skipped_links), (3, 1));
    assert!(dest.join("agents/fb/linked.yaml").is_file());
    assert!(!dest.join("agents/fb/linked.yaml").is_symlink());
    assert!(!dest.join("agents/fb/secret.yaml").exists());
    assert!(source.has_file_named(&head, render::MARKER_FILES).unwrap());

    let tight = tempfile::tempdir().unwrap();
    let e = source
        .write_tree(
            &head,
            tight.path(),
            &nodewave::source::TreeLimits {
                max_files: 2,
                max_bytes: 1 << 20,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("more than 2 files"), "{e}");
    let tight = tempfile::tempdir().unwrap();
    let e = source
        .write_tree(
            &head,
            tight.path(),
            &nodewave::source::TreeLimits {
                max_files: 10,
                max_bytes: 100,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("more than 100 bytes"), "{e}");
}
