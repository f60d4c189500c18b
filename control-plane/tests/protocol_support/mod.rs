//! Shared builders for the protocol-level tests of the control plane: a
//! core (state in memory) behind a real Unix-socket listener, and raw
//! protocol peers (clients and agents) that speak the wire format the way a
//! peer written from `spec/protocol.md` would.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use valkyrie::message::{
    Assign, AssignAck, GetJob, Heartbeat, JobInfo, JobSpec, Message, RegisterRunner, Role, RunnerRegistered,
    StepSpec, SubmitJob,
};
use valkyrie::transport::{connect, hello, ConnectError, Listener, ListenerOptions};
use valkyrie::{Endpoint, Session};
use valkyrie_control_plane::auth::{random_token, Tokens};
use valkyrie_control_plane::{server, spawn_core, CoreConfig, CoreHandle};

/// How long any awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A core and a protocol listener on a Unix socket in a temporary directory.
pub struct TestServer {
    pub core: CoreHandle,
    pub endpoint: Endpoint,
    pub api_token: String,
    pub runner_token: String,
    _dir: tempfile::TempDir,
}

/// Starts a core with `config` and a listener with `options` (its
/// authenticator is replaced by the server's).
pub async fn start_with(config: CoreConfig, options: ListenerOptions) -> TestServer {
    let (api_token, runner_token) = (random_token(), random_token());
    let tokens = Arc::new(Tokens::new(api_token.clone(), runner_token.clone()));
    let core = spawn_core(config, tokens.clone(), Default::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = Endpoint::Unix(dir.path().join("valkyrie.sock"));
    let listener = Listener::bind(&endpoint, server::listener_options(tokens, options))
        .await
        .expect("bind");
    tokio::spawn(server::serve(listener, core.clone()));
    TestServer {
        core,
        endpoint,
        api_token,
        runner_token,
        _dir: dir,
    }
}

/// [`start_with`] default listener options.
pub async fn start(config: CoreConfig) -> TestServer {
    start_with(config, ListenerOptions::default()).await
}

impl TestServer {
    /// Connects with `role` and `token`.
    pub async fn connect(&self, role: Role, token: &str) -> Result<Session, ConnectError> {
        within(
            "a connection",
            connect(
                &self.endpoint,
                hello(role, token, "protocol-test"),
                &Default::default(),
            ),
        )
        .await
    }

    /// Connects with `role` and `token`, announcing `max_frame_bytes`.
    pub async fn connect_limited(&self, role: Role, token: &str, max_frame_bytes: u32) -> Session {
        let options = valkyrie::ClientOptions {
            config: valkyrie::ConnectionConfig::default().max_frame_bytes(max_frame_bytes),
            tls: None,
        };
        within(
            "a connection",
            connect(&self.endpoint, hello(role, token, "protocol-test"), &options),
        )
        .await
        .expect("connects")
    }

    /// A client session.
    pub async fn client(&self) -> Session {
        self.connect(Role::Client, &self.api_token)
            .await
            .expect("client connects")
    }

    /// An agent session, not yet registered.
    pub async fn agent_session(&self) -> Session {
        self.connect(Role::Agent, &self.runner_token)
            .await
            .expect("agent connects")
    }

    /// An agent registered as `name` with `tags` and `slots`, sending a
    /// Heartbeat every 200 ms (as a live agent does) until its session ends.
    pub async fn agent(&self, name: &str, tags: &[&str], slots: u32) -> (Session, RunnerRegistered) {
        let session = self.agent_session().await;
        let registered = match within(
            "RunnerRegistered",
            session.sender().request(register(name, tags, slots)),
        )
        .await
        {
            Ok(Message::RunnerRegistered(r)) => r,
            other => panic!("RegisterRunner answered with {other:?}"),
        };
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
}

/// A RegisterRunner for a runner with nothing running.
pub fn register(name: &str, tags: &[&str], slots: u32) -> RegisterRunner {
    RegisterRunner {
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        os: "linux".into(),
        arch: "x86_64".into(),
        slots,
        version: "test".into(),
        running: Vec::new(),
    }
}

/// A one-step no-op job that needs `tag`, with the given retry budget.
pub fn job(name: &str, tag: &str, max_retries: u32) -> JobSpec {
    let mut spec = JobSpec::with_steps(name, vec![StepSpec::noop()]);
    spec.tags = vec![tag.into()];
    spec.retry.max_retries = max_retries;
    spec.retry.on = valkyrie::message::RetryOn(0);
    spec
}

/// Submits `spec` on `client`; returns the job id.
pub async fn submit(client: &Session, spec: JobSpec) -> u64 {
    match within("JobAccepted", client.sender().request(SubmitJob { spec })).await {
        Ok(Message::JobAccepted(a)) => a.job_id,
        other => panic!("SubmitJob answered with {other:?}"),
    }
}

/// The job as the server has it.
pub async fn job_info(client: &Session, job_id: u64) -> JobInfo {
    match within("JobDetails", client.sender().request(GetJob { job_id })).await {
        Ok(Message::JobDetails(details)) => details.job,
        other => panic!("GetJob answered with {other:?}"),
    }
}

/// Polls the job until `done` holds for it.
pub async fn wait_job(client: &Session, job_id: u64, what: &str, done: impl Fn(&JobInfo) -> bool) -> JobInfo {
    within(what, async {
        loop {
            let job = job_info(client, job_id).await;
            if done(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The next message on `session` that `pick` accepts; others are skipped.
pub async fn next<T>(session: &mut Session, what: &str, mut pick: impl FnMut(Message) -> Option<T>) -> T {
    within(what, async {
        loop {
            let incoming = session
                .recv()
                .await
                .unwrap_or_else(|| panic!("session ended waiting for {what}"));
            if let Some(t) = pick(incoming.message) {
                return t;
            }
        }
    })
    .await
}

/// Accepts `assign` as an agent does (an uncorrelated AssignAck).
pub async fn accept(agent: &Session, assign: &Assign) {
    let ack = AssignAck {
        job_id: assign.job_id,
        attempt: assign.attempt,
        accepted: true,
        reason: String::new(),
    };
    agent.sender().send(ack).await.expect("AssignAck sent");
}

/// The next Assign on an agent's session.
pub async fn next_assign(session: &mut Session) -> Assign {
    next(session, "an Assign", |m| match m {
        Message::Assign(a) => Some(*a),
        _ => None,
    })
    .await
}
