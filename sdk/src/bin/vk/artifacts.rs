//! `vk artifacts JOB`: download a job's artifacts (a tar archive is
//! unpacked, refusing entries that would land outside the directory), or
//! list them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use valkyrie_runner_agent::artifacts::pack;
use valkyrie_sdk::Client;

use crate::out::outln;

pub async fn run(
    client: &Client,
    job: u64,
    output: &Path,
    list: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let artifacts = client.artifacts(job).await?;
    if list {
        if json {
            outln!("{}", serde_json::to_string_pretty(&artifacts)?);
        } else if artifacts.is_empty() {
            eprintln!("job {job} has no artifacts");
        } else {
            outln!("{:<24} {:>12}  SHA256", "NAME", "SIZE");
            for a in &artifacts {
                outln!("{:<24} {:>12}  {}", a.name, a.size, a.sha256);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if artifacts.is_empty() {
        anyhow::bail!("job {job} has no artifacts");
    }
    valkyrie::private_fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    for a in &artifacts {
        let tar = a.name.ends_with(".tar");
        // An archive goes to a scratch file beside the output, then is unpacked.
        let target = if tar {
            output.join(format!(".{}.vk-download", a.name))
        } else {
            output.join(&a.name)
        };
        let mut file = tokio::fs::File::create(&target)
            .await
            .with_context(|| format!("cannot create {}", target.display()))?;
        let downloaded = client.download_artifact(job, &a.name, &mut file).await;
        drop(file);
        if let Err(err) = downloaded {
            let _ = std::fs::remove_file(&target);
            return Err(err.into());
        }
        if tar {
            let (from, to) = (target.clone(), output.to_owned());
            let unpacked = tokio::task::spawn_blocking(move || pack::unpack(&from, &to)).await?;
            let _ = std::fs::remove_file(&target);
            let files = unpacked.with_context(|| format!("cannot unpack `{}` of job {job}", a.name))?;
            eprintln!(
                "{}: {files} file(s) unpacked into {} ({} bytes, sha256 {})",
                a.name,
                output.display(),
                a.size,
                a.sha256
            );
        } else {
            eprintln!("{}: {} bytes, sha256 {}", target.display(), a.size, a.sha256);
        }
    }
    Ok(ExitCode::SUCCESS)
}
