//! The Git source: clone, fetch, read a commit's files, and push webhooks.
