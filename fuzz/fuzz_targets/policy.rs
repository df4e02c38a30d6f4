//! RolloutPolicy validation, structure-aware: policies are assembled from
//! fuzzer-chosen stages, pools, durations, counts and Prometheus checks (strings
//! JSON-quoted, numbers of any size and sign), validated next to their DaemonSet.
//! Properties: no panic; an accepted policy has every value within its documented
//! range, and its stages resolve against any set of nodes with every node in
//! exactly one stage. The policy's own Prometheus URL is allowed when it is a
//! valid `--allow-prometheus-url` entry (so accepted policies with Prometheus
//! checks are reached), and an accepted policy's URL passes the allowlist.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nodewave::manifest::adversarial::daemonset;
use nodewave::manifest::policy::IntOrPercent;
use nodewave::manifest::{LoadOptions, ManifestFile, ObjectKey, load, prometheus_url};
use nodewave::rollout::{HealthRules, NodeInfo, resolve_stages};

#[derive(Arbitrary, Debug)]
enum Dur {
    Parts(Vec<(u64, u8)>),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Num {
    Small(u8),
    Int(i64),
    Big(u64),
    Percent(u64),
    Float(f64),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct StageIn {
    name: Option<String>,
    pools: Vec<u8>,
    star: bool,
    nodes: Option<Num>,
    max_unavailable: Option<Num>,
    bake: Option<Dur>,
    manual: bool,
}

#[derive(Arbitrary, Debug)]
struct CheckIn {
    name: String,
    query: String,
    min: Option<Num>,
    max: Option<Num>,
}

#[derive(Arbitrary, Debug)]
struct PromIn {
    url: String,
    port: Option<Num>,
    interval: Option<Dur>,
    grace: Option<Dur>,
    checks: Vec<CheckIn>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    stages: Vec<StageIn>,
    ready_timeout: Option<Dur>,
    max_restarts: Option<Num>,
    fatal_reasons: Option<Vec<String>>,
    prometheus: Option<PromIn>,
    rollback_automatic: Option<bool>,
    rollback_max_unavailable: Option<Num>,
    pool_label: Option<String>,
    /// (node index, pool index or none) for stage resolution.
    nodes: Vec<(u8, Option<u8>)>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn dur(d: &Dur) -> String {
    match d {
        Dur::Parts(parts) => {
            let mut s = String::new();
            for (n, unit) in parts.iter().take(4) {
                let unit = ["ms", "s", "m", "h", "d", ""][usize::from(*unit) % 6];
                let _ = write!(s, "{n}{unit}");
            }
            q(&s)
        }
        Dur::Raw(s) => q(s),
    }
}

fn num(n: &Num) -> String {
    match n {
        Num::Small(v) => v.to_string(),
        Num::Int(v) => v.to_string(),
        Num::Big(v) => v.to_string(),
        Num::Percent(v) => q(&format!("{v}%")),
        Num::Float(v) if v.is_finite() => format!("{v:?}"),
        Num::Float(_) => ".nan".to_string(),
        Num::Raw(s) => q(s),
    }
}

fn pool(i: u8) -> String {
    format!("pool-{}", i % 6)
}

fn render(input: &Input) -> String {
    let mut y = String::from(
        "apiVersion: nodewave.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {name: agent, namespace: ns}\nspec:\n  target: {name: agent}\n",
    );
    if let Some(label) = &input.pool_label {
        let _ = writeln!(y, "  poolLabel: {}", q(label));
    }
    if !input.stages.is_empty() {
        y.push_str("  stages:\n");
        for (i, s) in input.stages.iter().take(8).enumerate() {
            let name = s.name.clone().unwrap_or_else(|| format!("s{i}"));
            let mut pools: Vec<String> = s.pools.iter().take(4).map(|p| q(&pool(*p))).collect();
            if s.star {
                pools.push(q("*"));
            }
            let _ = writeln!(
                y,
                "    - name: {}\n      pools: [{}]",
                q(&name),
                pools.join(", ")
            );
            if let Some(n) = &s.nodes {
                let _ = writeln!(y, "      nodes: {}", num(n));
            }
            if let Some(n) = &s.max_unavailable {
                let _ = writeln!(y, "      maxUnavailable: {}", num(n));
            }
            if let Some(d) = &s.bake {
                let _ = writeln!(y, "      bake: {}", dur(d));
            }
            if s.manual {
                y.push_str("      approval: manual\n");
            }
        }
    }
    y.push_str("  health:\n");
    if let Some(d) = &input.ready_timeout {
        let _ = writeln!(y, "    readyTimeout: {}", dur(d));
    }
    if let Some(n) = &input.max_restarts {
        let _ = writeln!(y, "    maxRestarts: {}", num(n));
    }
    if let Some(reasons) = &input.fatal_reasons {
        let reasons: Vec<String> = reasons.iter().take(4).map(|r| q(r)).collect();
        let _ = writeln!(y, "    fatalReasons: [{}]", reasons.join(", "));
    }
    if let Some(p) = &input.prometheus {
        let _ = writeln!(y, "    prometheus:\n      url: {}", q(&prom_url(p)));
        if let Some(d) = &p.interval {
            let _ = writeln!(y, "      interval: {}", dur(d));
        }
        if let Some(d) = &p.grace {
            let _ = writeln!(y, "      unreachableGrace: {}", dur(d));
        }
        y.push_str("      checks:\n");
        for c in p.checks.iter().take(4) {
            let _ = writeln!(
                y,
                "        - name: {}\n          query: {}",
                q(&c.name),
                q(&c.query)
            );
            if let Some(n) = &c.min {
                let _ = writeln!(y, "          min: {}", num(n));
            }
            if let Some(n) = &c.max {
                let _ = writeln!(y, "          max: {}", num(n));
            }
        }
    }
    if input.rollback_automatic.is_some() || input.rollback_max_unavailable.is_some() {
        y.push_str("  rollback:\n");
        if let Some(a) = input.rollback_automatic {
            let _ = writeln!(y, "    automatic: {a}");
        }
        if let Some(n) = &input.rollback_max_unavailable {
            let _ = writeln!(y, "    maxUnavailable: {}", num(n));
        }
    }
    y
}

/// The policy's Prometheus URL as rendered.
fn prom_url(p: &PromIn) -> String {
    match &p.port {
        Some(port) => format!("http://{}:{}", p.url, num(port).trim_matches('"')),
        None => p.url.clone(),
    }
}

fn count_ok(v: IntOrPercent) -> bool {
    match v {
        IntOrPercent::Count(n) => n <= 100_000,
        IntOrPercent::Percent(p) => (1..=100).contains(&p),
    }
}

fuzz_target!(|input: Input| {
    let files = [
        ManifestFile {
            path: "ds.yaml".into(),
            contents: daemonset("ns", "agent"),
        },
        ManifestFile {
            path: "policy.yaml".into(),
            contents: render(&input),
        },
    ];
    let opts = LoadOptions {
        allowed_prometheus_urls: input
            .prometheus
            .as_ref()
            .and_then(|p| prometheus_url::parse_allowed(&prom_url(p)).ok())
            .into_iter()
            .collect(),
        ..LoadOptions::default()
    };
    let state = match load(&files, &opts) {
        Ok(state) => state,
        Err(rejected) => {
            for f in &rejected.errors {
                assert!(f.location.line.is_some(), "{f}");
            }
            return;
        }
    };
    let policy = &state.policies[&ObjectKey::new("ns", "agent")];
    let spec = &policy.spec;
    let hour = Duration::from_secs(3600);
    assert!((Duration::from_secs(1)..=24 * hour).contains(&spec.health.ready_timeout));
    for s in &spec.stages {
        assert!(s.bake.is_none_or(|b| b <= 720 * hour));
        assert!(s.nodes.is_none_or(|n| (1..=100_000).contains(&n)));
        assert!(count_ok(s.max_unavailable), "{:?}", s.max_unavailable);
    }
    assert!(count_ok(spec.rollback.max_unavailable));
    if let Some(p) = &spec.health.prometheus {
        assert_eq!(
            prometheus_url::check(&p.url, &opts.allowed_prometheus_urls),
            Ok(())
        );
        assert!((Duration::from_secs(1)..=hour).contains(&p.interval));
        assert!(p.unreachable_grace <= 24 * hour);
        for c in &p.checks {
            assert!(c.min.is_none_or(f64::is_finite) && c.max.is_none_or(f64::is_finite));
        }
    }
    let _ = HealthRules::from(&spec.health);

    // Any accepted policy resolves against any nodes: each node in one stage.
    let nodes: Vec<NodeInfo> = input
        .nodes
        .iter()
        .take(64)
        .map(|(n, p)| NodeInfo::new(format!("node-{n}"), p.map(pool).as_deref()))
        .collect();
    let stages = resolve_stages(spec, &nodes, &BTreeMap::new());
    let mut seen = BTreeSet::new();
    for stage in &stages {
        assert!(stage.max_unavailable >= 1, "{stage:?}");
        for node in &stage.nodes {
            assert!(
                seen.insert(node.clone()),
                "{node} in two stages: {stages:?}"
            );
        }
    }
    let expected: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let seen: BTreeSet<&str> = seen.iter().map(|n: &std::sync::Arc<str>| &**n).collect();
    assert_eq!(seen, expected, "{stages:?}");
});
