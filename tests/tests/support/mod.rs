//! Shared fixtures for the scenario tests: the real `valkyrie-server`,
//! `valkyrie-agent` and `vk` binaries started as child processes in a
//! temporary directory, killed when their guard is dropped.
//!
//! Every process a test starts carries `VKTEST_SCOPE=<its temporary
//! directory>` in its environment, and agents pass it on to job steps
//! (`--pass-env VKTEST_SCOPE`), so [`Harness`] can find (and, on drop,
//! kill) every process of its test, including job processes that outlived
//! a killed agent.
//!
//! Nothing here sleeps for a fixed time: waits poll a condition until a
//! deadline ([`wait_until`]) or read a child's output.
#![allow(dead_code)]

pub mod git;
pub mod s3;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use valkyrie::message::{
    Heartbeat, Message, RegisterRunner, Role, RunnerRegistered, RunnerState, RunningAttempt,
};
use valkyrie::transport::{connect, hello};
use valkyrie::{Endpoint, Session};
use valkyrie_sdk::{Client, ClientOptions, ClientTls, JobInfo, JobState, RunnerInfo};

/// How long any single awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Interval between two polls of a condition.
const POLL: Duration = Duration::from_millis(25);

/// Server flags that keep the scenarios fast.
pub const FAST_SERVER: &[&str] = &[
    "--runner-lost-after",
    "2s",
    "--assign-lease",
    "2s",
    "--kill-grace",
    "1s",
    "--heartbeat-interval",
    "200ms",
];
/// Agent flags that keep the scenarios fast.
pub const FAST_AGENT: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--kill-grace",
    "1s",
    "--pass-env",
    "VKTEST_SCOPE",
];

/// Path of a workspace binary, next to the test executable's directory
/// (`target/debug/deps/<test>` → `target/debug/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --bins` \
         (or run `cargo test --workspace`, which builds them)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_within(what, DEADLINE, check).await
}

/// Polls `check` until it returns `Some`, failing the test after `limit`
/// (for waits on bulk work, longer than any single event may take).
pub async fn wait_until_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends `signal` to one process, ignoring a process that is already gone.
pub fn signal_pid(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

/// A test's temporary directory and the scope of its processes.
pub struct Harness {
    dir: tempfile::TempDir,
    next: AtomicUsize,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh temporary directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("vkt")
                .tempdir()
                .expect("temporary directory"),
            next: AtomicUsize::new(1),
        }
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The value of `VKTEST_SCOPE` this test's processes carry.
    pub fn scope(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn unique(&self, what: &str) -> String {
        format!("{what}-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A command for one of the binaries, with a clean `VALKYRIE_*`
    /// environment and this harness's scope marker.
    pub fn command(&self, name: &str) -> Command {
        self.command_of(binary(name))
    }

    /// [`Harness::command`] for any program (on PATH or a path).
    pub fn command_of(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VALKYRIE_") {
                command.env_remove(key);
            }
        }
        command
            .env("VKTEST_SCOPE", self.scope())
            .env("NO_COLOR", "1")
            .env("VALKYRIE_LOG", "info,valkyrie=debug,valkyrie_control_plane=debug")
            .stdin(Stdio::null());
        command
    }

    /// A server listening on a Unix socket in this directory, with the fast
    /// timing flags.
    pub fn server(&self) -> ServerBuilder<'_> {
        let socket = self.path().join(format!("{}.sock", self.unique("server")));
        ServerBuilder {
            harness: self,
            listen: vec![format!("unix://{}", socket.display())],
            data_dir: self.path().join("data"),
            api_token: None,
            runner_token: None,
            args: FAST_SERVER.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// An agent for `server`, named `agent-N`, with one slot and the fast
    /// timing flags.
    pub fn agent<'a>(&'a self, server: &'a Server) -> AgentBuilder<'a> {
        AgentBuilder {
            harness: self,
            server,
            endpoint: server.endpoint().to_owned(),
            name: self.unique("agent"),
            tags: Vec::new(),
            slots: 1,
            token: server.runner_token.clone(),
            args: FAST_AGENT.iter().map(|s| s.to_string()).collect(),
            envs: Vec::new(),
        }
    }

    /// Live (non-zombie) processes of this test whose environment contains
    /// every one of `needles` (`NAME=value` entries).
    pub fn processes_with_env(&self, needles: &[&str]) -> Vec<i32> {
        let scope = format!("VKTEST_SCOPE={}", self.scope());
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            let has = |needle: &str| vars.contains(&needle.as_bytes());
            if !has(&scope) || !needles.iter().all(|n| has(n)) {
                continue;
            }
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
                })
                .unwrap_or(true);
            if !zombie {
                found.push(pid);
            }
        }
        found
    }

    /// SIGKILLs every process of this test matching `needles`.
    pub fn kill_processes_with_env(&self, needles: &[&str]) {
        for pid in self.processes_with_env(needles) {
            signal_pid(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Job processes outlive a killed agent: take them down too.
        self.kill_processes_with_env(&[]);
        // VKTEST_KEEP=1 keeps the directory (logs, data) of a failing test.
        if std::thread::panicking() && std::env::var_os("VKTEST_KEEP").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::Builder::new()
                    .prefix("vkt")
                    .tempdir()
                    .expect("temporary directory"),
            );
            eprintln!("test directory kept: {}", dir.keep().display());
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped. When the test
/// is failing, the tail of its log is printed to help the diagnosis.
pub struct Guarded {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Guarded {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: Signal) {
        signal_pid(self.pid(), signal);
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll child")
    }

    /// Waits (with the deadline) for the process to exit.
    pub async fn exited(&mut self) -> ExitStatus {
        let what = format!("{} to exit", self.what);
        wait_until(&what, || std::future::ready(self.try_wait())).await
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill_now();
        if std::thread::panicking() {
            let what = format!("{} ({})", self.what, self.log.display());
            valkyrie_test_support::print_tail(&what, &self.log());
        }
    }
}

pub fn spawn_logged(mut command: Command, what: &str, log: PathBuf, stdout: Stdio) -> Guarded {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    command.stdout(stdout).stderr(file);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Guarded {
        child,
        what: what.to_owned(),
        log,
    }
}

/// How to start a server.
pub struct ServerBuilder<'a> {
    harness: &'a Harness,
    listen: Vec<String>,
    data_dir: PathBuf,
    api_token: Option<String>,
    runner_token: Option<String>,
    args: Vec<String>,
    /// Environment variables set for the server.
    env: Vec<(String, String)>,
    /// A program (and its arguments) that execs the server.
    wrapper: Vec<String>,
}

impl ServerBuilder<'_> {
    /// Listens on these URIs instead (port 0 picks a free port).
    pub fn listen(mut self, uris: &[&str]) -> Self {
        self.listen = uris.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Uses this data directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Fixed tokens instead of generated ones.
    pub fn tokens(mut self, api: &str, runner: &str) -> Self {
        self.api_token = Some(api.into());
        self.runner_token = Some(runner.into());
        self
    }

    /// Replaces the value of one of the fast timing flags (or adds the flag).
    pub fn flag(mut self, flag: &str, value: &str) -> Self {
        match self.args.iter().position(|a| a == flag) {
            Some(i) => self.args[i + 1] = value.into(),
            None => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
        self
    }

    /// Extra flags, after the fast timing flags (e.g. `--store URI`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Sets an environment variable of the server (e.g. `AWS_ENDPOINT_URL`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Starts a server that may not lead at once (a standby of a group
    /// of servers on one MongoDB store): its endpoints are the `listen`
    /// URIs as given.
    pub fn start_standby(self) -> Server {
        let (process, _listening, _name) = self.spawn();
        let api_token = self.api_token.clone().expect("a standby needs fixed tokens");
        let runner_token = self.runner_token.clone().expect("a standby needs fixed tokens");
        Server {
            process,
            endpoints: self.listen.clone(),
            api_token,
            runner_token,
            ca_cert: None,
            harness_scope: self.harness.scope(),
        }
    }

    /// Runs the server under `wrapper` (e.g. `ip netns exec NAME`), which
    /// must exec it (so that its pid is the server's).
    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    fn spawn(&self) -> (Guarded, mpsc::Receiver<String>, String) {
        let mut command = match self.wrapper.split_first() {
            None => self.harness.command("valkyrie-server"),
            Some((program, args)) => {
                let mut command = self.harness.command_of(program);
                command.args(args).arg(binary("valkyrie-server"));
                command
            }
        };
        command.arg("--data-dir").arg(&self.data_dir);
        for uri in &self.listen {
            command.arg("--listen").arg(uri);
        }
        if let Some(token) = &self.api_token {
            command.arg("--api-token").arg(token);
        }
        if let Some(token) = &self.runner_token {
            command.arg("--runner-token").arg(token);
        }
        command.args(&self.args);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let name = self.harness.unique("server");
        let log = self.harness.path().join(format!("{name}.log"));
        let mut process = spawn_logged(command, &name, log, Stdio::piped());
        let stdout = process.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(uri) = line.strip_prefix("listening on ") {
                    let _ = tx.send(uri.trim().to_owned());
                }
            }
        });
        (process, rx, name)
    }

    /// Starts the server and waits until every listener is ready.
    pub fn start(self) -> Server {
        let (mut process, rx, name) = self.spawn();
        let deadline = Instant::now() + DEADLINE;
        let mut endpoints = Vec::new();
        while endpoints.len() < self.listen.len() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(uri) => endpoints.push(uri),
                Err(_) => panic!(
                    "{name} did not report `listening on` for {:?} (status {:?}); its log:\n{}",
                    self.listen,
                    process.try_wait(),
                    process.log()
                ),
            }
        }
        let read_token = |given: Option<String>, file: &str| {
            given.unwrap_or_else(|| {
                std::fs::read_to_string(self.data_dir.join(file))
                    .unwrap_or_else(|e| panic!("{name} wrote no {file}: {e}"))
                    .trim()
                    .to_owned()
            })
        };
        let api_token = read_token(self.api_token.clone(), "api-token");
        let runner_token = read_token(self.runner_token.clone(), "runner-token");
        let cert = self.data_dir.join("dev-cert.pem");
        Server {
            process,
            endpoints,
            api_token,
            runner_token,
            ca_cert: cert.is_file().then_some(cert),
            harness_scope: self.harness.scope(),
        }
    }
}

/// A running `valkyrie-server`.
pub struct Server {
    /// The process.
    pub process: Guarded,
    /// The bound endpoints, as the server printed them.
    pub endpoints: Vec<String>,
    /// The API token.
    pub api_token: String,
    /// The runner registration token.
    pub runner_token: String,
    /// The development certificate, when the server made one.
    pub ca_cert: Option<PathBuf>,
    harness_scope: String,
}

impl Server {
    /// The first endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[0]
    }

    fn client_tls(&self, endpoint: &str) -> Option<&Path> {
        let needs_tls = endpoint.starts_with("tls://") || endpoint.starts_with("quic://");
        needs_tls.then(|| {
            self.ca_cert
                .as_deref()
                .expect("a tls:// or quic:// server has a development certificate")
        })
    }

    /// An SDK client on the first endpoint.
    pub async fn client(&self) -> Client {
        self.client_on(self.endpoint()).await
    }

    /// An SDK client on `endpoint`.
    pub async fn client_on(&self, endpoint: &str) -> Client {
        let tls = self
            .client_tls(endpoint)
            .map(|ca| ClientTls::from_ca_file(ca).expect("CA certificate"));
        let options = ClientOptions {
            tls,
            ..Default::default()
        };
        let parsed: Endpoint = endpoint.parse().expect("endpoint");
        within(
            "the SDK client to connect",
            Client::connect(&parsed, &self.api_token, options),
        )
        .await
        .unwrap_or_else(|e| panic!("SDK client cannot connect to {endpoint}: {e}"))
    }

    /// Runs `vk ARGS` against the first endpoint with the API token.
    pub async fn vk(&self, args: &[&str]) -> Output {
        self.vk_on(self.endpoint(), &self.api_token, args).await
    }

    /// Runs `vk ARGS` against `endpoint` with `token`.
    pub async fn vk_on(&self, endpoint: &str, token: &str, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(binary("vk"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VALKYRIE_") {
                command.env_remove(key);
            }
        }
        command
            .env("VKTEST_SCOPE", &self.harness_scope)
            .arg("--server")
            .arg(endpoint)
            .arg("--token")
            .arg(token);
        if let Some(ca) = self.client_tls(endpoint) {
            command.arg("--ca-cert").arg(ca);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("`vk {}`", args.join(" "));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        // Read as it comes, so that a `vk` that hangs is shown with what it
        // printed so far.
        let stderr_so_far = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().expect("piped");
        let stderr_task = tokio::spawn({
            let so_far = stderr_so_far.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                    so_far.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            }
        });
        let mut stdout = child.stdout.take().expect("piped");
        let run = async {
            use tokio::io::AsyncReadExt;
            let mut out = Vec::new();
            let (read, status) = tokio::join!(stdout.read_to_end(&mut out), child.wait());
            read.unwrap_or_else(|e| panic!("cannot read {what}'s output: {e}"));
            (
                status.unwrap_or_else(|e| panic!("cannot wait for {what}: {e}")),
                out,
            )
        };
        let Ok((status, stdout)) = tokio::time::timeout(DEADLINE, run).await else {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}; its stderr so far:\n{}",
                text(&stderr_so_far.lock().unwrap())
            );
        };
        let _ = stderr_task.await;
        let stderr = std::mem::take(&mut *stderr_so_far.lock().unwrap());
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Submits `vk exec --detach ARGS` and returns the job id.
    pub async fn vk_detach(&self, args: &[&str]) -> u64 {
        let mut all = vec!["exec", "--detach"];
        all.extend_from_slice(args);
        let out = self.vk(&all).await;
        assert!(
            out.status.success(),
            "vk exec --detach failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("vk exec --detach printed no job id: {:?}", text(&out.stdout)))
    }
}

/// How to start an agent.
pub struct AgentBuilder<'a> {
    harness: &'a Harness,
    server: &'a Server,
    endpoint: String,
    name: String,
    tags: Vec<String>,
    slots: u32,
    token: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl AgentBuilder<'_> {
    /// Sets a variable in the agent's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Runner name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Tags.
    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Slots.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// Connects to this endpoint of the server instead of its first.
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Registration token.
    pub fn token(mut self, token: &str) -> Self {
        self.token = token.into();
        self
    }

    /// Extra flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Starts the agent without waiting for it to register.
    pub fn spawn(self) -> Agent {
        let mut command = self.harness.command("valkyrie-agent");
        let work_dir = self.harness.path().join(format!("work-{}", self.name));
        command
            .arg("--server")
            .arg(&self.endpoint)
            .arg("--token")
            .arg(&self.token)
            .arg("--name")
            .arg(&self.name)
            .arg("--slots")
            .arg(self.slots.to_string())
            .arg("--work-dir")
            .arg(&work_dir);
        if !self.tags.is_empty() {
            command.arg("--tags").arg(self.tags.join(","));
        }
        if let Some(ca) = self.server.client_tls(&self.endpoint) {
            command.arg("--ca-cert").arg(ca);
        }
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(n, v)| (n, v)));
        let log = self.harness.path().join(format!("{}.log", self.name));
        let process = spawn_logged(command, &self.name, log, Stdio::null());
        Agent {
            process,
            name: self.name,
        }
    }

    /// Starts the agent and waits until the server lists it as connected.
    pub async fn start(self, client: &Client) -> Agent {
        let mut agent = self.spawn();
        agent.registered(client).await;
        agent
    }
}

/// A running `valkyrie-agent`.
pub struct Agent {
    /// The process.
    pub process: Guarded,
    /// Its runner name.
    pub name: String,
}

impl Agent {
    /// Waits until the server lists this runner as connected.
    pub async fn registered(&mut self, client: &Client) -> RunnerInfo {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.process.try_wait() {
                panic!(
                    "agent {} exited with {status}; its log:\n{}",
                    self.name,
                    self.process.log()
                );
            }
            if let Some(info) = runner(client, &self.name).await {
                if !matches!(info.state, RunnerState::Lost | RunnerState::Stopped) {
                    return info;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for runner {} to be listed as connected",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The runner named `name`, if the server lists it.
pub async fn runner(client: &Client, name: &str) -> Option<RunnerInfo> {
    client.runners().await.ok()?.into_iter().find(|r| r.name == name)
}

/// Waits until job `id` satisfies `done`, and returns it.
pub async fn wait_job(client: &Client, id: u64, what: &str, done: impl Fn(&JobInfo) -> bool) -> JobInfo {
    let what = format!("job {id} {what}");
    wait_until(&what, || async {
        let job = client.job(id).await.expect("job details");
        done(&job).then_some(job)
    })
    .await
}

/// Waits until job `id` reaches a final state, and returns it.
pub async fn wait_final(client: &Client, id: u64) -> JobInfo {
    wait_job(client, id, "to finish", |j| j.state.is_terminal()).await
}

/// Waits until job `id` is in `state`.
pub async fn wait_state(client: &Client, id: u64, state: JobState) -> JobInfo {
    wait_job(client, id, &format!("to be {}", state.as_str()), |j| {
        j.state == state
    })
    .await
}

/// Waits until the file at `path` exists.
pub async fn wait_file(path: &Path) {
    let what = format!("{} to appear", path.display());
    wait_until(&what, || std::future::ready(path.exists().then_some(()))).await
}

/// Shell-quotes a path for use inside a job's command line.
pub fn sh_path(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Connects to `server` as an agent speaking the raw protocol, registers
/// as `name` re-reporting the `running` attempts, and keeps the session
/// alive with heartbeats. Returns the session and what the server answered.
pub async fn raw_agent_registered(
    server: &Server,
    name: &str,
    tags: &[&str],
    running: &[RunningAttempt],
) -> (Session, RunnerRegistered) {
    let endpoint: Endpoint = server.endpoint().parse().expect("endpoint");
    let session = within(
        "a raw agent connection",
        connect(
            &endpoint,
            hello(Role::Agent, &server.runner_token, "raw-test-agent"),
            &valkyrie::ClientOptions::default(),
        ),
    )
    .await
    .expect("raw agent connects");
    let register = RegisterRunner {
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        os: "linux".into(),
        arch: "x86_64".into(),
        slots: 1,
        version: "test".into(),
        running: running.to_vec(),
    };
    let registered = match within("RunnerRegistered", session.sender().request(register)).await {
        Ok(Message::RunnerRegistered(r)) => r,
        other => panic!("RegisterRunner answered with {other:?}"),
    };
    assert!(registered.runner_id > 0);
    let sender = session.sender();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if sender.send(Heartbeat { running: 0 }).await.is_err() {
                return;
            }
        }
    });
    (session, registered)
}

/// [`raw_agent_registered`], keeping only the session.
pub async fn raw_agent(server: &Server, name: &str, tags: &[&str], running: &[RunningAttempt]) -> Session {
    raw_agent_registered(server, name, tags, running).await.0
}

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use valkyrie_test_support::{free_port, pip_script, MongoServer, ServiceProcess};

/// An HTTP client. The workspace's reqwest has rustls without a built-in
/// crypto provider (the server's S3 client uses ring, installed at start),
/// so a process making clients installs ring first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Submits `yaml` as a pipeline and waits, up to `deadline`, for its run
/// to end.
pub async fn run_pipeline(client: &Client, yaml: &str, deadline: Duration) -> valkyrie_sdk::RunInfo {
    let run_id = client
        .submit_pipeline("ci.yaml", yaml)
        .await
        .expect("submit pipeline");
    wait_until_within("the run to finish", deadline, || async {
        let run = client.run(run_id).await.expect("run");
        run.state.is_terminal().then_some(run)
    })
    .await
}

/// The id of the run's job `name`.
pub fn job_id(run: &valkyrie_sdk::RunInfo, name: &str) -> u64 {
    run.jobs
        .iter()
        .find(|j| j.name == name)
        .and_then(|j| j.job_id)
        .unwrap_or_else(|| panic!("no job `{name}` in {run:?}"))
}
