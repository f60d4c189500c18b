//! The Valkyrie client library: submit jobs, watch them live, fetch logs,
//! cancel, and list jobs and runners, over any Valkyrie transport. The `vk`
//! command-line tool is built on it.
//!
//! With `default-features = false` the crate is the client alone: the
//! default `cli` feature adds what the `vk` program needs, and
//! `local-cluster` the in-process control plane and agents of `local`
//! (and with them the server's and the agent's dependencies).
//!
//! ```no_run
//! # async fn demo() -> Result<(), valkyrie_sdk::ClientError> {
//! use valkyrie_sdk::{Client, JobSpec};
//! let client = Client::connect(&"tcp://127.0.0.1:7700".parse().unwrap(), "API-TOKEN", Default::default()).await?;
//! let job = client.submit(JobSpec::shell("hello", "echo hello")).await?;
//! let mut events = client.watch(Some(job), true, true).await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

#[cfg(feature = "local-cluster")]
pub mod local;

use tokio::sync::mpsc;
use valkyrie::message::{
    AddSchedule, ArtifactFetch, CancelJob, CancelRun, GetJob, GetRun, ListArtifacts, ListAudit, ListJobs,
    ListProjects, ListRunners, ListRuns, ListSchedules, ListServers, Message, PlayJob, RemoveProject,
    RemoveRunner, RemoveSchedule, RerunRun, Role, SubmitJob, SubmitPipeline, Subscribe,
};
use valkyrie::transport::{connect_following, hello, ConnectError, RequestError};
use valkyrie::{Endpoint, SessionSender};

pub use valkyrie::message::{
    ArtifactInfo, AuditEntry, ContainerSpec, Event, EventBody, JobInfo, JobSpec, JobState, OutputStream,
    ProjectInfo, PullPolicy, PutProject, RetryOn, RetryPolicy, RunInfo, RunJobInfo, RunJobState, RunState,
    RunnerInfo, RunnerState, ScheduleInfo, ServerInfo, ServerRole, ServiceSpec, StepInfo, StepOutcome,
    StepSpec,
};
pub use valkyrie::transport::{ClientOptions, ClientTls};
pub use valkyrie_pipeline as pipeline;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect (unreachable, TLS, or refused token).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server refused the request, or the connection ended.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The server answered with an unexpected message.
    #[error("server answered with an unexpected {0} message")]
    Unexpected(valkyrie::FrameKind),
    /// [`Client::connect_any`] was given no server.
    #[error("no server to connect to")]
    NoServer,
    /// An artifact is missing, or arrived damaged, or cannot be written.
    #[error("{0}")]
    Artifact(String),
}

/// Ranges a download asks for at once.
pub const DOWNLOAD_WINDOW: usize = 8;
/// Bytes of one range (under the 1 MiB frame limit clients announce).
pub const DOWNLOAD_CHUNK_BYTES: usize = 512 << 10;

/// A connection to a control plane.
#[derive(Clone, Debug)]
pub struct Client {
    sender: SessionSender,
}

impl Client {
    /// Connects and authenticates with an API token. A standby of a group
    /// of control planes answers with the leader's URIs, which are
    /// followed (a few hops at most, spec §6.4).
    pub async fn connect(
        server: &Endpoint,
        token: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let (session, _) = connect_following(server, hello(Role::Client, token, sdk_id()), &options).await?;
        let (sender, mut unsolicited) = session.into_parts();
        // Nothing unsolicited is expected; drain it so it never backs up.
        tokio::spawn(async move { while unsolicited.recv().await.is_some() {} });
        Ok(Self { sender })
    }

    /// Connects to the leader of a group of control planes sharing one
    /// MongoDB store, given some of its servers: each is tried in turn, and
    /// a standby's redirect to the leader is followed. Fails with the last
    /// server's error when none leads nor names a reachable leader.
    pub async fn connect_any(
        servers: &[Endpoint],
        token: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let mut last = None;
        for server in servers {
            match Self::connect(server, token, options.clone()).await {
                Ok(client) => return Ok(client),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or(ClientError::NoServer))
    }

    async fn call(&self, message: impl Into<Message>) -> Result<Message, ClientError> {
        Ok(self.sender.request(message).await?)
    }

    /// Submits a job; returns its id once the server accepted it.
    pub async fn submit(&self, spec: JobSpec) -> Result<u64, ClientError> {
        match self.call(SubmitJob { spec }).await? {
            Message::JobAccepted(a) => Ok(a.job_id),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Cancels a job (queued, or running: its processes are terminated).
    pub async fn cancel(&self, job_id: u64) -> Result<(), ClientError> {
        match self.call(CancelJob { job_id }).await? {
            Message::Ack(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// One job.
    pub async fn job(&self, job_id: u64) -> Result<JobInfo, ClientError> {
        match self.call(GetJob { job_id }).await? {
            Message::JobDetails(d) => Ok(d.job),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// One job with the steps of its current attempt.
    pub async fn job_with_steps(&self, job_id: u64) -> Result<(JobInfo, Vec<StepInfo>), ClientError> {
        match self.call(GetJob { job_id }).await? {
            Message::JobDetails(d) => Ok((d.job, d.steps)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// The newest jobs (at most `limit`; 0 means the server's default).
    pub async fn jobs(&self, limit: u32) -> Result<Vec<JobInfo>, ClientError> {
        match self.call(ListJobs { limit }).await? {
            Message::JobList(l) => Ok(l.jobs),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Registered runners.
    pub async fn runners(&self) -> Result<Vec<RunnerInfo>, ClientError> {
        match self.call(ListRunners {}).await? {
            Message::RunnerList(l) => Ok(l.runners),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Removes the record of runner `name`. A connected runner is refused,
    /// unless `force`: then it is drained and removed once it disconnects.
    pub async fn remove_runner(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let message = RemoveRunner {
            name: name.to_owned(),
            force,
        };
        match self.call(message).await? {
            Message::Ack(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Submits a pipeline file (validated again by the server); returns the run id.
    pub async fn submit_pipeline(&self, file_name: &str, yaml: &str) -> Result<u64, ClientError> {
        self.submit_pipeline_with(file_name, yaml, Vec::new()).await
    }

    /// Submits a pipeline file with variables for every job (`vk run
    /// --var K=V`); returns the run id. A run whose rules (`workflow: if`,
    /// every job's `if:`) start nothing is refused with the reason.
    pub async fn submit_pipeline_with(
        &self,
        file_name: &str,
        yaml: &str,
        variables: Vec<(String, String)>,
    ) -> Result<u64, ClientError> {
        let message = SubmitPipeline {
            file_name: file_name.to_owned(),
            yaml: yaml.to_owned(),
            variables,
        };
        match self.call(message).await? {
            Message::RunAccepted(a) => Ok(a.run_id),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Starts manual job `job` (`when: manual`) of run `run_id`.
    pub async fn play(&self, run_id: u64, job: &str) -> Result<(), ClientError> {
        let message = PlayJob {
            run_id,
            job: job.to_owned(),
        };
        match self.call(message).await? {
            Message::Ack(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Reruns finished run `run_id` (every job, or with `failed_only` its
    /// failed and cancelled jobs and what waits for them); returns the new
    /// run's id.
    pub async fn rerun(&self, run_id: u64, failed_only: bool) -> Result<u64, ClientError> {
        match self.call(RerunRun { run_id, failed_only }).await? {
            Message::RunAccepted(a) => Ok(a.run_id),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// One run with its jobs.
    pub async fn run(&self, run_id: u64) -> Result<RunInfo, ClientError> {
        match self.call(GetRun { run_id }).await? {
            Message::RunDetails(d) => Ok(d.run),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// The newest runs (at most `limit`; 0 means the server's default).
    pub async fn runs(&self, limit: u32) -> Result<Vec<RunInfo>, ClientError> {
        match self.call(ListRuns { limit }).await? {
            Message::RunList(l) => Ok(l.runs),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// A page of the audit log, newest first: at most `limit` records (0
    /// means the server's default, 100; the server answers at most 1,000)
    /// with ids below `before` (0: from the newest).
    pub async fn audit(&self, limit: u32, before: u64) -> Result<Vec<AuditEntry>, ClientError> {
        match self.call(ListAudit { limit, before }).await? {
            Message::AuditList(l) => Ok(l.entries),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// The control planes of the server's group, leader first (one server
    /// with the embedded store).
    pub async fn servers(&self) -> Result<Vec<ServerInfo>, ClientError> {
        match self.call(ListServers {}).await? {
            Message::ServerList(l) => Ok(l.servers),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Creates a project (empty `branch` and `file` mean `main` and
    /// `.valkyrie.yml`); returns it as stored (secrets are never sent back).
    pub async fn create_project(&self, project: PutProject) -> Result<ProjectInfo, ClientError> {
        match self.call(project).await? {
            Message::ProjectList(l) => l
                .projects
                .into_iter()
                .next()
                .ok_or(ClientError::Unexpected(valkyrie::FrameKind::PROJECT_LIST)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Every project (`name` empty), or the one named.
    pub async fn projects(&self, name: &str) -> Result<Vec<ProjectInfo>, ClientError> {
        let message = ListProjects {
            name: name.to_owned(),
        };
        match self.call(message).await? {
            Message::ProjectList(l) => Ok(l.projects),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Removes a project (its runs stay; its schedules go).
    pub async fn remove_project(&self, name: &str) -> Result<(), ClientError> {
        match self
            .call(RemoveProject {
                name: name.to_owned(),
            })
            .await?
        {
            Message::Ack(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Adds a cron schedule (UTC; 5 fields, or 6 with seconds first) that
    /// runs `branch` of `project` (empty: the project's branch) with
    /// `variables`; returns it.
    pub async fn add_schedule(
        &self,
        project: &str,
        cron: &str,
        branch: &str,
        variables: Vec<(String, String)>,
    ) -> Result<ScheduleInfo, ClientError> {
        let message = AddSchedule {
            project: project.to_owned(),
            cron: cron.to_owned(),
            branch: branch.to_owned(),
            variables,
        };
        match self.call(message).await? {
            Message::ScheduleList(l) => l
                .schedules
                .into_iter()
                .next()
                .ok_or(ClientError::Unexpected(valkyrie::FrameKind::SCHEDULE_LIST)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// The schedules of `project` (empty: of every project), by id.
    pub async fn schedules(&self, project: &str) -> Result<Vec<ScheduleInfo>, ClientError> {
        let message = ListSchedules {
            project: project.to_owned(),
        };
        match self.call(message).await? {
            Message::ScheduleList(l) => Ok(l.schedules),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Removes schedule `id`.
    pub async fn remove_schedule(&self, id: u64) -> Result<(), ClientError> {
        match self.call(RemoveSchedule { id }).await? {
            Message::Ack(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Cancels a run: its unfinished jobs are cancelled, waiting ones skipped.
    pub async fn cancel_run(&self, run_id: u64) -> Result<(), ClientError> {
        match self.call(CancelRun { run_id }).await? {
            Message::Ack(_) => Ok(()),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// The artifacts job `job_id` stored (name, size, SHA-256, expiry).
    pub async fn artifacts(&self, job_id: u64) -> Result<Vec<ArtifactInfo>, ClientError> {
        match self.call(ListArtifacts { job_id }).await? {
            Message::ArtifactList(l) => Ok(l.artifacts),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Downloads artifact `name` of job `job_id` into `out`, checking its
    /// SHA-256; returns what was downloaded. At most
    /// [`DOWNLOAD_WINDOW`] ranges of [`DOWNLOAD_CHUNK_BYTES`] are asked for
    /// at once, so memory stays bounded whatever the artifact's size.
    pub async fn download_artifact(
        &self,
        job_id: u64,
        name: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<ArtifactInfo, ClientError> {
        use tokio::io::AsyncWriteExt;
        let info = self
            .artifacts(job_id)
            .await?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ClientError::Artifact(format!("job {job_id} has no artifact `{name}`")))?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut window = std::collections::VecDeque::new();
        let (mut asked, mut written) = (0u64, 0u64);
        while written < info.size {
            while window.len() < DOWNLOAD_WINDOW && asked < info.size {
                let want = (info.size - asked).min(DOWNLOAD_CHUNK_BYTES as u64);
                let fetch = ArtifactFetch {
                    job_id,
                    name: name.to_owned(),
                    offset: asked,
                    max_bytes: want as u32,
                };
                window.push_back(self.sender.request_queued(fetch).await?);
                asked += want;
            }
            let Some(next) = window.pop_front() else { break };
            let answer = next.answer().await?;
            let Message::ArtifactData(data) = answer else {
                return Err(ClientError::Unexpected(answer.kind()));
            };
            if data.offset != written || data.data.is_empty() || data.sha256 != info.sha256 {
                return Err(ClientError::Artifact(format!(
                    "artifact `{name}` of job {job_id} changed while it was downloaded"
                )));
            }
            out.write_all(&data.data)
                .await
                .map_err(|e| ClientError::Artifact(format!("cannot write artifact `{name}`: {e}")))?;
            hasher.update(&data.data);
            written += data.data.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| ClientError::Artifact(format!("cannot write artifact `{name}`: {e}")))?;
        let actual = hex::encode(hasher.finish().as_ref());
        if actual != info.sha256 {
            return Err(ClientError::Artifact(format!(
                "artifact `{name}` of job {job_id} arrived with SHA-256 {actual}, expected {}",
                info.sha256
            )));
        }
        Ok(info)
    }

    /// Subscribes to events of one job (or all), optionally with logs and with
    /// the stored history replayed first (ending with `ReplayDone`).
    pub async fn watch(
        &self,
        job_id: Option<u64>,
        logs: bool,
        replay: bool,
    ) -> Result<EventStream, ClientError> {
        let rx = self
            .sender
            .stream(Subscribe { job_id, logs, replay }, 4096)
            .await
            .map_err(RequestError::from)?;
        Ok(EventStream { rx })
    }
}

/// Live events of a subscription.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Message>,
}

impl EventStream {
    /// The next event; `None` when the connection ended. A refused
    /// subscription (e.g. unknown job) ends with an error.
    pub async fn recv(&mut self) -> Option<Result<Event, ClientError>> {
        match self.rx.recv().await? {
            Message::Event(e) => Some(Ok(e)),
            Message::RequestFailed(f) => Some(Err(ClientError::Request(RequestError::Failed {
                code: f.code,
                message: f.message,
            }))),
            other => Some(Err(ClientError::Unexpected(other.kind()))),
        }
    }
}

fn sdk_id() -> String {
    format!("valkyrie-sdk/{}", env!("CARGO_PKG_VERSION"))
}
