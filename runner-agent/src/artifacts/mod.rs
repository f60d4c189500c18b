//! Artifacts on the agent's side: before the first step, the artifacts of
//! the jobs this one needs are downloaded and unpacked into the workspace;
//! after the last, the files named by `artifacts: paths` are packed into a
//! tar archive and uploaded. Both go over the session's bulk lane in
//! chunks, with a bounded window of unanswered requests and SHA-256 end to
//! end, so neither side holds a whole artifact in memory.
//!
//! Paths never leave the workspace: a pattern with `..` or an absolute
//! path is refused by the validator, a symbolic link pointing out of the
//! workspace is refused when packing, and an archive entry that would land
//! outside (`..`, absolute, through or as a link pointing out) is refused
//! when unpacking.

pub mod cache;
pub mod pack;
pub mod transfer;

pub use transfer::{ArtifactLink, TransferError};

/// Name of the archive `artifacts:` uploads (the server's `ARCHIVE_NAME`).
pub const ARCHIVE_NAME: &str = "artifacts.tar";

use std::path::{Path, PathBuf};

use valkyrie::message::{ArtifactWhen, ArtifactsSpec, JobOutcome};

/// A line for the job's log (the `system` stream).
pub type LogLine = String;

/// Where a job's archive is written while it is packed or downloaded:
/// beside the workspace, never in it.
fn scratch(workspace: &Path, what: &str) -> PathBuf {
    let mut path = workspace.as_os_str().to_owned();
    path.push(format!(".{what}.tar"));
    PathBuf::from(path)
}

/// A scratch file removed when dropped: also when the transfer writing it
/// is abandoned (a job cancelled during a cache restore).
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Before the first step: downloads and unpacks the artifacts of the jobs
/// in `download_from` into `workspace` (which it creates). Each line it
/// returns goes to the job's log; an error fails the job before any step.
pub async fn before_steps(
    link: &mut ArtifactLink,
    spec: &ArtifactsSpec,
    workspace: &Path,
    log: &mut Vec<LogLine>,
) -> Result<(), String> {
    if spec.download_from.is_empty() {
        return Ok(());
    }
    let dir = workspace.to_owned();
    tokio::task::spawn_blocking(move || valkyrie::private_fs::create_dir_all(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("could not create the job workspace {}: {e}", workspace.display()))?;
    let archive = scratch(workspace, "download");
    let result = async {
        for &job in &spec.download_from {
            let started = std::time::Instant::now();
            let size = transfer::download(link, job, ARCHIVE_NAME, &archive)
                .await
                .map_err(|e| format!("could not download the artifacts of job {job}: {e}"))?;
            let Some(size) = size else {
                log.push(format!("[valkyrie] job {job} left no artifacts\n"));
                continue;
            };
            let took = started.elapsed();
            let (from, to) = (archive.clone(), workspace.to_owned());
            let files = tokio::task::spawn_blocking(move || pack::unpack(&from, &to))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("could not unpack the artifacts of job {job}: {e}"))?;
            log.push(format!(
                "[valkyrie] downloaded the artifacts of job {job}: {files} file(s), {size} bytes in {}\n",
                rate(size, took)
            ));
        }
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_file(&archive).await;
    result
}

/// Whether `when` asks for an upload after an attempt that ended `outcome`.
pub fn wanted(when: ArtifactWhen, outcome: JobOutcome) -> bool {
    match when {
        ArtifactWhen::Always => outcome != JobOutcome::Cancelled,
        ArtifactWhen::OnSuccess => outcome == JobOutcome::Succeeded,
        ArtifactWhen::OnFailure => matches!(outcome, JobOutcome::Failed | JobOutcome::TimedOut),
    }
}

/// After the last step: packs what `paths` names and uploads it as
/// [`ARCHIVE_NAME`]. Lines for the job's log go to `log`; an error (which
/// fails the job) says why, for people.
pub async fn after_steps(
    link: &mut ArtifactLink,
    spec: &ArtifactsSpec,
    job_id: u64,
    attempt: u32,
    workspace: &Path,
    max_bytes: u64,
    log: &mut Vec<LogLine>,
) -> Result<(), String> {
    let archive = scratch(workspace, "upload");
    let result = async {
        let (ws, paths, exclude, out) = (
            workspace.to_owned(),
            spec.paths.clone(),
            spec.exclude.clone(),
            archive.clone(),
        );
        let packed = tokio::task::spawn_blocking(move || pack::pack(&ws, &paths, &exclude, &out, max_bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("artifacts not uploaded: {e}"))?;
        if packed.entries == 0 {
            log.push(format!(
                "[valkyrie] no file matches the artifact paths {}; nothing uploaded\n",
                spec.paths.join(", ")
            ));
            return Ok(());
        }
        let started = std::time::Instant::now();
        transfer::upload(
            link,
            transfer::UploadSpec {
                job_id,
                attempt,
                name: ARCHIVE_NAME,
                path: &packed.path,
                size: packed.size,
                sha256: &packed.sha256,
                expire_in_ms: spec.expire_in_ms,
            },
        )
        .await
        .map_err(|e| format!("artifacts not uploaded: {e}"))?;
        log.push(format!(
            "[valkyrie] uploaded artifacts: {} file(s), {} bytes, sha256 {}, in {}\n",
            packed.entries,
            packed.size,
            packed.sha256,
            rate(packed.size, started.elapsed())
        ));
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_file(&archive).await;
    result
}

/// "1.234 s (123.4 MB/s)": how long a transfer took, for the job's log.
fn rate(bytes: u64, took: std::time::Duration) -> String {
    let secs = took.as_secs_f64().max(1e-6);
    format!("{secs:.3} s ({:.1} MB/s)", bytes as f64 / secs / 1e6)
}
