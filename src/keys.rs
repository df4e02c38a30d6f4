//! Label and annotation keys nodewave reads and writes. They are a contract with
//! users (opt-ins) and with other tools (what nodewave applied and from where).
//! The rollout state itself lives in `DaemonSetRollout` records (`crate::record`);
//! the annotations nodewave 0.1 used for it are in `record::legacy`.

/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "nodewave";

/// Label on every object nodewave manages: `managed-by=nodewave`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "nodewave";

/// Where the applied object came from.
pub const SOURCE_REPO: &str = "nodewave.io/source-repo";
pub const SOURCE_PATH: &str = "nodewave.io/source-path";
pub const SOURCE_FILE: &str = "nodewave.io/source-file";

/// On companion objects: the content hash of what nodewave last applied, so a
/// difference found later is drift (someone changed it), not a new commit.
pub const CONTENT_HASH: &str = "nodewave.io/content-hash";

/// Opt-in, on an object in Git, to take over an existing object of the same
/// name that nodewave does not manage (it is applied with forced server-side
/// apply, so it takes every field from its current managers).
pub const ALLOW_TAKEOVER: &str = "nodewave.io/allow-takeover";

/// Opt-ins for the best-practice checks.
pub const ALLOW_PRIVILEGED: &str = "nodewave.io/allow-privileged";
pub const ALLOW_HOST_NETWORK: &str = "nodewave.io/allow-host-network";
pub const ALLOW_HOST_PID: &str = "nodewave.io/allow-host-pid";

/// Pod label the DaemonSet controller sets to the pod's template revision.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
