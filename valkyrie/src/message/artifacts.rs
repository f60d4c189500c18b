//! What a job hands on to later jobs: the `artifacts` field of a JobSpec
//! (which files to upload when the job ends, and which jobs' artifacts to
//! download before its first step), and the listing of stored artifacts.

use serde::{Deserialize, Serialize};

use super::field::WireField;
use super::wire::{Reader, Writer};
use crate::error::DecodeError;

/// When a job's artifacts are uploaded, given how it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ArtifactWhen {
    /// Only when the job succeeded (the default).
    #[default]
    OnSuccess = 0,
    /// Only when it failed (or timed out).
    OnFailure = 1,
    /// Whatever the outcome.
    Always = 2,
}

impl ArtifactWhen {
    /// The spelling used in pipeline files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
        }
    }

    /// Parses the pipeline-file spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "on_success" => Some(Self::OnSuccess),
            "on_failure" => Some(Self::OnFailure),
            "always" => Some(Self::Always),
            _ => None,
        }
    }

    pub(super) fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            0 => Ok(Self::OnSuccess),
            1 => Ok(Self::OnFailure),
            2 => Ok(Self::Always),
            other => Err(r.invalid(field, other.into())),
        }
    }
}

/// A job's artifacts: what it uploads after its steps, and whose it
/// downloads before them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactsSpec {
    /// Glob patterns, relative to the workspace, of the files to upload
    /// (`dist/**`, `target/release/app`); empty uploads nothing.
    pub paths: Vec<String>,
    /// Glob patterns of files left out of `paths`.
    pub exclude: Vec<String>,
    /// When to upload.
    pub when: ArtifactWhen,
    /// How long the server keeps them, in milliseconds; 0 means the
    /// server's default.
    pub expire_in_ms: u64,
    /// Jobs whose artifacts the agent downloads into the workspace before
    /// the first step (filled in by the server when it releases a pipeline
    /// job: the jobs it needs that have artifacts).
    pub download_from: Vec<u64>,
}

impl ArtifactsSpec {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            paths: r.strings("artifacts.paths")?,
            exclude: r.strings("artifacts.exclude")?,
            when: ArtifactWhen::read(r, "artifacts.when")?,
            expire_in_ms: r.u64("artifacts.expire_in_ms")?,
            download_from: r.list("artifacts.download_from", 8, |r| r.u64("artifacts.download_from"))?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.strings(&self.paths);
        w.strings(&self.exclude);
        w.u8(self.when as u8);
        w.u64(self.expire_in_ms);
        w.list(&self.download_from, |w, id| w.u64(*id));
    }
}

/// One stored artifact, as listings show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// Its name within the job (`artifacts.tar` for what `artifacts:` uploads).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// When it was stored (Unix milliseconds).
    pub created_at_ms: u64,
    /// When it expires (Unix milliseconds); 0 means never.
    pub expires_at_ms: u64,
}

impl WireField for ArtifactInfo {
    const MIN_BYTES: usize = 4 + 8 + 4 + 8 + 8;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string(field)?,
            size: r.u64(field)?,
            sha256: r.string(field)?,
            created_at_ms: r.u64(field)?,
            expires_at_ms: r.u64(field)?,
        })
    }
    fn write(&self, w: &mut Writer) {
        w.string(&self.name);
        w.u64(self.size);
        w.string(&self.sha256);
        w.u64(self.created_at_ms);
        w.u64(self.expires_at_ms);
    }
}
