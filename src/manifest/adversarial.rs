//! Generators of hostile commits, for tests and benchmarks (not part of the API):
//! separator storms, deep nesting, alias bombs, huge documents, many files and
//! numbers that overflow. Pure: they return text; writing it to a directory or a
//! Git repository is the caller's business.
//!
//! [`catalogue`] lists one commit per hostile input, each rejected under
//! [`Limits::default`](super::Limits) with the check named next to it.

use std::fmt::Write as _;

use super::ManifestFile;

/// A small DaemonSet that passes every check, to put next to hostile input.
pub fn daemonset(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: agent
          image: registry.example/agent:1.0.0
          resources:
            requests: {{cpu: 10m, memory: 16Mi}}
            limits: {{cpu: 100m, memory: 64Mi}}
          livenessProbe: {{tcpSocket: {{port: 8080}}}}
          readinessProbe: {{tcpSocket: {{port: 8080}}}}
"
    )
}

/// `n` document separators and nothing else.
pub fn separator_storm(n: usize) -> String {
    "---\n".repeat(n)
}

/// `n` one-line documents.
pub fn document_storm(n: usize) -> String {
    "a: 1\n---\n".repeat(n)
}

/// A mapping of `items` keys, each holding flow sequences nested `depth` deep.
pub fn deep_nesting(depth: usize, items: usize) -> String {
    let value = format!("{}x{}", "[".repeat(depth), "]".repeat(depth));
    let mut out = String::with_capacity(items * (value.len() + 12));
    for i in 0..items {
        let _ = writeln!(out, "k{i}: {value}");
    }
    out
}

/// Block mappings nested `depth` deep (`a:` indented by two more spaces per level):
/// quadratic in bytes, so only for moderate depths.
pub fn block_nesting(depth: usize) -> String {
    let mut out = String::new();
    for level in 0..depth {
        let _ = writeln!(out, "{}a:", "  ".repeat(level));
    }
    let _ = writeln!(out, "{}x: 1", "  ".repeat(depth));
    out
}

/// "Billion laughs": `levels` anchors, each a sequence of `fanout` aliases of the
/// previous one; expanding it yields `fanout^levels` scalars from a few hundred bytes.
pub fn alias_bomb(levels: usize, fanout: usize) -> String {
    let mut out = format!("a0: &a0 [{}]\n", vec!["lol"; fanout].join(","));
    for level in 1..=levels {
        let refs = vec![format!("*a{}", level - 1); fanout].join(",");
        let _ = writeln!(out, "a{level}: &a{level} [{refs}]");
    }
    out
}

/// One document holding a flow sequence of `n` one-character scalars.
pub fn wide_document(n: usize) -> String {
    let mut out = String::with_capacity(2 * n + 8);
    out.push_str("x: [");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push('a');
    }
    out.push_str("]\n");
    out
}

/// One document with a single scalar of `bytes` bytes.
pub fn huge_scalar(bytes: usize) -> String {
    format!("x: {}\n", "a".repeat(bytes))
}

/// `n` files, each a valid DaemonSet `ds-<i>` in `namespace`.
pub fn many_files(n: usize, namespace: &str) -> Vec<ManifestFile> {
    (0..n)
        .map(|i| ManifestFile {
            path: format!("many/ds-{i:06}.yaml"),
            contents: daemonset(namespace, &format!("ds-{i}")),
        })
        .collect()
}

/// RolloutPolicies (targeting `target` in `namespace`) whose numbers overflow or
/// make no sense: each is one validation finding, never a panic.
pub fn bad_numbers(namespace: &str, target: &str) -> Vec<String> {
    let policy = |spec: &str| {
        format!(
            "apiVersion: nodewave.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {target}, namespace: {namespace}}}\nspec:\n  target: {{name: {target}}}\n{spec}"
        )
    };
    [
        "  health: {readyTimeout: \"1s18446744073709551615s\"}\n",
        "  health: {readyTimeout: \"18446744073709551615h\"}\n",
        "  health: {readyTimeout: \"99999999999999999999999s\"}\n",
        "  health: {maxRestarts: 99999999999}\n",
        "  stages: [{name: a, pools: [\"*\"], bake: \"5124095576030431h\"}]\n",
        "  stages: [{name: a, pools: [\"*\"], nodes: 4294967296}]\n",
        "  stages: [{name: a, pools: [\"*\"], maxUnavailable: 4000000000}]\n",
        "  stages: [{name: a, pools: [\"*\"], maxUnavailable: \"99999999999%\"}]\n",
        "  health: {prometheus: {url: \"http://p:99999\", checks: [{name: c, query: q, max: .nan}]}}\n",
        "  health: {prometheus: {url: \"http://p\", interval: 0s, checks: [{name: c, query: q, min: -.inf}]}}\n",
    ]
    .into_iter()
    .map(policy)
    .collect()
}

/// One hostile commit: a name, its files, and the check id that rejects it under
/// the default limits (`None`: it is valid, and must simply be cheap).
pub struct HostileCommit {
    pub name: &'static str,
    pub files: Vec<ManifestFile>,
    pub check: Option<&'static str>,
}

fn one_file(path: &str, contents: String) -> Vec<ManifestFile> {
    vec![ManifestFile {
        path: path.to_string(),
        contents,
    }]
}

/// Every hostile input, sized to exceed [`Limits::default`](super::Limits), each
/// as a commit that also holds a valid DaemonSet (`namespace`/`good`), so a test
/// can check that rejecting the commit leaves that DaemonSet alone.
pub fn catalogue(namespace: &str) -> Vec<HostileCommit> {
    let with_good = |mut files: Vec<ManifestFile>| {
        files.push(ManifestFile {
            path: "good.yaml".into(),
            contents: daemonset(namespace, "good"),
        });
        files
    };
    let limit = Some("limit-exceeded");
    vec![
        HostileCommit {
            name: "overflowing duration",
            files: with_good(one_file(
                "policy.yaml",
                bad_numbers(namespace, "good").swap_remove(0),
            )),
            check: Some("invalid-object"),
        },
        HostileCommit {
            name: "separator storm (1,000,000 separators, 4 MB)",
            files: with_good(one_file("storm.yaml", separator_storm(1_000_000))),
            check: None,
        },
        HostileCommit {
            name: "document storm",
            files: with_good(one_file("docs.yaml", document_storm(6_000))),
            check: limit,
        },
        HostileCommit {
            name: "deep nesting",
            files: with_good(one_file("deep.yaml", deep_nesting(100, 1))),
            check: limit,
        },
        HostileCommit {
            name: "alias bomb",
            files: with_good(one_file("lol.yaml", alias_bomb(9, 10))),
            check: limit,
        },
        HostileCommit {
            name: "wide document",
            files: with_good(one_file("wide.yaml", wide_document(200_000))),
            check: limit,
        },
        HostileCommit {
            name: "huge file",
            files: with_good(one_file("huge.yaml", huge_scalar(5 << 20))),
            check: limit,
        },
        HostileCommit {
            name: "many files",
            files: with_good(many_files(5_001, namespace)),
            check: limit,
        },
    ]
}
