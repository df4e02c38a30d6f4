//! The `--max-*` flags that raise or lower the commit size limits
//! ([`crate::manifest::Limits`]), shared by `run`, `diff` and `validate`, and the
//! matching config-file fields.

use serde::Deserialize;

use crate::manifest::{Limit, Limits};

fn file_bytes(s: &str) -> Result<usize, String> {
    Limit::FileBytes.parse(s)
}
fn files(s: &str) -> Result<usize, String> {
    Limit::Files.parse(s)
}
fn total_bytes(s: &str) -> Result<usize, String> {
    Limit::TotalBytes.parse(s)
}
fn objects(s: &str) -> Result<usize, String> {
    Limit::Objects.parse(s)
}
fn total_nodes(s: &str) -> Result<usize, String> {
    Limit::TotalNodes.parse(s)
}
fn object_bytes(s: &str) -> Result<usize, String> {
    Limit::ObjectBytes.parse(s)
}
fn depth(s: &str) -> Result<usize, String> {
    Limit::Depth.parse(s)
}
fn nodes(s: &str) -> Result<usize, String> {
    Limit::Nodes.parse(s)
}
fn aliases(s: &str) -> Result<usize, String> {
    Limit::Aliases.parse(s)
}

/// Size limits on a commit; unset ones keep their defaults. A commit over a limit
/// is rejected whole with a `limit-exceeded` finding naming the flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Limits (a commit over one is rejected)")]
// The fields are the flags' names, which all start with `max-`.
#[allow(clippy::struct_field_names)]
pub struct LimitArgs {
    /// Largest manifest file, checked before it is read (e.g. 4MiB, 512KiB)
    /// [default: 4MiB].
    #[arg(long, env = "NODEWAVE_MAX_FILE_BYTES", value_name = "BYTES", value_parser = file_bytes)]
    pub max_file_bytes: Option<usize>,
    /// Most *.yaml/*.yml files in a commit under the watched path [default: 5000].
    #[arg(long, env = "NODEWAVE_MAX_FILES", value_name = "N", value_parser = files)]
    pub max_files: Option<usize>,
    /// Most bytes of all manifest files of a commit together [default: 16MiB].
    #[arg(long, env = "NODEWAVE_MAX_TOTAL_BYTES", value_name = "BYTES", value_parser = total_bytes)]
    pub max_total_bytes: Option<usize>,
    /// Most YAML documents (objects) in a commit [default: 5000].
    #[arg(long, env = "NODEWAVE_MAX_OBJECTS", value_name = "N", value_parser = objects)]
    pub max_objects: Option<usize>,
    /// Most YAML nodes of all documents of a commit, after alias expansion
    /// [default: 1000000].
    #[arg(long, env = "NODEWAVE_MAX_TOTAL_NODES", value_name = "N", value_parser = total_nodes)]
    pub max_total_nodes: Option<usize>,
    /// Largest YAML document [default: 1MiB].
    #[arg(long, env = "NODEWAVE_MAX_OBJECT_BYTES", value_name = "BYTES", value_parser = object_bytes)]
    pub max_object_bytes: Option<usize>,
    /// Deepest nesting of mappings and sequences in a document, at most 250
    /// [default: 64].
    #[arg(long, env = "NODEWAVE_MAX_DEPTH", value_name = "N", value_parser = depth)]
    pub max_depth: Option<usize>,
    /// Most YAML nodes in a document, after alias expansion [default: 100000].
    #[arg(long, env = "NODEWAVE_MAX_NODES", value_name = "N", value_parser = nodes)]
    pub max_nodes: Option<usize>,
    /// Most YAML aliases (*name) in a document [default: 1000].
    #[arg(long, env = "NODEWAVE_MAX_ALIASES", value_name = "N", value_parser = aliases)]
    pub max_aliases: Option<usize>,
}

impl LimitArgs {
    pub fn get(&self, limit: Limit) -> Option<usize> {
        match limit {
            Limit::FileBytes => self.max_file_bytes,
            Limit::Files => self.max_files,
            Limit::TotalBytes => self.max_total_bytes,
            Limit::Objects => self.max_objects,
            Limit::TotalNodes => self.max_total_nodes,
            Limit::ObjectBytes => self.max_object_bytes,
            Limit::Depth => self.max_depth,
            Limit::Nodes => self.max_nodes,
            Limit::Aliases => self.max_aliases,
        }
    }

    pub fn set(&mut self, limit: Limit, value: usize) {
        let field = match limit {
            Limit::FileBytes => &mut self.max_file_bytes,
            Limit::Files => &mut self.max_files,
            Limit::TotalBytes => &mut self.max_total_bytes,
            Limit::Objects => &mut self.max_objects,
            Limit::TotalNodes => &mut self.max_total_nodes,
            Limit::ObjectBytes => &mut self.max_object_bytes,
            Limit::Depth => &mut self.max_depth,
            Limit::Nodes => &mut self.max_nodes,
            Limit::Aliases => &mut self.max_aliases,
        };
        *field = Some(value);
    }

    /// The limits in force: the defaults, overridden by what is set.
    pub fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        for limit in Limit::ALL {
            if let Some(v) = self.get(limit) {
                limit.set(&mut limits, v);
            }
        }
        limits
    }

    /// Fills in limits the flags left unset from the config file's values.
    pub fn merge_file(&mut self, file: &FileLimits) -> Result<(), String> {
        for limit in Limit::ALL {
            if self.get(limit).is_some() {
                continue;
            }
            if let Some(value) = file.get(limit) {
                let parsed = match value {
                    LimitValue::Count(n) => usize::try_from(*n)
                        .map_err(|_| format!("{n} is too large"))
                        .and_then(|n| limit.check(n).map(|()| n)),
                    LimitValue::Text(s) => limit.parse(s),
                }
                .map_err(|e| format!("config file: {}: {e}", limit.key()))?;
                self.set(limit, parsed);
            }
        }
        Ok(())
    }
}

/// A limit in the config file: a number, or a string such as `"4MiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LimitValue {
    Count(u64),
    Text(String),
}

/// The limits as the config file names them (`max-file-bytes = "8MiB"`); kept
/// as one struct so that `FileConfig` lists them in one place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLimits {
    pub values: Vec<(Limit, LimitValue)>,
}

impl FileLimits {
    fn get(&self, limit: Limit) -> Option<&LimitValue> {
        self.values
            .iter()
            .find(|(l, _)| *l == limit)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn flags_parse_sizes_and_counts_and_refuse_nonsense() {
        let t = T::try_parse_from(["x", "--max-file-bytes", "8MiB", "--max-depth", "100"]).unwrap();
        let limits = t.limits.limits();
        assert_eq!(limits.max_file_bytes, 8 << 20);
        assert_eq!(limits.max_depth, 100);
        assert_eq!(limits.max_files, Limits::default().max_files);
        for bad in [
            ["--max-depth", "251"],
            ["--max-files", "0"],
            ["--max-nodes", "1KiB"],
            ["--max-total-bytes", "18446744073709551615GiB"],
        ] {
            assert!(T::try_parse_from(["x", bad[0], bad[1]]).is_err(), "{bad:?}");
        }
    }

    /// The `[default: ...]` in every flag's help is the real default.
    #[test]
    fn help_shows_the_real_defaults() {
        let cmd = T::command();
        let defaults = Limits::default();
        for limit in Limit::ALL {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(limit.key()))
                .unwrap_or_else(|| panic!("no flag --{}", limit.key()));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let default = limit.format(limit.get(&defaults)).replace(" bytes", "");
            assert!(
                help.contains(&format!("[default: {default}]")),
                "--{}: {help}",
                limit.key()
            );
        }
    }

    #[test]
    fn config_values_fill_only_unset_flags() {
        let mut args = LimitArgs {
            max_files: Some(7),
            ..LimitArgs::default()
        };
        let file = FileLimits {
            values: vec![
                (Limit::Files, LimitValue::Count(9)),
                (Limit::TotalBytes, LimitValue::Text("32MiB".into())),
                (Limit::Aliases, LimitValue::Count(5)),
            ],
        };
        args.merge_file(&file).unwrap();
        let limits = args.limits();
        assert_eq!(
            (limits.max_files, limits.max_total_bytes, limits.max_aliases),
            (7, 32 << 20, 5)
        );
        let bad = FileLimits {
            values: vec![(Limit::Depth, LimitValue::Count(1000))],
        };
        let e = LimitArgs::default().merge_file(&bad).unwrap_err();
        assert!(e.contains("max-depth"), "{e}");
    }
}
