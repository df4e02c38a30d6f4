//! TODO: reconciler
