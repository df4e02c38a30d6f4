//! Renderer flags shared by `run`, `validate` and `diff` (see `crate::render`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::policy::parse_duration;
use crate::render::{DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT, RenderOptions};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct RenderArgs {
    /// helm binary for directories with a Chart.yaml [default: helm on PATH].
    #[arg(long, env = "NODEWAVE_HELM", value_name = "PATH")]
    pub helm: Option<PathBuf>,
    /// kustomize binary for directories with a kustomization.yaml [default: kustomize on PATH].
    #[arg(long, env = "NODEWAVE_KUSTOMIZE", value_name = "PATH")]
    pub kustomize: Option<PathBuf>,
    /// Time limit of one renderer run; past it the renderer is killed and the
    /// commit rejected [default: 60s].
    #[arg(long, env = "NODEWAVE_RENDER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub render_timeout: Option<Duration>,
    /// Limit on a commit's rendered output, all directories together, e.g. 64Mi
    /// [default: 64Mi].
    #[arg(long, env = "NODEWAVE_RENDER_MAX_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub render_max_bytes: Option<usize>,
    /// Allow remote Kustomize bases and Helm dependencies not vendored under
    /// charts/, and give the renderers this process's environment (proxies, PATH,
    /// Helm repositories). Off: rendering is hermetic.
    #[arg(long, env = "NODEWAVE_RENDER_ALLOW_NETWORK")]
    pub render_allow_network: bool,
}

/// The same settings in the `run` config file (`helm = "/usr/local/bin/helm"`,
/// `render-timeout = "30s"`, `render-max-bytes = "16Mi"`, `render-allow-network = true`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileRender {
    pub helm: Option<PathBuf>,
    pub kustomize: Option<PathBuf>,
    pub render_timeout: Option<String>,
    pub render_max_bytes: Option<ByteSize>,
    pub render_allow_network: Option<bool>,
}

/// A size as a number of bytes or a string with a unit (`16Mi`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl RenderArgs {
    /// Flags and environment over the config file over defaults.
    pub fn options(&self, file: &FileRender) -> Result<RenderOptions, String> {
        let timeout = match (self.render_timeout, &file.render_timeout) {
            (Some(t), _) => t,
            (None, Some(s)) => {
                parse_duration(s).map_err(|e| format!("config file: render-timeout: {e}"))?
            }
            (None, None) => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err("render-timeout must be more than 0s".into());
        }
        let max_output_bytes = match (self.render_max_bytes, &file.render_max_bytes) {
            (Some(n), _) => n,
            (None, Some(ByteSize::Bytes(n))) => usize::try_from(*n)
                .map_err(|_| "config file: render-max-bytes is too large".to_owned())?,
            (None, Some(ByteSize::Text(s))) => {
                parse_bytes(s).map_err(|e| format!("config file: render-max-bytes: {e}"))?
            }
            (None, None) => DEFAULT_MAX_OUTPUT_BYTES,
        };
        Ok(RenderOptions {
            helm: self.helm.clone().or_else(|| file.helm.clone()),
            kustomize: self.kustomize.clone().or_else(|| file.kustomize.clone()),
            timeout,
            max_output_bytes,
            allow_network: self.render_allow_network || file.render_allow_network.unwrap_or(false),
            ..RenderOptions::default()
        })
    }
}

/// `1048576`, `512Ki`, `64Mi`, `1Gi` (also `KiB`/`MiB`/`GiB`, `k`/`M`/`G` as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes such as 64Mi"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use Ki, Mi, Gi (or a plain number of bytes)"
            ));
        }
    };
    let bytes = number
        .checked_mul(factor)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if bytes == 0 {
        return Err("the size must be more than 0".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1_048_576);
        assert_eq!(parse_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("5M").unwrap(), 5_000_000);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("3 parsecs").unwrap_err().contains("unit"));
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_apply() {
        let file = FileRender {
            helm: Some("/opt/helm".into()),
            kustomize: Some("/opt/kustomize".into()),
            render_timeout: Some("5s".into()),
            render_max_bytes: Some(ByteSize::Text("1Mi".into())),
            render_allow_network: Some(true),
        };
        let flags = RenderArgs {
            kustomize: Some("/flag/kustomize".into()),
            render_max_bytes: Some(10),
            ..RenderArgs::default()
        };
        let o = flags.options(&file).unwrap();
        assert_eq!(o.helm.as_deref(), Some(std::path::Path::new("/opt/helm")));
        assert_eq!(
            o.kustomize.as_deref(),
            Some(std::path::Path::new("/flag/kustomize"))
        );
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.max_output_bytes, 10);
        assert!(o.allow_network);
        let o = RenderArgs::default()
            .options(&FileRender::default())
            .unwrap();
        assert_eq!(o, RenderOptions::default());
        let bad = FileRender {
            render_max_bytes: Some(ByteSize::Text("lots".into())),
            ..FileRender::default()
        };
        assert!(
            RenderArgs::default()
                .options(&bad)
                .unwrap_err()
                .contains("render-max-bytes")
        );
    }
}
