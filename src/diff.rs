//! TODO: diff
