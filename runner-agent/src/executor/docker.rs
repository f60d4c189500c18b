//! The Docker executor: a job's steps run in one container, one `docker
//! exec` per step, with its services on a network of the job's own.
//!
//! Life of a container job (modelled on GitLab Runner's Docker executor):
//!
//! ```text
//! pull images (pull_policy)
//!   -> network valkyrie-<runner>-<job>-<attempt>-<random> (only with
//!      services, or --docker-network-per-job; else the default bridge)
//!   -> services (alias on that network, must be running)
//!   -> job container (workspace bind-mounted at /workspace, PID 1 a
//!      sleep loop) -> one exec per step -> teardown
//! ```
//!
//! A cancel or the job's timeout interrupts any of these phases.
//!
//! Guarantees:
//! * everything the agent creates carries the labels [`LABEL_RUNNER`],
//!   [`LABEL_JOB`] and [`LABEL_ATTEMPT`]; [`DockerExecutor::remove_orphans`]
//!   removes what a previous run of the same runner left (kill -9), but
//!   the containers of the attempts it re-attaches: those run on under
//!   their supervisor ([`crate::supervisor`]), which holds their exec
//!   streams, so a restarted agent needs no Docker call to re-attach;
//! * teardown (containers with their anonymous volumes, then the network)
//!   runs however the job ended, before [`super::run_job`] returns;
//! * stopping a step (cancel, timeout): SIGTERM to every process of the
//!   container but PID 1 (`kill -TERM -1` run in it), up to the kill grace
//!   for the step to end, then SIGKILL to the whole container;
//! * jobs are not privileged, get no host network and never the Docker
//!   socket, unless the agent was started with `--docker-privileged` or
//!   `--docker-volume` naming it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use valkyrie::message::{ContainerSpec, PullPolicy};

use super::output::StreamShaper;
use super::{EventSink, OutputStream};

/// Label naming the runner that created a container or network.
pub const LABEL_RUNNER: &str = "io.valkyrie.runner";
/// Label naming the job id.
pub const LABEL_JOB: &str = "io.valkyrie.job";
/// Label naming the attempt.
pub const LABEL_ATTEMPT: &str = "io.valkyrie.attempt";
/// Where the job's workspace is mounted in its container.
pub const WORKSPACE_PATH: &str = "/workspace";
/// Where the `$VALKYRIE_ENV` / `$VALKYRIE_PATH` files are mounted.
pub const FILES_PATH: &str = "/valkyrie";
/// Where the job's cache directory ([`crate::cache`]) is mounted.
pub const CACHE_PATH: &str = "/valkyrie-cache";
/// PID 1 of a job container: sleeps until the container is removed and
/// exits on SIGTERM. Needs only `sh` and `sleep` in the image.
const KEEP_ALIVE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
];
/// Unterminated output is released after this much quiet (as for processes).
const PARTIAL_LINE_FLUSH: Duration = Duration::from_millis(100);
/// How long a service may take to be running after its start.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the Docker executor, from the agent's flags.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DockerSettings {
    /// The runner's name, in every label.
    pub runner: String,
    /// `--docker-privileged`: job and service containers run privileged.
    pub privileged: bool,
    /// `--docker-volume`: extra binds (`host:container[:ro]`) for job containers.
    pub volumes: Vec<String>,
    /// `--docker-default-image`: the image of jobs that name none.
    pub default_image: Option<String>,
    /// `--docker-network-per-job`: a network of its own for every job, not
    /// only for jobs with services.
    pub network_per_job: bool,
}

/// A connection to the Docker Engine plus the executor's settings. Cheap to clone.
#[derive(Clone)]
pub struct DockerExecutor {
    docker: Docker,
    settings: Arc<DockerSettings>,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Why the agent could not reach the Docker Engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectDockerError {
    /// The socket (`DOCKER_HOST` or the default) did not answer.
    #[error("cannot reach the Docker Engine (DOCKER_HOST or /var/run/docker.sock): {0}; is it running, and may this user use it?")]
    Unreachable(#[source] DockerError),
}

/// A job's container, network and services, and the steps run in it.
pub(super) struct JobContainer {
    docker: Docker,
    /// Job container id, once created.
    container: Option<String>,
    services: Vec<String>,
    network: Option<String>,
    /// The image's own environment (`PATH` and the like), for the job's.
    pub(super) image_env: Vec<(String, String)>,
    /// `label=value` filters naming this attempt's objects (runner, job,
    /// attempt), for a teardown that also finds what a start interrupted
    /// mid-request created.
    filter: Vec<String>,
}

/// Why a container job did not get to its first step.
pub(super) enum StartError {
    /// Something failed; the message names it (the image, the service).
    Failed(String),
    /// Cancelled while pulling or starting.
    Cancelled,
    /// The job's timeout passed while pulling or starting.
    TimedOut,
}

/// What a step runs in the container.
pub(super) struct ExecCommand {
    /// Program and arguments.
    pub(super) argv: Vec<String>,
    /// The step's whole environment, `NAME=value`.
    pub(super) env: Vec<String>,
    /// Working directory, a path in the container.
    pub(super) cwd: String,
}

/// How a step in the container ended.
pub(super) struct ExecResult {
    pub(super) exit_code: Option<i32>,
    pub(super) stopped: Option<super::step::StopReason>,
}

fn labels(runner: &str, job_id: u64, attempt: u32) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_RUNNER.to_owned(), runner.to_owned()),
        (LABEL_JOB.to_owned(), job_id.to_string()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
    ])
}

fn not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

fn server_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// `name:tag` split for the pull API (`name` alone means `latest`).
fn split_tag(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

fn split_env(vars: Option<Vec<String>>) -> Vec<(String, String)> {
    vars.unwrap_or_default()
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

impl DockerExecutor {
    /// Connects to `DOCKER_HOST` or the local socket, agrees on an API
    /// version and checks that the Engine answers.
    pub async fn connect(settings: DockerSettings) -> Result<Self, ConnectDockerError> {
        let docker = Docker::connect_with_defaults().map_err(ConnectDockerError::Unreachable)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(ConnectDockerError::Unreachable)?;
        docker.ping().await.map_err(ConnectDockerError::Unreachable)?;
        Ok(Self {
            docker,
            settings: Arc::new(settings),
        })
    }

    /// The executor's settings.
    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    /// Removes every container (with its anonymous volumes) and network
    /// labelled with this runner's name, but those of the attempts in
    /// `keep` (`(job, attempt)`: the jobs a restarted agent re-attaches).
    /// Called when the agent starts, before it takes jobs, so all of them
    /// belong to a previous run of this runner (one killed with -9 had no
    /// chance to clean up). Returns how many objects were removed.
    pub async fn remove_orphans(&self, keep: &[(u64, u32)]) -> Result<usize, DockerError> {
        let kept = |labels: Option<&HashMap<String, String>>| {
            let Some(labels) = labels else { return false };
            let job = labels.get(LABEL_JOB).and_then(|v| v.parse::<u64>().ok());
            let attempt = labels.get(LABEL_ATTEMPT).and_then(|v| v.parse::<u32>().ok());
            matches!((job, attempt), (Some(j), Some(a)) if keep.contains(&(j, a)))
        };
        self.remove_labelled(vec![format!("{LABEL_RUNNER}={}", self.settings.runner)], kept)
            .await
    }

    /// Removes the containers and network of one attempt of this runner
    /// (one the server no longer counts, whose supervisor was killed).
    pub async fn remove_attempt(&self, job_id: u64, attempt: u32) -> Result<usize, DockerError> {
        self.remove_labelled(
            labels(&self.settings.runner, job_id, attempt)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            |_| false,
        )
        .await
    }

    async fn remove_labelled(
        &self,
        filters: Vec<String>,
        kept: impl Fn(Option<&HashMap<String, String>>) -> bool,
    ) -> Result<usize, DockerError> {
        let filter = HashMap::from([("label", filters)]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await?;
        let mut removed = 0;
        for c in containers {
            if kept(c.labels.as_ref()) {
                continue;
            }
            let Some(id) = c.id else { continue };
            match self.docker.remove_container(&id, Some(remove_options())).await {
                Ok(()) => removed += 1,
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filter).build()))
            .await?;
        for n in networks {
            if kept(n.labels.as_ref()) {
                continue;
            }
            let Some(id) = n.id else { continue };
            match self.docker.remove_network(&id).await {
                Ok(()) => removed += 1,
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Makes `image` present as `policy` says, and returns its environment.
    /// The error names the image.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<Vec<(String, String)>, String> {
        let present = match self.docker.inspect_image(image).await {
            Ok(inspect) => Some(split_env(inspect.config.and_then(|c| c.env))),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(format!("cannot inspect image `{image}`: {}", server_message(&e))),
        };
        let present = match (policy, present) {
            (PullPolicy::IfNotPresent | PullPolicy::Never, Some(env)) => return Ok(env),
            (PullPolicy::Never, None) => {
                return Err(format!(
                    "image `{image}` is not on this runner and the job's pull_policy is `never`; \
                     load it on the runner (docker load / docker build) or allow pulling"
                ))
            }
            (_, present) => present.is_some(),
        };
        let (name, tag) = split_tag(image);
        let options = CreateImageOptionsBuilder::new().from_image(name).tag(tag).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            if let Err(e) = progress {
                return Err(format!(
                    "image `{image}` could not be pulled: {}{}",
                    server_message(&e),
                    if present {
                        ""
                    } else {
                        " (and it is not on this runner)"
                    }
                ));
            }
        }
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(split_env(inspect.config.and_then(|c| c.env))),
            Err(e) => Err(format!("cannot inspect image `{image}`: {}", server_message(&e))),
        }
    }
}

fn remove_options() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new().force(true).v(true).build()
}

impl JobContainer {
    /// Pulls the images, creates the network, starts the services and the
    /// job container. On error, what was created is recorded in `self` so
    /// that [`Self::teardown`] removes it.
    ///
    /// A cancel or the job's `deadline` interrupts the start wherever it is
    /// (a pull can take minutes); the teardown then finds what was created
    /// by its labels.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        executor: &DockerExecutor,
        spec: &ContainerSpec,
        job_id: u64,
        attempt: u32,
        workspace: &std::path::Path,
        files: &std::path::Path,
        cache: Option<&std::path::Path>,
        deadline: Option<Instant>,
        cancel: &mut watch::Receiver<bool>,
    ) -> (Self, Result<(), StartError>) {
        let mut job = JobContainer {
            docker: executor.docker.clone(),
            container: None,
            services: Vec::new(),
            network: None,
            image_env: Vec::new(),
            filter: labels(&executor.settings.runner, job_id, attempt)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        };
        let result = tokio::select! {
            result = job.start_inner(executor, spec, job_id, attempt, workspace, files, cache) => {
                result.map_err(StartError::Failed)
            }
            () = super::step::cancelled(cancel) => Err(StartError::Cancelled),
            () = super::step::sleep_until(deadline) => Err(StartError::TimedOut),
        };
        (job, result)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_inner(
        &mut self,
        executor: &DockerExecutor,
        spec: &ContainerSpec,
        job_id: u64,
        attempt: u32,
        workspace: &std::path::Path,
        files: &std::path::Path,
        cache: Option<&std::path::Path>,
    ) -> Result<(), String> {
        let settings = &executor.settings;
        let labels = labels(&settings.runner, job_id, attempt);
        self.image_env = executor.ensure_image(&spec.image, spec.pull_policy).await?;
        for service in &spec.services {
            executor.ensure_image(&service.image, spec.pull_policy).await?;
        }

        // Unique per attempt; a random suffix so that a leftover of a
        // crashed run (not yet removed) never blocks the name.
        let base = format!(
            "valkyrie-{}-{job_id}-{attempt}-{:08x}",
            sanitize(&settings.runner),
            fastrand::u32(..)
        );
        // A network of the job's own only when it has services to reach
        // (creating and removing one costs about a third of a container
        // job's overhead); otherwise Docker's default bridge, where
        // containers cannot resolve each other by name.
        let network_mode = if spec.services.is_empty() && !settings.network_per_job {
            "bridge".to_owned()
        } else {
            let network = self
                .docker
                .create_network(NetworkCreateRequest {
                    name: base.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("cannot create the job's network: {}", server_message(&e)))?;
            self.network = Some(network.id);
            base.clone()
        };

        for service in &spec.services {
            let name = format!("{base}-{}", sanitize(&service.alias));
            let body = ContainerCreateBody {
                image: Some(service.image.clone()),
                env: Some(service.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                cmd: (!service.command.is_empty()).then(|| service.command.clone()),
                labels: Some(labels.clone()),
                host_config: Some(HostConfig {
                    network_mode: Some(base.clone()),
                    privileged: Some(settings.privileged),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        base.clone(),
                        EndpointSettings {
                            aliases: Some(vec![service.alias.clone()]),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            };
            let created = self
                .docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                    body,
                )
                .await
                .map_err(|e| {
                    format!(
                        "cannot create service `{}` ({}): {}",
                        service.alias,
                        service.image,
                        server_message(&e)
                    )
                })?;
            self.services.push(created.id.clone());
            self.docker
                .start_container(&created.id, None)
                .await
                .map_err(|e| {
                    format!(
                        "cannot start service `{}` ({}): {}",
                        service.alias,
                        service.image,
                        server_message(&e)
                    )
                })?;
        }
        for (id, service) in self.services.iter().zip(&spec.services) {
            wait_running(&self.docker, id)
                .await
                .map_err(|why| format!("service `{}` ({}) {why}", service.alias, service.image))?;
        }

        let mut binds = vec![
            format!("{}:{WORKSPACE_PATH}", workspace.display()),
            format!("{}:{FILES_PATH}", files.display()),
        ];
        binds.extend(cache.map(|dir| format!("{}:{CACHE_PATH}", dir.display())));
        binds.extend(settings.volumes.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: Some(KEEP_ALIVE.iter().map(|s| (*s).to_owned()).collect()),
            working_dir: Some(WORKSPACE_PATH.into()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: Some(network_mode),
                privileged: Some(settings.privileged),
                nano_cpus: (spec.cpus_milli > 0).then(|| i64::from(spec.cpus_milli) * 1_000_000),
                memory: (spec.memory_bytes > 0).then(|| i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&base).build()),
                body,
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot create the job container from `{}`: {}",
                    spec.image,
                    server_message(&e)
                )
            })?;
        self.container = Some(created.id.clone());
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| {
                format!(
                    "cannot start the job container from `{}`: {}",
                    spec.image,
                    server_message(&e)
                )
            })?;
        Ok(())
    }

    /// Runs `command` in the job container, streaming its output to
    /// `sink`, until it exits or is stopped by cancel or `deadline`.
    pub(super) async fn exec(
        &self,
        command: ExecCommand,
        deadline: Option<Instant>,
        kill_grace: Duration,
        sink: &mut EventSink,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<ExecResult, String> {
        use super::step::StopReason;
        let container = self
            .container
            .as_deref()
            .ok_or("the job container is not running")?;
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    env: Some(command.env),
                    cmd: Some(command.argv),
                    working_dir: Some(command.cwd),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("could not start: {}", server_message(&e)))?;
        let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| format!("could not start: {}", server_message(&e)))?
        else {
            return Err("could not start: the exec was detached".into());
        };
        let mut stdout = StreamShaper::new(sink.secrets.clone());
        let mut stderr = StreamShaper::new(sink.secrets.clone());
        let (mut stdout_flush, mut stderr_flush): (Option<Instant>, Option<Instant>) = (None, None);
        let mut stopped: Option<StopReason> = None;
        let mut sigkill_at: Option<Instant> = None;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        let chunks = stdout.push(&message);
                        stdout_flush = stdout.has_partial_line().then(|| Instant::now() + PARTIAL_LINE_FLUSH);
                        sink.output(OutputStream::Stdout, chunks).await;
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        let chunks = stderr.push(&message);
                        stderr_flush = stderr.has_partial_line().then(|| Instant::now() + PARTIAL_LINE_FLUSH);
                        sink.output(OutputStream::Stderr, chunks).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "step output stream failed");
                        break;
                    }
                    None => break,
                },
                () = super::step::cancelled(cancel), if stopped.is_none() => {
                    tracing::info!("step cancelled, sending SIGTERM to the container's processes");
                    stopped = Some(StopReason::Cancelled);
                    self.terminate_all(container).await;
                    sigkill_at = Some(Instant::now() + kill_grace);
                }
                () = super::step::sleep_until(deadline), if stopped.is_none() => {
                    tracing::info!("job timed out, sending SIGTERM to the container's processes");
                    stopped = Some(StopReason::TimedOut);
                    self.terminate_all(container).await;
                    sigkill_at = Some(Instant::now() + kill_grace);
                }
                () = super::step::sleep_until(sigkill_at) => {
                    tracing::info!("kill grace expired, killing the job container");
                    sigkill_at = None;
                    let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
                    if let Err(error) = self.docker.kill_container(container, Some(kill)).await {
                        tracing::warn!(%error, "could not kill the job container");
                    }
                }
                () = super::step::sleep_until(stdout_flush) => {
                    stdout_flush = None;
                    sink.output(OutputStream::Stdout, stdout.flush_partial_line()).await;
                }
                () = super::step::sleep_until(stderr_flush) => {
                    stderr_flush = None;
                    sink.output(OutputStream::Stderr, stderr.flush_partial_line()).await;
                }
            }
        }
        sink.output(OutputStream::Stdout, stdout.finish()).await;
        sink.output(OutputStream::Stderr, stderr.finish()).await;
        let exit_code = match self.docker.inspect_exec(&exec.id).await {
            Ok(inspect) => inspect.exit_code.and_then(|c| i32::try_from(c).ok()),
            Err(error) => {
                tracing::warn!(%error, "could not read the step's exit code");
                None
            }
        };
        Ok(ExecResult { exit_code, stopped })
    }

    /// SIGTERM to every process in the container except its PID 1 (and
    /// the `kill` itself), via a detached exec. Best effort: an image
    /// without `sh` gets SIGKILL at the end of the grace instead.
    async fn terminate_all(&self, container: &str) {
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions::<String> {
                    cmd: Some(vec!["sh".into(), "-c".into(), "kill -TERM -1".into()]),
                    ..Default::default()
                },
            )
            .await;
        let started = match exec {
            Ok(exec) => {
                self.docker
                    .start_exec(
                        &exec.id,
                        Some(bollard::exec::StartExecOptions {
                            detach: true,
                            ..Default::default()
                        }),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(error) = started {
            tracing::warn!(%error, "could not send SIGTERM in the job container");
        }
    }

    /// Removes the job container, the services (with their anonymous
    /// volumes) and the network. Errors are logged: the next start of the
    /// agent removes whatever is left.
    pub(super) async fn teardown(self) {
        let filter = HashMap::from([("label", self.filter.clone())]);
        let mut containers: Vec<String> = self.container.iter().chain(&self.services).cloned().collect();
        let mut networks: Vec<String> = self.network.iter().cloned().collect();
        let listed = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filter)
            .build();
        if let Ok(listed) = self.docker.list_containers(Some(listed)).await {
            containers.extend(listed.into_iter().filter_map(|c| c.id));
        }
        let listed = ListNetworksOptionsBuilder::new().filters(&filter).build();
        if let Ok(listed) = self.docker.list_networks(Some(listed)).await {
            networks.extend(listed.into_iter().filter_map(|n| n.id));
        }
        containers.sort();
        containers.dedup();
        networks.sort();
        networks.dedup();
        for id in &containers {
            match self.docker.remove_container(id, Some(remove_options())).await {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(error) => tracing::warn!(%error, container = %id, "could not remove container"),
            }
        }
        for network in &networks {
            if let Err(error) = self.docker.remove_network(network).await {
                if !not_found(&error) {
                    tracing::warn!(%error, %network, "could not remove network");
                }
            }
        }
    }
}

/// Waits until the container is running; an error if it exited or took
/// longer than [`SERVICE_START_TIMEOUT`].
async fn wait_running(docker: &Docker, id: &str) -> Result<(), String> {
    let deadline = Instant::now() + SERVICE_START_TIMEOUT;
    let mut pause = Duration::from_millis(10);
    loop {
        let inspect = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| format!("cannot be inspected: {}", server_message(&e)))?;
        let state = inspect.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(());
        }
        if state.status.as_ref().is_some_and(|s| s.to_string() == "exited") {
            return Err(format!(
                "exited with code {} before the job started",
                state.exit_code.unwrap_or(-1)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "was not running after {}s",
                SERVICE_START_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Container names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_for_the_pull_api() {
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(split_tag("rust:1.89"), ("rust", "1.89"));
        assert_eq!(
            split_tag("registry:5000/team/tool"),
            ("registry:5000/team/tool", "latest")
        );
        assert_eq!(
            split_tag("registry:5000/team/tool:2"),
            ("registry:5000/team/tool", "2")
        );
        assert_eq!(split_tag("redis@sha256:ab"), ("redis@sha256:ab", ""));
        assert_eq!(sanitize("build 1/ü"), "build-1--");
    }
}
