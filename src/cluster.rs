//! TODO: cluster
