//! The Git repository nodewave follows, and the push webhook that tells it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Repository, Signature};
use hmac::{KeyInit as _, Mac as _};

pub struct Repo {
    dir: PathBuf,
    repo: Repository,
}

impl Repo {
    pub fn init(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let repo = Repository::init(dir)?;
        repo.set_head("refs/heads/main")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            repo,
        })
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Writes (Some) or removes (None) files and commits them on main.
    pub fn commit(
        &self,
        message: &str,
        files: &[(String, Option<String>)],
    ) -> anyhow::Result<String> {
        for (path, content) in files {
            let p = self.dir.join(path);
            match content {
                Some(c) => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&p, c)?;
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let mut index = self.repo.index()?;
        index.add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)?;
        index.update_all(["*"].iter(), None)?;
        index.write()?;
        let tree = self.repo.find_tree(index.write_tree()?)?;
        let sig = Signature::now("nodewave fleet driver", "fleet@nodewave.invalid")?;
        let parent = match self.repo.head() {
            Ok(h) => h
                .target()
                .map(|oid| self.repo.find_commit(oid))
                .transpose()?,
            Err(_) => None,
        };
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = self
            .repo
            .commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
        Ok(oid.to_string())
    }
}

/// Sends a signed GitHub push webhook for `commit`; returns the HTTP status.
pub async fn push_webhook(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    commit: &str,
) -> anyhow::Result<u16> {
    let body = serde_json::json!({"ref": "refs/heads/main", "after": commit}).to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)?;
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let r = http
        .post(url)
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sig)
        .header("X-GitHub-Delivery", format!("fleet-{commit}"))
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await?;
    Ok(r.status().as_u16())
}
