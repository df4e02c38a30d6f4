//! nodewave: a GitOps reconciler for Kubernetes DaemonSets.
//!
//! It pulls DaemonSet definitions from Git, diffs them against the live cluster and
//! rolls each change out node pool by node pool, gating every stage on pod health
//! and optional Prometheus queries, and rolls back to the last good commit when a
//! gate fails.
//!
//! Pure logic lives in [`manifest`], [`diff`], [`plan`], [`rollout`] and
//! [`record`] (its types and codec); IO lives in [`source`], [`desired`],
//! [`store`], [`controller`], [`cluster`], [`record::client`], [`metrics`] and
//! [`server`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod controller;
pub mod desired;
pub mod diff;
pub mod failpoint;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod record;
pub mod render;
pub mod rollout;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
pub mod verify;
