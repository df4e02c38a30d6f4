//! The server-side allowlist of Prometheus URLs a RolloutPolicy may query
//! (`--allow-prometheus-url`). A policy comes from Git, and nodewave would
//! otherwise send a request to any address its pod can reach; by default no
//! URL is allowed, so a policy with Prometheus checks is a validation error
//! until the operator allows its Prometheus.
//!
//! Entries and policy URLs are compared as parsed URLs, never as strings: the
//! scheme, host and port must be equal and the policy's path must lie at or
//! below the entry's path on a segment boundary, so `http://prom:9090` does
//! not allow `http://prom:9090.evil.example` nor `http://prom:19090`, and
//! `http://prom/team-a` does not allow `http://prom/team-ab`. Credentials, a
//! query or a fragment are never allowed in a policy's URL.

use url::Url;

/// The flag, for messages.
pub const FLAG: &str = "--allow-prometheus-url";
/// The config file key.
pub const CONFIG_KEY: &str = "allow-prometheus-urls";

/// Checks one `--allow-prometheus-url` value; returns it as given (trimmed).
pub fn parse_allowed(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    let url = Url::parse(entry).map_err(|e| {
        format!(
            "{FLAG} {entry:?} is not a URL ({e}); write it like http://prometheus.monitoring:9090"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{FLAG} {entry:?} must start with http:// or https://"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{FLAG} {entry:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{FLAG} {entry:?} must not carry credentials: policies may not send any"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{FLAG} {entry:?} must not have a query or fragment: it is a prefix of base URLs"
        ));
    }
    Ok(entry.to_string())
}

/// `Ok` when the policy's Prometheus `url` is allowed by one of `allowed`;
/// otherwise the whole message of the finding.
pub fn check(url: &str, allowed: &[String]) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| {
        format!("prometheus url {url:?} cannot be parsed ({e}), so it cannot be checked against the allowed Prometheus URLs")
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "prometheus url {url:?} carries credentials (user:password@), which would be sent with every query and logged: remove them"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "prometheus url {url:?} has a query or fragment: give the base URL of the Prometheus HTTP API (nodewave appends /api/v1/query)"
        ));
    }
    if allowed
        .iter()
        .filter_map(|a| Url::parse(a).ok())
        .any(|a| within(&a, &parsed))
    {
        return Ok(());
    }
    let fix = format!(
        "the operator may allow it with {FLAG} {} (config file: {CONFIG_KEY}), on `nodewave run` and `nodewave validate`",
        base(&parsed)
    );
    if allowed.is_empty() {
        Err(format!(
            "prometheus url {url:?} is not allowed: this nodewave allows no Prometheus URL (none is allowed by default); {fix}, or remove the policy's prometheus checks"
        ))
    } else {
        Err(format!(
            "prometheus url {url:?} is not allowed (allowed: {}): point it at an allowed Prometheus, or {fix}",
            allowed.join(", ")
        ))
    }
}

/// Whether `url` is `entry` or below it.
fn within(entry: &Url, url: &Url) -> bool {
    entry.scheme() == url.scheme()
        && entry.host() == url.host()
        && entry.port_or_known_default() == url.port_or_known_default()
        && {
            let prefix = entry.path().trim_end_matches('/');
            let path = url.path();
            prefix.is_empty()
                || path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
}

/// `scheme://host:port` of a URL, what the fix suggests allowing.
fn base(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| parse_allowed(e).unwrap()).collect()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let e = check("http://prometheus.monitoring:9090", &[]).unwrap_err();
        assert!(e.contains("allows no Prometheus URL"), "{e}");
        assert!(
            e.contains("--allow-prometheus-url http://prometheus.monitoring:9090 (config file: allow-prometheus-urls)"),
            "{e}"
        );
    }

    #[test]
    fn host_port_and_scheme_must_be_equal() {
        let a = allow(&["http://prometheus.monitoring:9090"]);
        for ok in [
            "http://prometheus.monitoring:9090",
            "http://prometheus.monitoring:9090/",
            "http://Prometheus.Monitoring:9090/prometheus",
        ] {
            assert_eq!(check(ok, &a), Ok(()), "{ok}");
        }
        // Not a port at all: refused before any comparison.
        assert!(
            check("http://prometheus.monitoring:9090.evil.example", &a)
                .unwrap_err()
                .contains("cannot be parsed")
        );
        for bad in [
            "http://prometheus.monitoring.evil.example:9090",
            "http://prometheus.monitoring:19090",
            "http://prometheus.monitoring",
            "https://prometheus.monitoring:9090",
            "http://10.0.0.1:9090",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let e = check(bad, &a).unwrap_err();
            assert!(
                e.contains("is not allowed (allowed: http://prometheus.monitoring:9090)"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn default_ports_are_the_same_port() {
        let a = allow(&["https://thanos.example", "http://prom.example:80/"]);
        assert_eq!(check("https://thanos.example:443/", &a), Ok(()));
        assert_eq!(check("http://prom.example", &a), Ok(()));
        assert!(check("https://thanos.example:8443", &a).is_err());
    }

    #[test]
    fn paths_match_on_segment_boundaries() {
        let a = allow(&["https://metrics.example/team-a/"]);
        assert_eq!(check("https://metrics.example/team-a", &a), Ok(()));
        assert_eq!(check("https://metrics.example/team-a/prom", &a), Ok(()));
        assert!(check("https://metrics.example/team-ab", &a).is_err());
        assert!(check("https://metrics.example/", &a).is_err());
        // Dot segments are resolved before comparing (as the HTTP client does).
        assert!(check("https://metrics.example/team-a/../team-b", &a).is_err());
        assert!(check("https://metrics.example/team-a/%2e%2e/team-b", &a).is_err());
    }

    #[test]
    fn credentials_queries_and_fragments_are_never_allowed() {
        let a = allow(&["http://prom:9090"]);
        assert!(
            check("http://user:secret@prom:9090", &a)
                .unwrap_err()
                .contains("carries credentials")
        );
        assert!(
            check("https://u@prom:9090/api", &a)
                .unwrap_err()
                .contains("carries credentials")
        );
        assert!(
            check("http://prom:9090@evil.example", &a)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            check("http://prom:9090/?x=1", &a)
                .unwrap_err()
                .contains("query or fragment")
        );
        assert!(check("http://prom:9090/#x", &a).is_err());
    }

    #[test]
    fn allow_entries_are_checked_with_the_flag_in_the_message() {
        for (bad, needle) in [
            ("prom:9090", "must start with http"),
            ("ftp://prom", "must start with http"),
            ("not a url", "is not a URL"),
            ("http://u:p@prom", "credentials"),
            ("http://prom/?q", "query or fragment"),
        ] {
            let e = parse_allowed(bad).unwrap_err();
            assert!(
                e.starts_with("--allow-prometheus-url") && e.contains(needle),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            parse_allowed(" http://prom:9090 ").unwrap(),
            "http://prom:9090"
        );
    }

    /// Through `manifest::load`: one finding at the url's line, with the check id
    /// as the rejection reason; allowed, the same commit loads.
    #[test]
    fn load_reports_the_url_line_and_loads_once_allowed() {
        use crate::manifest::{LoadOptions, ManifestFile, load};
        let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\n  namespace: logging\nspec:\n  selector:\n    matchLabels: {app: agent}\n  template:\n    metadata:\n      labels: {app: agent}\n    spec:\n      containers:\n        - name: agent\n          image: agent:1.0.0\n          resources:\n            requests: {cpu: 10m, memory: 16Mi}\n            limits: {cpu: 10m, memory: 16Mi}\n          livenessProbe: {httpGet: {path: /, port: 1}}\n          readinessProbe: {httpGet: {path: /, port: 1}}\n";
        let policy = "apiVersion: nodewave.io/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: agent\n  namespace: logging\nspec:\n  target:\n    name: agent\n  health:\n    prometheus:\n      url: http://prom.monitoring:9090\n      checks:\n        - name: errors\n          query: sum(rate(errors_total[5m]))\n          max: 0\n";
        let files = [
            ManifestFile {
                path: "agent.yaml".into(),
                contents: ds.into(),
            },
            ManifestFile {
                path: "policy.yaml".into(),
                contents: policy.into(),
            },
        ];
        let rejected = load(&files, &LoadOptions::default()).unwrap_err();
        assert_eq!(rejected.reason(), "prometheus-url-not-allowed");
        assert_eq!(rejected.errors.len(), 1, "{rejected}");
        let f = &rejected.errors[0];
        assert_eq!(f.location.to_string(), "policy.yaml:11");
        assert_eq!(f.object.as_deref(), Some("RolloutPolicy logging/agent"));
        assert!(
            f.message
                .contains("--allow-prometheus-url http://prom.monitoring:9090"),
            "{f}"
        );
        let opts = LoadOptions {
            allowed_prometheus_urls: vec!["http://prom.monitoring:9090".into()],
            ..LoadOptions::default()
        };
        let state = load(&files, &opts).unwrap();
        assert_eq!(state.policies.len(), 1);
        // A malformed URL stays invalid-policy only (no second finding).
        let files = [
            files[0].clone(),
            ManifestFile {
                path: "policy.yaml".into(),
                contents: policy.replace("http://prom.monitoring:9090", "ftp://prom"),
            },
        ];
        let rejected = load(&files, &opts).unwrap_err();
        assert_eq!(rejected.reason(), "invalid-policy");
        assert_eq!(rejected.errors.len(), 1, "{rejected}");
    }
}
