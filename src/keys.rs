//! Label and annotation keys nodewave reads and writes. They are a contract with
//! users (opt-ins, control annotations) and with older nodewave versions (state).

/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "nodewave";

/// Label on every object nodewave manages: `managed-by=nodewave`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "nodewave";

/// Where the applied object came from.
pub const SOURCE_REPO: &str = "nodewave.io/source-repo";
pub const SOURCE_PATH: &str = "nodewave.io/source-path";
pub const SOURCE_FILE: &str = "nodewave.io/source-file";
pub const APPLIED_COMMIT: &str = "nodewave.io/applied-commit";
pub const APPLIED_AT: &str = "nodewave.io/applied-at";
/// Hash of the desired content last applied (to recognise a failed change again).
pub const DESIRED_HASH: &str = "nodewave.io/desired-hash";
pub const LAST_GOOD_COMMIT: &str = "nodewave.io/last-good-commit";
pub const FAILED_COMMITS: &str = "nodewave.io/failed-commits";
pub const SYNC_STATUS: &str = "nodewave.io/sync-status";
pub const SYNC_MESSAGE: &str = "nodewave.io/sync-message";
/// Node label the current rollout groups pools by.
pub const POOL_LABEL: &str = "nodewave.io/pool-label";
/// JSON of the rollout in progress (see `rollout::Rollout`).
pub const ROLLOUT_STATE: &str = "nodewave.io/rollout";

/// Control annotations a user sets (or `nodewave rollout ...` sets for them).
pub const CONTROL_PAUSED: &str = "nodewave.io/paused";
pub const CONTROL_ABORT: &str = "nodewave.io/abort";
pub const CONTROL_APPROVED_STAGE: &str = "nodewave.io/approved-stage";

/// Opt-ins for the best-practice checks.
pub const ALLOW_PRIVILEGED: &str = "nodewave.io/allow-privileged";
pub const ALLOW_HOST_NETWORK: &str = "nodewave.io/allow-host-network";
pub const ALLOW_HOST_PID: &str = "nodewave.io/allow-host-pid";

/// Pod label the DaemonSet controller sets to the pod's template revision.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
