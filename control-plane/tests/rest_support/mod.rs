//! Shared builders for the REST tests: a core, the REST router on
//! 127.0.0.1:0, optionally a protocol listener with an in-process agent,
//! and a reqwest client with helpers for each role.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use tokio::sync::watch;
use valkyrie::transport::{Listener, ListenerOptions};
use valkyrie::Endpoint;
use valkyrie_control_plane::auth::{random_token, Tokens};
use valkyrie_control_plane::rest::auth::{JwtKeys, Role};
use valkyrie_control_plane::rest::error::ErrorBody;
use valkyrie_control_plane::rest::{self, RestConfig};
use valkyrie_control_plane::{server, spawn_core, CoreConfig, CoreHandle};
use valkyrie_runner_agent::job::JobDefaults;
use valkyrie_runner_agent::{Agent, AgentConfig};

/// A pipeline that validates and runs quickly.
pub const HELLO_YAML: &str = "name: hello\nstages: [build, test]\njobs:\n  compile:\n    stage: build\n    steps:\n      - run: echo compiling; echo compiled\n  unit:\n    stage: test\n    steps:\n      - run: echo unit-1; echo unit-2\n";

/// A pipeline with one error at a known position (5:13) and a hint.
pub const BROKEN_YAML: &str =
    "jobs:\n  build:\n    steps: [make]\n  test:\n    needs: [buld]\n    steps: [make test]\n";

/// How long a test waits for anything.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A legal pipeline of `jobs` jobs in two stages, each with a `run:` of
/// about 1 KB: several MB of YAML that takes the validator a while.
pub fn large_pipeline(jobs: usize) -> String {
    // Sized so that the most jobs a pipeline may have (2,000) stay under
    // the 1 MiB file limit.
    let filler = "x".repeat(400);
    let mut yaml = String::from("name: large\nstages: [build, test]\njobs:\n");
    for i in 0..jobs {
        let stage = if i % 2 == 0 { "build" } else { "test" };
        yaml.push_str(&format!(
            "  job-{i}:\n    stage: {stage}\n    steps:\n      - run: echo {filler}\n"
        ));
    }
    yaml
}

/// A `valkyrie-server` process with the REST API on 127.0.0.1 (protocol
/// on a Unix socket, store in a temporary directory, API token known).
pub struct ServerProcess {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub api_token: String,
    /// The server's stderr, line by line.
    pub stderr: std::sync::mpsc::Receiver<String>,
    pub dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts the server with `args` added, and `env`; waits until it serves HTTP.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), args, env)
    }

    /// [`start`](Self::start) with the data directory `dir/data`, which
    /// the test may have prepared.
    #[allow(dead_code)]
    pub fn start_in(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let api_token = random_token();
        let mut command = Command::new(env!("CARGO_BIN_EXE_valkyrie-server"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VALKYRIE_") {
                command.env_remove(key);
            }
        }
        let socket = format!("unix://{}", dir.path().join("valkyrie.sock").display());
        command
            .args([
                "--http",
                "127.0.0.1:0",
                "--durability",
                "none",
                "--listen",
                &socket,
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--api-token", &api_token])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut base = None;
        let mut line = String::new();
        while base.is_none() {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let lines: Vec<String> = stderr.try_iter().collect();
                panic!("the server exited before serving HTTP: {}", lines.join("\n"));
            }
            base = line.trim().strip_prefix("serving HTTP on ").map(str::to_owned);
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            child,
            base: base.unwrap(),
            api_token,
            stderr,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits (up to `deadline`) for a stderr line containing `needle`.
    pub fn wait_for_stderr(&self, needle: &str, deadline: Duration) -> String {
        let end = std::time::Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stderr line with `{needle}` within {deadline:?}"),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TestServer {
    pub base: String,
    pub api_token: String,
    pub jwt: JwtKeys,
    pub http: reqwest::Client,
    pub core: CoreHandle,
    tokens: Arc<Tokens>,
    runner_token: String,
    stop_agents: Option<watch::Sender<bool>>,
    _dir: Option<tempfile::TempDir>,
}

/// A core and the REST API over it; `configure` adjusts the REST config
/// (rate limiting is off unless it sets it).
pub async fn start(configure: impl FnOnce(RestConfig) -> RestConfig) -> TestServer {
    start_inner(configure, false).await
}

/// Also a protocol listener and one agent with two slots, registered.
pub async fn start_with_agent() -> TestServer {
    start_inner(|c| c, true).await
}

async fn start_inner(configure: impl FnOnce(RestConfig) -> RestConfig, agent: bool) -> TestServer {
    let (api_token, runner_token) = (random_token(), random_token());
    let tokens = Arc::new(Tokens::new(api_token.clone(), runner_token.clone()));
    let core = spawn_core(CoreConfig::default(), tokens.clone(), Default::default());
    let secret = random_token();
    let config = configure(RestConfig::new(JwtKeys::new(secret.as_bytes())).rate_limit(0.0, 0.0));
    let router = rest::router(core.clone(), tokens.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(rest::serve(listener, router));
    let mut server = TestServer {
        base,
        api_token,
        jwt: JwtKeys::new(secret.as_bytes()),
        http: http_client(),
        core,
        tokens,
        runner_token,
        stop_agents: None,
        _dir: None,
    };
    if agent {
        server.add_agent().await;
    }
    server
}

impl TestServer {
    /// A protocol listener and one agent with two slots; returns once it
    /// is registered. (Once per server.)
    pub async fn add_agent(&mut self) {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("valkyrie.sock"));
        let listener = Listener::bind(
            &endpoint,
            server::listener_options(self.tokens.clone(), ListenerOptions::default()),
        )
        .await
        .unwrap();
        tokio::spawn(server::serve(listener, self.core.clone()));
        let (stop, mut stop_rx) = watch::channel(false);
        let work_dir = dir.path().join("agent");
        std::fs::create_dir_all(&work_dir).unwrap();
        let config = AgentConfig {
            server: endpoint,
            more_servers: Vec::new(),
            token: self.runner_token.clone(),
            name: "agent-1".into(),
            tags: vec!["linux".into()],
            slots: 2,
            work_dir,
            defaults: JobDefaults {
                shell: vec!["sh".into(), "-c".into()],
                kill_grace: Duration::from_secs(2),
                output_limit_bytes: 1 << 20,
                ..JobDefaults::default()
            },
            heartbeat_interval: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(5),
            client: Default::default(),
            supervisor: None,
        };
        tokio::spawn(async move {
            let _ = Agent::new(config)
                .run(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
        });
        self.stop_agents = Some(stop);
        self._dir = Some(dir);
        let admin = self.token(Role::Admin);
        eventually("the agent registers", || async {
            let runners: Vec<serde_json::Value> =
                self.get("/api/runners", &admin).await.json().await.unwrap();
            (!runners.is_empty()).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A JWT for `role`, valid for an hour.
    pub fn token(&self, role: Role) -> String {
        self.jwt.mint(role.as_str(), role, Duration::from_secs(3600))
    }

    pub async fn request(&self, method: Method, path: &str, token: &str) -> Response {
        self.http
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, token).await
    }

    pub async fn post(&self, path: &str, token: &str) -> Response {
        self.request(Method::POST, path, token).await
    }

    pub async fn post_yaml(&self, path: &str, token: &str, yaml: &str) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Creates `HELLO_YAML` as admin; returns its id.
    pub async fn create_hello(&self) -> u64 {
        let response = self
            .post_yaml("/api/ci/pipelines", &self.api_token, HELLO_YAML)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: serde_json::Value = response.json().await.unwrap();
        body["id"].as_u64().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop_agents {
            let _ = stop.send(true);
        }
    }
}

/// Checks a response is an error with `status` and category `error`, in the API's format.
pub async fn expect_error(response: Response, status: StatusCode, error: &str) -> ErrorBody {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let raw: serde_json::Value = response.json().await.unwrap();
    for key in ["error", "message", "details", "suggestions", "timestamp"] {
        assert!(raw.get(key).is_some(), "error body lacks `{key}`: {raw}");
    }
    let body: ErrorBody = serde_json::from_value(raw).unwrap();
    assert_eq!(body.error, error, "{body:?}");
    assert!(!body.message.is_empty());
    assert!(
        body.timestamp.len() >= 20 && body.timestamp.ends_with('Z'),
        "ISO 8601 UTC timestamp: {}",
        body.timestamp
    );
    body
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client. The workspace's reqwest has rustls without a built-in
/// crypto provider (the server's S3 client uses ring, installed at start),
/// so a process making clients installs ring first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
