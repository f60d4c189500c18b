//! Real git repositories for the source tests: a working copy where
//! commits are made, and a bare repository served on loopback by
//! `git daemon` (public) or by `git http-backend` behind an HTTP server
//! that demands a token (private).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{free_port, spawn_logged, text, wait_until, Guarded, Harness};

/// Runs `git args` in `dir` (with a fixed author); returns its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// How a repository is served.
enum Serving {
    Daemon(Guarded),
    Http {
        task: tokio::task::JoinHandle<()>,
        counts: Arc<HttpCounts>,
    },
}

/// What the private repository's HTTP server saw.
#[derive(Default)]
pub struct HttpCounts {
    /// Requests with the right token.
    pub served: AtomicUsize,
    /// Requests without it (answered 401).
    pub refused: AtomicUsize,
}

/// A repository with a working copy (where commits are made) and the bare
/// repository a server serves.
pub struct Repo {
    pub work: PathBuf,
    pub bare: PathBuf,
    pub url: String,
    serving: Serving,
}

impl Drop for Repo {
    fn drop(&mut self) {
        if let Serving::Http { task, .. } = &self.serving {
            task.abort();
        }
    }
}

/// The working copy and the bare repository, with the pipeline file on
/// `main`; returns (root, work, served base, bare).
fn create(h: &Harness, pipeline: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let root = h.path().join("git");
    let work = root.join("work");
    let base = root.join("served");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&base).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join(".valkyrie.yml"), pipeline).unwrap();
    git(&work, &["add", ".valkyrie.yml"]);
    git(&work, &["commit", "-q", "-m", "pipeline"]);
    let bare = base.join("app.git");
    git(
        &root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    (root, work, base, bare)
}

impl Repo {
    /// A repository with the pipeline file on `main`, served by `git daemon`.
    pub async fn serve(h: &Harness, pipeline: &str) -> Self {
        let (root, work, base, bare) = create(h, pipeline);
        let port = free_port();
        // git-daemon itself, not `git daemon`: the guard kills the process
        // it started, and `git` would leave its git-daemon child running.
        let exec_path = git(&root, &["--exec-path"]);
        let mut daemon = Command::new(Path::new(&exec_path).join("git-daemon"));
        daemon.args([
            "--export-all",
            "--reuseaddr",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
            base.to_str().unwrap(),
        ]);
        let daemon = spawn_logged(daemon, "git daemon", root.join("daemon.log"), Stdio::null());
        let url = format!("git://127.0.0.1:{port}/app.git");
        wait_until("git daemon to serve the repository", || async {
            Command::new("git")
                .args(["ls-remote", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()
                .filter(|s| s.success())
        })
        .await;
        Self {
            work,
            bare,
            url,
            serving: Serving::Daemon(daemon),
        }
    }

    /// A private repository with the pipeline file on `main`, served over
    /// HTTP by `git http-backend` only to requests carrying `token` as
    /// GitHub and GitLab take it (basic authentication, any user name);
    /// any other request gets 401.
    pub async fn serve_private(h: &Harness, pipeline: &str, token: &str) -> Self {
        let (_, work, base, bare) = create(h, pipeline);
        let counts = Arc::new(HttpCounts::default());
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
        let state = Arc::new(HttpGit {
            root: base,
            authorization: format!("Basic {basic}"),
            counts: counts.clone(),
        });
        let router = axum::Router::new().fallback(http_backend).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/app.git", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            work,
            bare,
            url,
            serving: Serving::Http { task, counts },
        }
    }

    /// What the private repository's server saw.
    pub fn http_counts(&self) -> &HttpCounts {
        match &self.serving {
            Serving::Http { counts, .. } => counts,
            Serving::Daemon(_) => panic!("served by git daemon"),
        }
    }

    /// Commits a change to `branch` and pushes it; returns the commit.
    pub fn push(&self, branch: &str, file: &str) -> String {
        let current = git(&self.work, &["rev-parse", "--abbrev-ref", "HEAD"]);
        if current != branch {
            git(&self.work, &["checkout", "-q", "-B", branch]);
        }
        std::fs::write(self.work.join(file), format!("{file} {}\n", unique())).unwrap();
        git(&self.work, &["add", file]);
        git(&self.work, &["commit", "-q", "-m", file]);
        git(
            &self.work,
            &[
                "push",
                "-q",
                "-f",
                self.bare.to_str().unwrap(),
                &format!("{branch}:{branch}"),
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct HttpGit {
    root: PathBuf,
    authorization: String,
    counts: Arc<HttpCounts>,
}

/// git's smart HTTP protocol: the request handed to `git http-backend` as
/// a CGI program, its answer parsed back into a response.
async fn http_backend(
    State(git): State<Arc<HttpGit>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if given != Some(git.authorization.as_str()) {
        git.counts.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
        )
            .into_response();
    }
    git.counts.served.fetch_add(1, Ordering::Relaxed);
    let header_env = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &git.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header_env(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header_env(header::CONTENT_ENCODING))
        .env(
            "GIT_PROTOCOL",
            header_env(header::HeaderName::from_static("git-protocol")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("git http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let write = async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    };
    let (_, output) = tokio::join!(write, child.wait_with_output());
    let output = output.expect("git http-backend ran");
    let split = output
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            output
                .stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((at, gap)) = split else {
        return (StatusCode::INTERNAL_SERVER_ERROR, text(&output.stderr)).into_response();
    };
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    for line in text(&output.stdout[..at]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            response = response.header(name, value);
        }
    }
    response
        .status(status)
        .body(axum::body::Body::from(output.stdout[at + gap..].to_vec()))
        .unwrap()
}
