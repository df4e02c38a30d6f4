//! Prometheus health checks: runs each check's PromQL (with `{{nodes}}` expanded to
//! the stage's nodes) against the Prometheus HTTP API at the policy's interval and
//! hands the values to the planner, which decides pass or fail.
//!
//! The URL comes from Git, so requests are bounded: only URLs allowed by
//! `--allow-prometheus-url` pass validation (`manifest::prometheus_url`),
//! redirects are not followed (they could leave the allowlist), connecting and
//! the whole request have timeouts, and a response body over
//! [`MAX_RESPONSE_BYTES`] is not read further. A query whose value is NaN for
//! any series (or not a number at all) fails its check: `max`/`min` over the
//! series must never drop it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::ObjectKey;
use crate::manifest::policy::{PrometheusCheck, PrometheusSpec};
use crate::rollout::{CheckValue, PromOutcome, Rollout};

/// Time to establish the TCP (and TLS) connection to Prometheus.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one query, from connecting to the end of the body.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read for one query: a vector of 10,000 series is
/// about 2 MB; more means the query selects far more than a stage's nodes.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Remembers each DaemonSet's last evaluation, so checks run once per interval
/// however often the rollout is looked at. Shared by the workers: the map is
/// locked only to read and store results, never across a query.
#[derive(Default)]
pub struct Gatekeeper {
    http: Mutex<Option<reqwest::Client>>,
    last: Mutex<BTreeMap<ObjectKey, Tracked>>,
    limits: Limits,
}

/// Bounds of one query (the constants above; tests shorten them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    connect_timeout: Duration,
    timeout: Duration,
    max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            timeout: QUERY_TIMEOUT,
            max_body: MAX_RESPONSE_BYTES,
        }
    }
}

struct Tracked {
    scope: (String, usize),
    evaluated_ms: i64,
    outcome: PromOutcome,
}

/// A regex matching exactly the given node names, for `node=~"{{nodes}}"`.
/// Escaped for a PromQL double-quoted string.
pub fn nodes_regex(nodes: &[String]) -> String {
    nodes
        .iter()
        .map(|n| {
            let mut out = String::new();
            for ch in n.chars() {
                if ".+*?()[]{}|^$\\".contains(ch) {
                    out.push_str("\\\\");
                }
                out.push(ch);
            }
            out
        })
        .collect::<Vec<_>>()
        .join("|")
}

pub fn expand(query: &str, nodes: &[String]) -> String {
    query.replace("{{nodes}}", &nodes_regex(nodes))
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: serde_json::Value,
}

/// Values of an instant query: every sample of a vector, or the scalar. A
/// sample that is not a number is NaN (it fails the check, never vanishes).
fn values(data: &ApiData) -> Result<Vec<f64>, String> {
    let parse = |v: &serde_json::Value| -> f64 {
        v.get(1)
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data.result_type.as_str() {
        "vector" => Ok(data
            .result
            .as_array()
            .map(|a| a.iter().map(|s| parse(&s["value"])).collect())
            .unwrap_or_default()),
        "scalar" => Ok(vec![parse(&data.result)]),
        other => Err(format!(
            "unsupported result type {other}; use an instant vector or scalar"
        )),
    }
}

/// The largest value, NaN if any is NaN (`f64::max` would drop it).
fn highest(vals: &[f64]) -> Option<f64> {
    vals.iter().copied().reduce(|a, b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        }
    })
}

/// The smallest value, NaN if any is NaN.
fn lowest(vals: &[f64]) -> Option<f64> {
    vals.iter().copied().reduce(|a, b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.min(b)
        }
    })
}

/// What the gate compares for one check: the highest value against `max`, the
/// lowest against `min` (a check with both yields two values).
fn check_values(check: &PrometheusCheck, vals: &[f64]) -> Vec<CheckValue> {
    let value = |v: Option<f64>, max: Option<f64>, min: Option<f64>| CheckValue {
        name: check.name.clone(),
        value: v,
        max,
        min,
    };
    match (check.max, check.min) {
        (Some(max), Some(min)) => vec![
            value(highest(vals), Some(max), None),
            value(lowest(vals), None, Some(min)),
        ],
        (Some(max), None) => vec![value(highest(vals), Some(max), None)],
        (None, min) => vec![value(lowest(vals), None, min)],
    }
}

/// The body of `resp`, refused beyond `limit` bytes (announced or received).
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let too_large = || {
        format!(
            "the response is larger than {limit} bytes; make the query return fewer series (aggregate with sum/max by)"
        )
    };
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?
    {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Gatekeeper {
    pub fn forget(&self, key: &ObjectKey) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The checks' outcome for this rollout stage, evaluated again once the
    /// policy's interval has passed.
    pub async fn evaluate(
        &self,
        key: &ObjectKey,
        r: &Rollout,
        spec: &PrometheusSpec,
        nodes: &[String],
        now_ms: i64,
    ) -> PromOutcome {
        let scope = (r.commit.clone(), r.stage);
        let interval = i64::try_from(spec.interval.as_millis()).unwrap_or(i64::MAX);
        let previous_unreachable = {
            let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = last.get(key)
                && t.scope == scope
                && now_ms - t.evaluated_ms < interval
            {
                return t.outcome.clone();
            }
            match last.get(key) {
                Some(Tracked {
                    scope: s,
                    outcome: PromOutcome::Unreachable { since_ms, .. },
                    ..
                }) if *s == scope => Some(*since_ms),
                _ => None,
            }
        };
        let outcome = match self.query_all(spec, nodes).await {
            Ok(values) => PromOutcome::Values(values),
            Err(error) => {
                tracing::warn!(url = %spec.url, %error, "Prometheus check could not be evaluated");
                PromOutcome::Unreachable {
                    since_ms: previous_unreachable.unwrap_or(now_ms),
                    error,
                }
            }
        };
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key.clone(),
                Tracked {
                    scope,
                    evaluated_ms: now_ms,
                    outcome: outcome.clone(),
                },
            );
        outcome
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let mut http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = http.as_ref() {
            return Ok(c.clone());
        }
        // No redirects: a redirect could lead outside --allow-prometheus-url.
        let c = reqwest::Client::builder()
            .connect_timeout(self.limits.connect_timeout)
            .timeout(self.limits.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        *http = Some(c.clone());
        Ok(c)
    }

    /// The message for a failed request; a timeout names the limit it hit.
    fn request_error(&self, url: &str, e: &reqwest::Error) -> String {
        if e.is_connect() && e.is_timeout() {
            format!(
                "cannot connect to {url} within the connect timeout of {:?}: is the address right and Prometheus up?",
                self.limits.connect_timeout
            )
        } else if e.is_timeout() {
            format!(
                "{url} did not answer within {:?} (connect timeout {:?}): is Prometheus overloaded or the query too expensive?",
                self.limits.timeout, self.limits.connect_timeout
            )
        } else {
            format!("cannot reach {url}: {e}")
        }
    }

    async fn query_all(
        &self,
        spec: &PrometheusSpec,
        nodes: &[String],
    ) -> Result<Vec<CheckValue>, String> {
        let http = self.client()?;
        let url = format!("{}/api/v1/query", spec.url.trim_end_matches('/'));
        let mut out = Vec::new();
        for check in &spec.checks {
            let query = expand(&check.query, nodes);
            let resp = http
                .get(&url)
                .query(&[("query", query.as_str())])
                .send()
                .await
                .map_err(|e| self.request_error(&url, &e))?;
            let status = resp.status();
            if status.is_redirection() {
                return Err(format!(
                    "{url} answered {status} (a redirect, not followed): point the policy at the Prometheus API itself"
                ));
            }
            let body = read_limited(resp, self.limits.max_body)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let body: ApiResponse = serde_json::from_slice(&body).map_err(|e| {
                format!("{url} answered {status} with a body that is not the Prometheus API: {e}")
            })?;
            if body.status != "success" {
                // A query error is the check's fault, not Prometheus being away: fail the check.
                out.extend(check_values(check, &[]));
                tracing::warn!(check = %check.name, error = body.error.as_deref().unwrap_or("unknown"), "Prometheus rejected the query");
                continue;
            }
            let vals = body
                .data
                .as_ref()
                .map(values)
                .transpose()?
                .unwrap_or_default();
            if vals.iter().any(|v| v.is_nan()) {
                tracing::warn!(check = %check.name, series = vals.len(), "a Prometheus check returned NaN; the check fails");
            }
            out.extend(check_values(check, &vals));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_expand_to_an_escaped_alternation() {
        let nodes = vec![
            "kwok-pool-a-1".to_string(),
            "ip-10-0-0-1.ec2.internal".to_string(),
        ];
        assert_eq!(
            expand(r#"up{node=~"{{nodes}}"}"#, &nodes),
            r#"up{node=~"kwok-pool-a-1|ip-10-0-0-1\\.ec2\\.internal"}"#
        );
    }

    #[test]
    fn vector_and_scalar_values() {
        let v: ApiData = serde_json::from_value(serde_json::json!({
            "resultType": "vector",
            "result": [{"metric": {}, "value": [1.0, "2.5"]}, {"metric": {}, "value": [1.0, "0.5"]}]
        }))
        .unwrap();
        assert_eq!(values(&v).unwrap(), vec![2.5, 0.5]);
        let s: ApiData = serde_json::from_value(
            serde_json::json!({"resultType": "scalar", "result": [1.0, "7"]}),
        )
        .unwrap();
        assert_eq!(values(&s).unwrap(), vec![7.0]);
    }

    #[test]
    #[allow(clippy::float_cmp)] // exact values parsed from the response
    fn nan_and_non_numbers_are_kept_and_fail_max_and_min() {
        let v: ApiData = serde_json::from_value(serde_json::json!({
            "resultType": "vector",
            "result": [
                {"metric": {"node": "a"}, "value": [1.0, "0"]},
                {"metric": {"node": "b"}, "value": [1.0, "NaN"]},
                {"metric": {"node": "c"}, "value": [1.0, "+Inf"]},
                {"metric": {"node": "d"}, "value": [1.0, "twelve"]},
                {"metric": {"node": "e"}, "value": [1.0]}
            ]
        }))
        .unwrap();
        let vals = values(&v).unwrap();
        assert_eq!(vals.len(), 5, "no sample is dropped");
        assert_eq!(vals[0], 0.0);
        assert!(vals[1].is_nan() && vals[3].is_nan() && vals[4].is_nan());
        assert_eq!(vals[2], f64::INFINITY);
        let check = |max: Option<f64>, min: Option<f64>| PrometheusCheck {
            name: "errors".into(),
            query: "q".into(),
            max,
            min,
        };
        // f64::max(0, NaN) is 0: the NaN series would pass unseen.
        assert_eq!(f64::max(0.0, f64::NAN), 0.0);
        for c in [check(Some(0.0), None), check(None, Some(0.0))] {
            let out = check_values(&c, &[0.0, f64::NAN, 0.0]);
            assert_eq!(out.len(), 1);
            assert!(out[0].value.is_some_and(f64::is_nan), "{out:?}");
        }
        let both = check_values(&check(Some(1.0), Some(0.0)), &[f64::NAN, 0.5]);
        assert_eq!(both.len(), 2);
        assert!(both.iter().all(|c| c.value.is_some_and(f64::is_nan)));
        let fine = check_values(&check(Some(1.0), Some(0.0)), &[0.2, 0.7]);
        assert_eq!(
            (fine[0].value, fine[0].max, fine[1].value, fine[1].min),
            (Some(0.7), Some(1.0), Some(0.2), Some(0.0))
        );
        assert_eq!(check_values(&check(Some(1.0), None), &[])[0].value, None);
    }

    /// A loopback HTTP server that answers every request with `response`, or
    /// never answers (`None`).
    async fn serve(response: Option<Vec<u8>>) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    match response {
                        Some(r) => {
                            let _ = sock.write_all(&r).await;
                            let _ = sock.shutdown().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_connect_that_hangs_ends_at_the_connect_timeout() {
        // A listener that never accepts, with its accept queue filled: the
        // kernel then drops further SYNs, so a connect hangs as it would to a
        // host that silently drops packets.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                fillers.push(c);
            }
        }
        let gk = Gatekeeper {
            limits: Limits {
                connect_timeout: Duration::from_millis(300),
                timeout: Duration::from_secs(30),
                max_body: 4096,
            },
            ..gatekeeper(4096)
        };
        let e = gk
            .query_all(&spec(&format!("http://{addr}")), &[])
            .await
            .unwrap_err();
        assert!(
            e.contains("cannot connect") && e.contains("connect timeout of 300ms"),
            "{e}"
        );
        // (The 30 s request timeout would say "did not answer within 30s".)
        drop((listener, fillers));
    }

    fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n{body}").into_bytes()
    }

    fn spec(url: &str) -> PrometheusSpec {
        PrometheusSpec {
            url: url.to_string(),
            interval: Duration::from_secs(1),
            unreachable_grace: Duration::from_secs(1),
            checks: vec![PrometheusCheck {
                name: "errors".into(),
                query: "sum(errors)".into(),
                max: Some(0.0),
                min: None,
            }],
        }
    }

    fn gatekeeper(max_body: usize) -> Gatekeeper {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Gatekeeper {
            limits: Limits {
                connect_timeout: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                max_body,
            },
            ..Gatekeeper::default()
        }
    }

    const NAN_VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"node":"a"},"value":[1,"0"]},{"metric":{"node":"b"},"value":[1,"NaN"]}]}}"#;

    #[tokio::test]
    async fn a_nan_series_reaches_the_gate_as_nan() {
        let (url, task) = serve(Some(response(
            "200 OK",
            &format!("content-length: {}\r\n", NAN_VECTOR.len()),
            NAN_VECTOR,
        )))
        .await;
        let out = gatekeeper(4096).query_all(&spec(&url), &[]).await.unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].value.is_some_and(f64::is_nan), "{out:?}");
        task.abort();
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_announced_or_streamed() {
        let big = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            vec![r#"{"metric":{},"value":[1,"0"]}"#; 100].join(",")
        );
        assert!(big.len() > 2048);
        let announced = response(
            "200 OK",
            &format!("content-length: {}\r\n", big.len()),
            &big,
        );
        // No length: read until the connection closes.
        let streamed = response("200 OK", "", &big);
        for r in [announced, streamed] {
            let (url, task) = serve(Some(r)).await;
            let e = gatekeeper(2048)
                .query_all(&spec(&url), &[])
                .await
                .unwrap_err();
            assert!(e.contains("larger than 2048 bytes"), "{e}");
            // Within the limit the same body is read.
            let out = gatekeeper(big.len())
                .query_all(&spec(&url), &[])
                .await
                .unwrap();
            assert_eq!(out[0].value, Some(0.0));
            task.abort();
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_silence_times_out() {
        let (target, target_task) = serve(Some(response(
            "200 OK",
            &format!("content-length: {}\r\n", NAN_VECTOR.len()),
            NAN_VECTOR,
        )))
        .await;
        let (url, task) = serve(Some(response(
            "302 Found",
            &format!("location: {target}/api/v1/query\r\ncontent-length: 0\r\n"),
            "",
        )))
        .await;
        let e = gatekeeper(4096)
            .query_all(&spec(&url), &[])
            .await
            .unwrap_err();
        assert!(e.contains("302") && e.contains("not followed"), "{e}");
        task.abort();
        target_task.abort();

        // A Prometheus that accepts and never answers: the total timeout ends it.
        let (url, task) = serve(None).await;
        let e = gatekeeper(4096)
            .query_all(&spec(&url), &[])
            .await
            .unwrap_err();
        assert!(e.contains("did not answer within 500ms"), "{e}");
        task.abort();
    }
}
