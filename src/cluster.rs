//! Everything nodewave does to the Kubernetes API besides the rollout record:
//! server-side apply (and its dry run for diffs), the update revision, deleting
//! pods with a UID precondition and pruned DaemonSets, and Events. Thin on
//! purpose: decisions are made in `plan` and `rollout`, reads come from the
//! watch-fed `store`.

pub mod dynamic;
pub mod revision;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Config, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::keys;
use crate::manifest::ObjectKey;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot load Kubernetes configuration: {0}")]
    Config(String),
    #[error("Kubernetes API {verb} {what} failed: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ClusterError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "kube_config",
            Self::Api { .. } => "kube_api",
            Self::Invalid(_) => "invalid_object",
        }
    }

    /// True when the API server answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { source, .. } if is_status(source, 404))
    }

    /// True when the API server answered 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Api { source, .. } if is_status(source, 403))
    }

    /// True when an apply failed because the object's namespace does not exist.
    pub fn is_namespace_missing(&self) -> bool {
        matches!(self, Self::Api { source, .. }
            if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 404 && s.message.contains("namespaces")))
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Builds a client from an explicit kubeconfig, or the usual inference
/// (`KUBECONFIG`, `~/.kube/config`, in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?
        }
        None => Config::infer()
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))
}

/// How long a published Event is counted up (as a series) instead of repeated.
const EVENT_SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Events published recently, keyed by everything that makes them the same Event:
/// the object, type, reason *and note*. (kube's `Recorder` leaves the note out of
/// its key, so a second `CommitRejected` for another commit within minutes showed
/// the first commit's message.)
type EventCache = Arc<Mutex<HashMap<String, (String, i32, Timestamp)>>>;

#[derive(Clone)]
pub struct Cluster {
    client: Client,
    metrics: Metrics,
    instance: String,
    events: EventCache,
}

impl Cluster {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| "nodewave".into()),
            events: EventCache::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn record<T>(&self, verb: &'static str, r: &std::result::Result<T, kube::Error>) {
        let ok = match r {
            Ok(_) => true,
            Err(e) => is_status(e, 404) || is_status(e, 409),
        };
        self.metrics.kube_request(verb, ok);
    }

    fn daemonsets(&self, ns: &str) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn get_daemonset(&self, key: &ObjectKey) -> Result<Option<DaemonSet>> {
        let r = self.daemonsets(&key.namespace).get_opt(&key.name).await;
        self.record("get", &r);
        r.map_err(|e| api_err("get", format!("DaemonSet {key}"), e))
    }

    /// Every DaemonSet nodewave manages, in all namespaces.
    pub async fn managed_daemonsets(&self) -> Result<Vec<DaemonSet>> {
        let api: Api<DaemonSet> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            keys::MANAGED_BY_LABEL,
            keys::MANAGED_BY_VALUE
        ));
        let r = api.list(&lp).await;
        self.record("list", &r);
        Ok(
            r.map_err(|e| api_err("list", "managed DaemonSets".into(), e))?
                .items,
        )
    }

    /// Server-side apply as field manager `nodewave`, forced. With `dry_run` the
    /// API server computes the result (defaulting, admission) without storing it.
    pub async fn apply(&self, obj: &Value, dry_run: bool) -> Result<Value> {
        let (ns, name) = namespace_and_name(obj)?;
        let mut pp = PatchParams::apply(keys::FIELD_MANAGER).force();
        pp.field_validation = Some(kube::api::ValidationDirective::Strict);
        if dry_run {
            pp = pp.dry_run();
        }
        let r = self
            .daemonsets(&ns)
            .patch(&name, &pp, &Patch::Apply(obj))
            .await;
        let verb = if dry_run { "dry_run_apply" } else { "apply" };
        self.record(verb, &r);
        let ds = r.map_err(|e| api_err(verb, format!("DaemonSet {ns}/{name}"), e))?;
        serde_json::to_value(ds).map_err(|e| ClusterError::Invalid(e.to_string()))
    }

    /// Removes annotations (JSON merge patch with nulls), leaving the applied
    /// fields to server-side apply.
    pub async fn remove_annotations(&self, key: &ObjectKey, names: &[&str]) -> Result<()> {
        let nulls: BTreeMap<&str, Option<String>> = names.iter().map(|n| (*n, None)).collect();
        let patch = json!({"metadata": {"annotations": nulls}});
        let pp = PatchParams {
            field_manager: Some(format!("{}-state", keys::FIELD_MANAGER)),
            ..PatchParams::default()
        };
        let r = self
            .daemonsets(&key.namespace)
            .patch(&key.name, &pp, &Patch::Merge(&patch))
            .await;
        self.record("patch", &r);
        r.map(|_| ())
            .map_err(|e| api_err("annotate", format!("DaemonSet {key}"), e))
    }

    pub async fn delete_daemonset(&self, key: &ObjectKey) -> Result<()> {
        let r = self
            .daemonsets(&key.namespace)
            .delete(&key.name, &DeleteParams::background())
            .await;
        self.record("delete", &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_err("delete", format!("DaemonSet {key}"), e)),
        }
    }

    /// The revision hash new pods of `ds` get, once the DaemonSet controller
    /// has made its template current (`None` before; see [`revision`]). One
    /// LIST, made while a rollout waits to start: the controller writes the
    /// revision before it reports the generation `observed`, so a read after
    /// either finds it.
    pub async fn update_revision(&self, ds: &DaemonSet, observed: bool) -> Result<Option<String>> {
        let ns = ds.namespace().unwrap_or_default();
        let selector = ds
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &ns);
        let r = api.list(&ListParams::default().labels(&selector)).await;
        self.record("list", &r);
        let list = r.map_err(|e| api_err("list", format!("ControllerRevisions in {ns}"), e))?;
        Ok(revision::update_revision(&list.items, ds, observed))
    }

    /// Deletes a pod only if it is still the one nodewave decided to replace.
    /// Already gone or already replaced counts as done.
    pub async fn delete_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let dp = DeleteParams::default().preconditions(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        });
        let r = api.delete(name, &dp).await;
        self.record("delete", &r);
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(e) => Err(api_err("delete", format!("pod {namespace}/{name}"), e)),
        }
    }

    pub async fn namespace_exists(&self, ns: &str) -> Result<bool> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let r = api.get_opt(ns).await;
        self.record("get", &r);
        Ok(r.map_err(|e| api_err("get", format!("namespace {ns}"), e))?
            .is_some())
    }

    pub async fn create_namespace(&self, ns: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
            "labels": {keys::MANAGED_BY_LABEL: keys::MANAGED_BY_VALUE}}});
        let r = api
            .patch(
                ns,
                &PatchParams::apply(keys::FIELD_MANAGER),
                &Patch::Apply(&obj),
            )
            .await;
        self.record("apply", &r);
        r.map(|_| ())
            .map_err(|e| api_err("create", format!("namespace {ns}"), e))
    }

    /// Publishes a Kubernetes Event about a DaemonSet. Failures are logged, never
    /// fatal: an Event is a report, not state.
    pub async fn event(
        &self,
        key: &ObjectKey,
        uid: Option<&str>,
        warning: bool,
        reason: &str,
        note: &str,
    ) {
        let reference = ObjectReference {
            api_version: Some(DaemonSet::api_version(&()).into_owned()),
            kind: Some(DaemonSet::kind(&()).into_owned()),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: uid.map(String::from),
            ..ObjectReference::default()
        };
        self.publish(reference, warning, reason, note).await;
    }

    /// Publishes an Event about a namespace (stored in that namespace), for news
    /// that concerns no existing DaemonSet.
    pub async fn namespace_event(&self, namespace: &str, warning: bool, reason: &str, note: &str) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(namespace.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectReference::default()
        };
        self.publish(reference, warning, reason, note).await;
    }

    async fn publish(&self, reference: ObjectReference, warning: bool, reason: &str, note: &str) {
        let mut note = note.to_string();
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let ns = reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = reference.name.clone().unwrap_or_default();
        let type_ = if warning { "Warning" } else { "Normal" };
        let cache_key = format!(
            "{ns}\0{}\0{name}\0{}\0{type_}\0{reason}\0{note}",
            reference.kind.as_deref().unwrap_or_default(),
            reference.uid.as_deref().unwrap_or_default()
        );
        let now = Timestamp::now();
        let seen = {
            let mut cache = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            cache.retain(|_, (_, _, last)| *last + EVENT_SERIES_TTL > now);
            cache.get(&cache_key).cloned()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let mut published = None;
        if let Some((event_name, count, _)) = seen {
            let patch = json!({"series": EventSeries {
                count: count + 1,
                last_observed_time: MicroTime(now),
            }});
            let r = api
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            self.record("event", &r);
            published = Some(r.map(|_| (event_name, count + 1)));
        }
        // New, or the earlier Event is gone (expired or deleted): create one.
        if matches!(published, None | Some(Err(kube::Error::Api(_)))) {
            let event = Event {
                action: Some(reason.to_string()),
                reason: Some(reason.to_string()),
                event_time: Some(MicroTime(now)),
                regarding: Some(reference),
                note: Some(note),
                metadata: ObjectMeta {
                    namespace: Some(ns.clone()),
                    name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                    ..ObjectMeta::default()
                },
                reporting_controller: Some("nodewave".into()),
                reporting_instance: Some(self.instance.clone()),
                type_: Some(type_.into()),
                ..Event::default()
            };
            let r = api.create(&PostParams::default(), &event).await;
            self.record("event", &r);
            published = Some(r.map(|e| (e.name_any(), 1)));
        }
        match published {
            Some(Ok((event_name, count))) => {
                self.events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(cache_key, (event_name, count, now));
            }
            Some(Err(e)) => {
                tracing::warn!(namespace = %ns, object = %name, reason, error = %e, "could not publish Event");
            }
            None => {}
        }
    }
}

fn api_err(verb: &'static str, what: String, e: kube::Error) -> ClusterError {
    ClusterError::Api {
        verb,
        what,
        source: Box::new(e),
    }
}

fn namespace_and_name(obj: &Value) -> Result<(String, String)> {
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .ok_or_else(|| ClusterError::Invalid("object has no metadata.namespace".into()))?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| ClusterError::Invalid("object has no metadata.name".into()))?;
    Ok((ns.to_string(), name.to_string()))
}
