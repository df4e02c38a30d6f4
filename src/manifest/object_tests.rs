//! Commits with companion objects, as vendor node-agent files ship them.

use super::*;

const VENDOR: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: agents
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: agent
  namespace: agents
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: agent
  namespace: ignored-for-cluster-scoped
rules:
  - apiGroups: [\"\"]
    resources: [nodes]
    verbs: [get, list, watch]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.io
spec:
  group: example.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: agent-config
    data: {level: info}
  - apiVersion: example.io/v1
    kind: Widget
    metadata:
      name: w
      namespace: agents
";

fn file(path: &str, contents: &str) -> ManifestFile {
    ManifestFile {
        path: path.to_string(),
        contents: contents.to_string(),
    }
}

fn refs(state: &DesiredState) -> Vec<String> {
    state.objects.keys().map(ToString::to_string).collect()
}

#[test]
fn a_vendor_file_loads_with_its_companions_in_scope_and_order() {
    let state = load(&[file("agent.yaml", VENDOR)], &LoadOptions::default()).unwrap();
    assert_eq!(
        refs(&state),
        [
            "ConfigMap default/agent-config",
            "Namespace agents",
            "ServiceAccount agents/agent",
            "CustomResourceDefinition.apiextensions.k8s.io widgets.example.io",
            "Widget.example.io agents/w",
            "ClusterRole.rbac.authorization.k8s.io agent",
        ]
    );
    let role = state
        .objects
        .values()
        .find(|o| o.reference.kind == "ClusterRole")
        .unwrap();
    assert!(
        role.manifest["metadata"].get("namespace").is_none(),
        "cluster-scoped"
    );
    let cm = state
        .objects
        .values()
        .find(|o| o.reference.kind == "ConfigMap")
        .unwrap();
    assert_eq!(cm.manifest["metadata"]["namespace"], "default");
    // A List item points at its own line.
    assert_eq!(cm.location, Location::new("agent.yaml", Some(39)));
    let mut order: Vec<_> = state
        .objects
        .values()
        .map(|o| (o.order, o.reference.kind.clone()))
        .collect();
    order.sort();
    let kinds: Vec<&str> = order.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ServiceAccount",
            "ConfigMap",
            "Widget"
        ]
    );
}

#[test]
fn custom_resources_need_their_crd_or_an_allowlist_entry() {
    let cr = "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: a\n";
    let r = load(&[file("cr.yaml", cr)], &LoadOptions::default()).unwrap_err();
    assert_eq!(r.reason(), "kind-not-allowed");
    assert!(
        r.errors[0]
            .message
            .contains("Widget.example.io is not a kind"),
        "{r}"
    );
    let opts = LoadOptions {
        allowed_kinds: vec!["*.example.io".into()],
        ..LoadOptions::default()
    };
    let state = load(&[file("cr.yaml", cr)], &opts).unwrap();
    assert_eq!(refs(&state), ["Widget.example.io a/w"]);
    // A version the commit's CRD does not serve.
    let bad = VENDOR.replace("apiVersion: example.io/v1\n", "apiVersion: example.io/v2\n");
    let r = load(&[file("agent.yaml", &bad)], &LoadOptions::default()).unwrap_err();
    assert!(r.errors[0].message.contains("not a served version"), "{r}");
}

#[test]
fn legacy_duplicate_and_disallowed_companions_are_findings_with_lines() {
    let legacy =
        "apiVersion: rbac.authorization.k8s.io/v1beta1\nkind: ClusterRole\nmetadata:\n  name: x\n";
    let r = load(&[file("l.yaml", legacy)], &LoadOptions::default()).unwrap_err();
    assert_eq!(r.errors[0].location, Location::new("l.yaml", Some(1)));
    assert!(
        r.errors[0]
            .message
            .contains("use apiVersion: rbac.authorization.k8s.io/v1"),
        "{r}"
    );

    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: n\n";
    let r = load(
        &[file("a.yaml", cm), file("b.yaml", cm)],
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert_eq!(r.reason(), "duplicate-name");
    assert!(r.errors[0].message.contains("also at b.yaml:1"), "{r}");

    let opts = LoadOptions {
        allowed_namespaces: vec!["agents".into()],
        ..LoadOptions::default()
    };
    let r = load(&[file("a.yaml", cm)], &opts).unwrap_err();
    assert_eq!(r.reason(), "namespace-not-allowed");
    let r = load(
        &[file(
            "ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n",
        )],
        &opts,
    )
    .unwrap_err();
    assert_eq!(r.reason(), "namespace-not-allowed");

    let nested =
        "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: List\n    items: []\n";
    let r = load(&[file("n.yaml", nested)], &LoadOptions::default()).unwrap_err();
    assert_eq!(r.reason(), "unsupported-kind");
    assert_eq!(r.errors[0].location, Location::new("n.yaml", Some(5)));
}

#[test]
fn a_daemonset_inside_a_list_is_checked_like_any_other() {
    let list = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: apps/v1\n    kind: DaemonSet\n    metadata: {name: d, namespace: agents}\n    spec:\n      selector: {matchLabels: {app: agent}}\n      template:\n        metadata: {labels: {app: other}}\n        spec:\n          containers: [{name: c, image: 'i:1'}]\n";
    let r = load(&[file("l.yaml", list)], &LoadOptions::default()).unwrap_err();
    assert_eq!(r.reason(), "selector-mismatch", "{r}");
    assert_eq!(r.errors[0].location.file, "l.yaml");
    assert!(r.errors[0].location.line.unwrap() >= 4, "{r}");
}
