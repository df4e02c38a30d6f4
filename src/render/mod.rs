//! Rendering Kustomize and Helm sources into manifests (stub while building).
pub mod chart;
pub mod discover;
pub mod kustomization;
