//! The audit log: who asked the server to do what, and when.
//!
//! Recorded: job submits, pipeline runs (submitted or triggered), pipeline
//! definitions created, job and run cancels, runner drains, runner
//! registrations (a credential issued or presented again), and JWTs minted
//! with `valkyrie-server token`. Not recorded: reads, and what agents
//! report about their jobs (that is the jobs' own history).
//!
//! The actor is who the server authenticated: a REST caller's JWT subject
//! (or `api-token`), a protocol client (which holds the API token; the
//! software name it gave in its Hello is kept as a hint, not as proof), a
//! runner by name, or the local user who ran `valkyrie-server token`.
//!
//! Records never hold secret values: they name things by id and name only,
//! and the one free-form text that could carry one (a job's name, which
//! `vk exec` makes from the command line) is masked with the job's secrets.
//! They are kept in the store like jobs, with the same retention (age and
//! count: `--retention`, `--max-finished-jobs`): the oldest beyond the
//! count, and every record older than the age (a minted token's too, when
//! it is imported late), are deleted from the store; and read newest first, a page at a time (`before` is the id to
//! continue below).

use serde::{Deserialize, Serialize};

/// Largest page of audit records one request returns.
pub const MAX_AUDIT_PAGE: usize = 1_000;

/// Page size when the request names none.
pub const DEFAULT_AUDIT_PAGE: usize = 100;

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// How they were authenticated.
    pub kind: ActorKind,
    /// JWT subject, runner name, local user, or (protocol clients) the
    /// software name from their Hello.
    pub name: String,
}

/// How an actor was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A REST request with a JWT; `name` is its subject.
    Jwt,
    /// The server's API token (REST or protocol); `name` is `api-token` or
    /// the client's software name.
    ApiToken,
    /// A runner agent; `name` is the runner's.
    Runner,
    /// A command run on the server's machine; `name` is the OS user.
    Local,
    /// The server itself (no request behind it).
    Server,
}

impl ActorKind {
    /// Its name on the wire and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Jwt => "jwt",
            ActorKind::ApiToken => "api_token",
            ActorKind::Runner => "runner",
            ActorKind::Local => "local",
            ActorKind::Server => "server",
        }
    }
}

impl Actor {
    /// A REST caller with a JWT.
    pub fn jwt(subject: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Jwt,
            name: subject.into(),
        }
    }

    /// A holder of the API token; `name` says which software.
    pub fn api_token(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::ApiToken,
            name: name.into(),
        }
    }

    /// A runner.
    pub fn runner(name: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Runner,
            name: name.into(),
        }
    }

    /// A local OS user.
    pub fn local(user: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Local,
            name: user.into(),
        }
    }

    /// The server, when no request is behind an action.
    pub fn server() -> Self {
        Self {
            kind: ActorKind::Server,
            name: "valkyrie-server".into(),
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A job was submitted.
    SubmitJob,
    /// A pipeline file was submitted as a run.
    SubmitPipeline,
    /// A pipeline definition was stored.
    CreatePipeline,
    /// A stored pipeline was triggered.
    TriggerPipeline,
    /// A job cancel was requested.
    CancelJob,
    /// A run cancel was requested.
    CancelRun,
    /// A runner drain was requested.
    DrainRunner,
    /// A runner's record was removed (by an operator, or past the retention).
    RemoveRunner,
    /// A runner registered (a credential issued, or presented again).
    RegisterRunner,
    /// A JWT was minted.
    MintToken,
    /// A project was created.
    CreateProject,
    /// A project was removed.
    RemoveProject,
    /// A project's repository started a run (webhook or trigger).
    TriggerProject,
    /// A manual job was played.
    PlayJob,
    /// A run was rerun.
    RerunRun,
    /// A schedule was added to a project.
    AddSchedule,
    /// A schedule was removed.
    RemoveSchedule,
}

impl AuditAction {
    /// Its name on the wire and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::SubmitJob => "submit_job",
            AuditAction::SubmitPipeline => "submit_pipeline",
            AuditAction::CreatePipeline => "create_pipeline",
            AuditAction::TriggerPipeline => "trigger_pipeline",
            AuditAction::CancelJob => "cancel_job",
            AuditAction::CancelRun => "cancel_run",
            AuditAction::RemoveRunner => "remove_runner",
            AuditAction::DrainRunner => "drain_runner",
            AuditAction::RegisterRunner => "register_runner",
            AuditAction::MintToken => "mint_token",
            AuditAction::CreateProject => "create_project",
            AuditAction::RemoveProject => "remove_project",
            AuditAction::TriggerProject => "trigger_project",
            AuditAction::PlayJob => "play_job",
            AuditAction::RerunRun => "rerun_run",
            AuditAction::AddSchedule => "add_schedule",
            AuditAction::RemoveSchedule => "remove_schedule",
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increasing id (the paging cursor).
    pub id: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: AuditAction,
    /// What it was done to: `job 12`, `run 3`, `pipeline 2`, `runner 4`,
    /// `token`.
    pub target: String,
    /// Names and settings that help a reader (job or pipeline name, role
    /// and lifetime of a minted token); never a secret value.
    pub detail: String,
}

impl AuditRecord {
    /// Its wire form.
    pub fn to_entry(&self) -> valkyrie::message::AuditEntry {
        valkyrie::message::AuditEntry {
            id: self.id,
            at_ms: self.at_ms,
            actor_kind: self.actor.kind.as_str().to_owned(),
            actor: self.actor.name.clone(),
            action: self.action.as_str().to_owned(),
            target: self.target.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// Where `valkyrie-server token` leaves records of the JWTs it mints, for
/// the server to import (the store is the running server's alone): one
/// file per record in `audit-inbox/` under the data directory (0700, files
/// 0600). The server imports them at start and every few seconds, and
/// deletes each once stored. The minting user is the file's owner (from the
/// file system, so it cannot be claimed falsely) with the `USER` the
/// command ran as.
pub mod inbox {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Serialize};

    use super::{Actor, AuditAction};

    /// The inbox directory in a data directory.
    pub const DIR_NAME: &str = "audit-inbox";

    /// Files read per import pass; the rest wait for the next.
    pub const MAX_FILES_PER_PASS: usize = 1_000;

    /// Largest inbox file read; a larger one is not a record and is left
    /// (with a warning).
    pub const MAX_FILE_BYTES: u64 = 4_096;

    /// A minted token, as recorded (never the token itself).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MintRecord {
        /// When (ms since the Unix epoch).
        pub at_ms: u64,
        /// `USER` of the command.
        pub user: String,
        /// The token's `sub`.
        pub subject: String,
        /// The token's role.
        pub role: String,
        /// Its lifetime in seconds.
        pub ttl_secs: u64,
    }

    /// Leaves `record` in `data_dir`'s inbox.
    pub fn write(data_dir: &Path, record: &MintRecord) -> std::io::Result<PathBuf> {
        let dir = data_dir.join(DIR_NAME);
        valkyrie::private_fs::create_dir_all(&dir)?;
        let name = format!(
            "{}-{}-{}.json",
            record.at_ms,
            std::process::id(),
            crate::auth::random_token().get(..8).unwrap_or("0")
        );
        // Written aside and renamed, so the server never reads half a file.
        let partial = dir.join(format!(".{name}.partial"));
        let body = serde_json::to_vec(record).expect("a mint record serializes");
        valkyrie::private_fs::write_file(&partial, &body)?;
        let path = dir.join(name);
        std::fs::rename(&partial, &path)?;
        Ok(path)
    }

    /// One imported record: its file and what to store.
    pub type Imported = (PathBuf, (Actor, AuditAction, String, String, u64));

    /// Reads up to [`MAX_FILES_PER_PASS`] records from `data_dir`'s inbox.
    /// Files that are not records are left where they are, with a warning.
    pub fn read(data_dir: &Path) -> Vec<Imported> {
        let dir = data_dir.join(DIR_NAME);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten().take(MAX_FILES_PER_PASS) {
            let path = entry.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
                tracing::warn!(path = %path.display(), "not an audit record (not a small file); left in place");
                continue;
            }
            let record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<MintRecord>(&bytes).ok());
            let Some(record) = record else {
                tracing::warn!(path = %path.display(), "not an audit record (does not decode); left in place");
                continue;
            };
            let actor = Actor::local(format!("{} (uid {})", record.user, meta.uid()));
            let detail = format!(
                "JWT for `{}`, role {}, valid {}",
                record.subject,
                record.role,
                humantime::format_duration(std::time::Duration::from_secs(record.ttl_secs))
            );
            out.push((
                path,
                (
                    actor,
                    AuditAction::MintToken,
                    "token".to_owned(),
                    detail,
                    record.at_ms,
                ),
            ));
        }
        out
    }
}
