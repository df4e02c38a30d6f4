//! Which ControllerRevision is a DaemonSet's update revision, decided from a
//! list of its revisions (pure; [`super::Cluster::update_revision`] lists them).
//!
//! The DaemonSet controller's sync of a new template first makes a revision
//! for it current (creates it, or re-numbers an older revision with the same
//! template above every other), then creates pods from that same template, and
//! reports the generation observed last, after a pass over every node. A
//! revision that holds the live template and is the newest therefore shows that
//! the controller has the template, so a pod deleted now comes back on it:
//! tens of milliseconds earlier on a 1,000-pod DaemonSet than the status says so.

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;

use crate::keys;

/// The revision hash new pods of `ds` get, from `revisions` (any list; those
/// not owned by `ds` are skipped). With the generation `observed`, the newest
/// revision's; before that, the newest revision's only if it holds the live
/// template (otherwise the controller has not made the template current yet).
pub fn update_revision(
    revisions: &[ControllerRevision],
    ds: &DaemonSet,
    observed: bool,
) -> Option<String> {
    let uid = ds.metadata.uid.as_deref()?;
    let newest = revisions
        .iter()
        .filter(|cr| {
            cr.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.uid == uid))
        })
        .max_by_key(|cr| cr.revision)?;
    let current = observed || {
        let live = ds.spec.as_ref().map(|s| &s.template);
        live.is_some() && template_of(newest).as_ref() == live
    };
    if !current {
        return None;
    }
    newest.labels().get(keys::REVISION_HASH_LABEL).cloned()
}

/// The pod template a DaemonSet revision holds: its data is a patch
/// `{"spec": {"template": {..., "$patch": "replace"}}}`.
fn template_of(cr: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = cr.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn template(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "agent"}},
               "spec": {"containers": [{"name": "agent", "image": image}]}})
    }

    fn ds(image: &str) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "ns", "uid": "ds-uid"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template(image)}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn revision(owner: &str, n: i64, hash: &str, image: &str) -> ControllerRevision {
        let mut t = template(image);
        t["$patch"] = json!("replace");
        serde_json::from_value(json!({
            "metadata": {"name": format!("agent-{hash}"), "namespace": "ns",
                         "labels": {"app": "agent", "controller-revision-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                              "name": "agent", "uid": owner, "controller": true}]},
            "revision": n,
            "data": {"spec": {"template": t}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_newest_revision_counts_once_the_generation_is_observed() {
        let crs = [
            revision("ds-uid", 1, "h1", "v1"),
            revision("ds-uid", 2, "h2", "v2"),
        ];
        assert_eq!(
            update_revision(&crs, &ds("v2"), true).as_deref(),
            Some("h2")
        );
        // Observed, the newest one is current whatever the template compares to.
        assert_eq!(
            update_revision(&crs, &ds("v3"), true).as_deref(),
            Some("h2")
        );
    }

    #[test]
    fn before_that_only_a_newest_revision_holding_the_live_template_counts() {
        let old = [revision("ds-uid", 1, "h1", "v1")];
        // v2 applied, the controller has not made a revision for it yet.
        assert_eq!(update_revision(&old, &ds("v2"), false), None);
        let new = [
            revision("ds-uid", 1, "h1", "v1"),
            revision("ds-uid", 2, "h2", "v2"),
        ];
        assert_eq!(
            update_revision(&new, &ds("v2"), false).as_deref(),
            Some("h2")
        );
    }

    #[test]
    fn a_template_rolled_back_to_counts_only_once_its_revision_is_renumbered() {
        // v1 re-applied after v2 failed: its revision exists, but the newest is
        // still v2's until the controller re-numbers v1's above it.
        let before = [
            revision("ds-uid", 1, "h1", "v1"),
            revision("ds-uid", 2, "h2", "v2"),
        ];
        assert_eq!(update_revision(&before, &ds("v1"), false), None);
        let after = [
            revision("ds-uid", 3, "h1", "v1"),
            revision("ds-uid", 2, "h2", "v2"),
        ];
        assert_eq!(
            update_revision(&after, &ds("v1"), false).as_deref(),
            Some("h1")
        );
    }

    #[test]
    fn revisions_of_other_owners_and_unreadable_data_never_count() {
        let other = [revision("another-uid", 5, "hx", "v2")];
        assert_eq!(update_revision(&other, &ds("v2"), true), None);
        let mut broken = revision("ds-uid", 2, "h2", "v2");
        broken.data = Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
            json!({"spec": {"template": 7}}),
        ));
        assert_eq!(update_revision(&[broken], &ds("v2"), false), None);
    }
}
