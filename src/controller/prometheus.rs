//! Prometheus health checks: runs each check's PromQL (with `{{nodes}}` expanded to
//! the stage's nodes) against the Prometheus HTTP API at the policy's interval and
//! hands the values to the planner, which decides pass or fail.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::ObjectKey;
use crate::manifest::policy::PrometheusSpec;
use crate::rollout::{CheckValue, PromOutcome, Rollout};

/// Remembers each DaemonSet's last evaluation, so checks run once per interval
/// however often the rollout is looked at. Shared by the workers: the map is
/// locked only to read and store results, never across a query.
#[derive(Default)]
pub struct Gatekeeper {
    http: Mutex<Option<reqwest::Client>>,
    last: Mutex<BTreeMap<ObjectKey, Tracked>>,
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

/// Values of an instant query: every sample of a vector, or the scalar.
fn values(data: &ApiData) -> Result<Vec<f64>, String> {
    let parse = |v: &serde_json::Value| -> Option<f64> { v.get(1)?.as_str()?.parse().ok() };
    match data.result_type.as_str() {
        "vector" => Ok(data
            .result
            .as_array()
            .map(|a| a.iter().filter_map(|s| parse(&s["value"])).collect())
            .unwrap_or_default()),
        "scalar" => Ok(parse(&data.result).into_iter().collect()),
        other => Err(format!(
            "unsupported result type {other}; use an instant vector or scalar"
        )),
    }
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
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        *http = Some(c.clone());
        Ok(c)
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
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let status = resp.status();
            let body: ApiResponse = resp.json().await.map_err(|e| {
                format!("{url} answered {status} with a body that is not the Prometheus API: {e}")
            })?;
            if body.status != "success" {
                // A query error is the check's fault, not Prometheus being away: fail the check.
                out.push(CheckValue {
                    name: check.name.clone(),
                    value: None,
                    max: check.max,
                    min: check.min,
                });
                tracing::warn!(check = %check.name, error = body.error.as_deref().unwrap_or("unknown"), "Prometheus rejected the query");
                continue;
            }
            let vals = body
                .data
                .as_ref()
                .map(values)
                .transpose()?
                .unwrap_or_default();
            let value = if check.max.is_some() {
                vals.iter().copied().reduce(f64::max)
            } else {
                vals.iter().copied().reduce(f64::min)
            };
            if let (Some(max), Some(min)) = (check.max, check.min) {
                let lo = vals.iter().copied().reduce(f64::min);
                out.push(CheckValue {
                    name: check.name.clone(),
                    value,
                    max: Some(max),
                    min: None,
                });
                out.push(CheckValue {
                    name: check.name.clone(),
                    value: lo,
                    max: None,
                    min: Some(min),
                });
            } else {
                out.push(CheckValue {
                    name: check.name.clone(),
                    value,
                    max: check.max,
                    min: check.min,
                });
            }
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
}
