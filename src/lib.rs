//! nodewave: a GitOps reconciler for Kubernetes DaemonSets.
//!
//! It pulls DaemonSet definitions from Git, diffs them against the live cluster and
//! rolls each change out node pool by node pool, gating every stage on pod health
//! and optional Prometheus queries, and rolls back to the last good commit when a
//! gate fails.
//!
//! Pure logic lives in [`manifest`], [`diff`] and [`rollout`]; IO lives in
//! [`source`], [`cluster`], [`reconciler`], [`metrics`] and [`server`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod diff;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod reconciler;
pub mod rollout;
pub mod server;
pub mod source;
pub mod verify;
