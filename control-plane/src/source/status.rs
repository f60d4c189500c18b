//! What a project's runs report outside Valkyrie, and to whom: a commit
//! status on the forge when a run starts and when it ends (GitHub's
//! statuses API, GitLab's commit status API), and a generic webhook, signed
//! with HMAC-SHA256, when it ends.
//!
//! This module is pure: the configuration, its checks, and the HTTP
//! requests a run's state becomes. [`super::notifier`] sends them.
//!
//! | run state   | GitHub `state` | GitLab `state` |
//! |-------------|----------------|----------------|
//! | running     | `pending`      | `running`      |
//! | succeeded   | `success`      | `success`      |
//! | failed      | `failure`      | `failed`       |
//! | timed_out   | `failure`      | `failed`       |
//! | cancelled   | `error`        | `canceled`     |

use ring::hmac;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use valkyrie::message::{RunInfo, RunState};

use super::{Project, Trigger};

/// GitHub's API (github.com); GitHub Enterprise is `https://HOST/api/v3`.
pub const GITHUB_API: &str = "https://api.github.com";

/// GitLab's API (gitlab.com); a self-hosted GitLab is `https://HOST/api/v4`.
pub const GITLAB_API: &str = "https://gitlab.com/api/v4";

/// Longest API or webhook URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Longest repository path accepted (GitLab's full paths are the longest).
pub const MAX_REPOSITORY_BYTES: usize = 255;

/// Longest status description sent: GitHub refuses longer ones.
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// The header carrying the generic webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-valkyrie-signature-256";

/// The header naming the generic webhook's event.
pub const EVENT_HEADER: &str = "x-valkyrie-event";

/// The header carrying the generic webhook's delivery id (the same on
/// every retry of one delivery).
pub const DELIVERY_HEADER: &str = "x-valkyrie-delivery";

/// The generic webhook's only event.
pub const RUN_FINISHED: &str = "run.finished";

/// The forge whose commit status API a project posts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusForge {
    /// github.com or GitHub Enterprise: `POST /repos/{owner}/{repo}/statuses/{sha}`.
    Github,
    /// gitlab.com or a self-hosted GitLab: `POST /projects/{id}/statuses/{sha}`.
    Gitlab,
}

impl StatusForge {
    /// Its name in messages, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
        }
    }

    /// Its public API's base URL.
    pub fn default_api_url(self) -> &'static str {
        match self {
            Self::Github => GITHUB_API,
            Self::Gitlab => GITLAB_API,
        }
    }

    /// The state a run's state is posted as.
    pub fn state(self, run: RunState) -> &'static str {
        match (self, run) {
            (Self::Github, RunState::Running) => "pending",
            (Self::Github, RunState::Succeeded) => "success",
            (Self::Github, RunState::Failed | RunState::TimedOut) => "failure",
            (Self::Github, _) => "error",
            (Self::Gitlab, RunState::Running) => "running",
            (Self::Gitlab, RunState::Succeeded) => "success",
            (Self::Gitlab, RunState::Failed | RunState::TimedOut) => "failed",
            (Self::Gitlab, _) => "canceled",
        }
    }
}

/// Where a project's runs post their commit statuses.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusConfig {
    /// The forge.
    pub forge: StatusForge,
    /// Its API's base URL, without a trailing `/`.
    pub api_url: String,
    /// The repository on the forge: `owner/repo` on GitHub; the project's
    /// full path (`group/sub/app`) or numeric id on GitLab.
    pub repository: String,
    /// The API token; empty: the project's `token`. Never shown; sealed in
    /// the store.
    #[serde(default)]
    pub token: String,
}

// Hand-written so that the token never reaches a log line.
impl std::fmt::Debug for StatusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusConfig")
            .field("forge", &self.forge)
            .field("api_url", &self.api_url)
            .field("repository", &self.repository)
            .field("token", &!self.token.is_empty())
            .finish()
    }
}

/// Where a project's runs send the generic webhook when they end.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyConfig {
    /// The URL POSTed to (`http://` or `https://`).
    pub url: String,
    /// The HMAC-SHA256 key of the `X-Valkyrie-Signature-256` header; empty:
    /// unsigned. Never shown; sealed in the store.
    #[serde(default)]
    pub secret: String,
}

// Hand-written so that the secret never reaches a log line.
impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("url", &self.url)
            .field("secret", &!self.secret.is_empty())
            .finish()
    }
}

/// Checks an API or webhook URL: `http://` or `https://`, a host, no
/// credentials, no whitespace; returns it without a trailing `/`.
pub fn check_url(what: &str, url: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{what} `{url}` is not valid: {why}"));
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "{what} is {} bytes, over the limit of {MAX_URL_BYTES}",
            url.len()
        ));
    }
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return bad("give an http:// or https:// URL");
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it holds whitespace");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return bad("it names no host");
    }
    if authority.contains('@') {
        return bad("it holds credentials; give the token with `token` (or the secret with `notify_secret`)");
    }
    if url.contains('#') {
        return bad("it holds a fragment");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn path_segment_ok(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a repository path for `forge`: `owner/repo` on GitHub; a full
/// path (`group/app`, `group/sub/app`) or a numeric id on GitLab.
pub fn check_repository(forge: StatusForge, repository: &str) -> Result<(), String> {
    let segments: Vec<&str> = repository.split('/').collect();
    let valid = repository.len() <= MAX_REPOSITORY_BYTES
        && segments.iter().all(|s| path_segment_ok(s))
        && match forge {
            StatusForge::Github => segments.len() == 2,
            StatusForge::Gitlab => segments.len() >= 2 || repository.bytes().all(|b| b.is_ascii_digit()),
        };
    if valid {
        return Ok(());
    }
    Err(match forge {
        StatusForge::Github => {
            format!("status repository `{repository}` is not valid: give GitHub's `owner/repo`")
        }
        StatusForge::Gitlab => format!(
            "status repository `{repository}` is not valid: give GitLab's project path (`group/app`) or numeric id"
        ),
    })
}

/// The repository path on the forge, read from a clone URL
/// (`https://github.com/o/app.git`, `git@gitlab.com:g/sub/app.git`,
/// `ssh://git@host/o/app`): the path without `.git`; `None` if the URL
/// has none that fits `forge`.
pub fn repository_from_url(forge: StatusForge, repo: &str) -> Option<String> {
    let path = match repo.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        // scp-like: user@host:path
        None => repo.split_once(':')?.1,
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    check_repository(forge, path).ok()?;
    Some(path.to_owned())
}

/// A run's new state, for the notifier: filled by the core when a run of a
/// project that reports its runs starts or ends, after the change is
/// durable.
#[derive(Debug, Clone)]
pub struct RunNotice {
    /// The project, as it was then (with its tokens: never logged).
    pub project: Box<Project>,
    /// What started the run.
    pub trigger: Box<Trigger>,
    /// The run, with its jobs.
    pub run: RunInfo,
}

/// What a notice goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A forge's commit status.
    Status(StatusForge),
    /// The generic webhook.
    Webhook,
}

impl Target {
    /// Its name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status(forge) => forge.as_str(),
            Self::Webhook => "webhook",
        }
    }
}

/// One HTTP POST to make (and retry).
#[derive(Clone)]
pub struct Outbound {
    /// What it goes to.
    pub target: Target,
    /// The URL.
    pub url: String,
    /// Headers besides `content-type: application/json`; some hold tokens.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

// Hand-written: the headers hold tokens and signatures.
impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Outbound")
            .field("target", &self.target)
            .field("url", &self.url)
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a
/// GitLab project path in a URL path: `group/app` → `group%2Fapp`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Where a run is shown: `{base}/api/ci/executions/{id}`, if the server
/// knows its own address.
fn target_url(base: Option<&str>, run_id: u64) -> Option<String> {
    base.map(|b| format!("{}/api/ci/executions/{run_id}", b.trim_end_matches('/')))
}

fn description(run: &RunInfo) -> String {
    let text = match run.state {
        RunState::Running => format!("run {} is running", run.run_id),
        state if run.message.is_empty() => format!("run {} {}", run.run_id, state.as_str()),
        state => format!("run {} {}: {}", run.run_id, state.as_str(), run.message),
    };
    truncate_chars(&text, MAX_DESCRIPTION_CHARS)
}

/// The commit status request for `notice`, if its project posts them and
/// the run has a commit. `base` is the server's own URL, for `target_url`.
pub fn status_request(notice: &RunNotice, base: Option<&str>) -> Option<Outbound> {
    let status = notice.project.status.as_ref()?;
    let sha = &notice.trigger.sha;
    if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let token = if status.token.is_empty() {
        &notice.project.token
    } else {
        &status.token
    };
    let run = &notice.run;
    let context = format!("valkyrie/{}", run.name);
    let state = status.forge.state(run.state);
    let target = target_url(base, run.run_id);
    let (url, headers, body) = match status.forge {
        StatusForge::Github => {
            let mut body = serde_json::json!({
                "state": state,
                "description": description(run),
                "context": context,
            });
            if let Some(target) = target {
                body["target_url"] = target.into();
            }
            (
                format!("{}/repos/{}/statuses/{sha}", status.api_url, status.repository),
                vec![
                    ("authorization", format!("Bearer {token}")),
                    ("accept", "application/vnd.github+json".to_owned()),
                    ("x-github-api-version", "2022-11-28".to_owned()),
                ],
                body,
            )
        }
        StatusForge::Gitlab => {
            let trigger = &notice.trigger;
            let git_ref = [&trigger.branch, &trigger.tag]
                .into_iter()
                .find(|r| !r.is_empty())
                .unwrap_or(&trigger.git_ref);
            let mut body = serde_json::json!({
                "state": state,
                "name": context,
                "description": description(run),
            });
            if !git_ref.is_empty() {
                body["ref"] = git_ref.clone().into();
            }
            if let Some(target) = target {
                body["target_url"] = target.into();
            }
            (
                format!(
                    "{}/projects/{}/statuses/{sha}",
                    status.api_url,
                    percent_encode(&status.repository)
                ),
                vec![("private-token", token.clone())],
                body,
            )
        }
    };
    Some(Outbound {
        target: Target::Status(status.forge),
        url,
        headers,
        body: body.to_string().into_bytes(),
    })
}

/// The `X-Valkyrie-Signature-256` value of `body` under `secret`:
/// `sha256=` and the hex of its HMAC-SHA256, as GitHub signs its webhooks.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// The generic webhook for `notice`, if its project sends one and the run
/// has ended; `delivery` is its id (the same on every retry).
pub fn webhook_request(notice: &RunNotice, delivery: &str, base: Option<&str>) -> Option<Outbound> {
    let notify = notice.project.notify.as_ref()?;
    let run = &notice.run;
    if !run.state.is_terminal() {
        return None;
    }
    let trigger = &notice.trigger;
    let jobs: Vec<serde_json::Value> = run
        .jobs
        .iter()
        .map(|j| {
            serde_json::json!({
                "name": j.name,
                "stage": j.stage,
                "state": j.state.as_str(),
                "job_id": j.job_id,
                "exit_code": j.exit_code,
            })
        })
        .collect();
    let body = serde_json::json!({
        "event": RUN_FINISHED,
        "delivery": delivery,
        "run_id": run.run_id,
        "project": notice.project.name,
        "pipeline": run.name,
        "repository": trigger.repository,
        "sha": trigger.sha,
        "ref": trigger.git_ref,
        "branch": trigger.branch,
        "tag": trigger.tag,
        "trigger": trigger.event,
        "pr_number": trigger.pr_number,
        "state": run.state.as_str(),
        "message": run.message,
        "started_at_ms": run.created_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "url": target_url(base, run.run_id),
        "jobs": jobs,
    })
    .to_string()
    .into_bytes();
    let mut headers = vec![
        (EVENT_HEADER, RUN_FINISHED.to_owned()),
        (DELIVERY_HEADER, delivery.to_owned()),
    ];
    if !notify.secret.is_empty() {
        headers.push((SIGNATURE_HEADER, signature(&notify.secret, &body)));
    }
    Some(Outbound {
        target: Target::Webhook,
        url: notify.url.clone(),
        headers,
        body,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use valkyrie::message::{RunJobInfo, RunJobState};

    /// A notice of run 12 of project `app`, reporting to `forge` at
    /// `https://forge.example/api/v4` and to `https://hooks.example/ci`.
    pub(crate) fn notice(forge: StatusForge, state: RunState) -> RunNotice {
        let project = Project {
            name: "app".into(),
            repo: "https://gitlab.example/group/sub/app.git".into(),
            branch: "main".into(),
            file: ".valkyrie.yml".into(),
            webhook_secret: "hook".into(),
            token: "project-token".into(),
            created_at_ms: 0,
            schedules: Vec::new(),
            status: Some(StatusConfig {
                forge,
                api_url: "https://forge.example/api/v4".into(),
                repository: match forge {
                    StatusForge::Github => "o/app".into(),
                    StatusForge::Gitlab => "group/sub/app".into(),
                },
                token: String::new(),
            }),
            notify: Some(NotifyConfig {
                url: "https://hooks.example/ci".into(),
                secret: "notify-secret".into(),
            }),
        };
        let trigger = Trigger {
            project: "app".into(),
            repository: project.repo.clone(),
            event: "push".into(),
            git_ref: "refs/heads/main".into(),
            sha: "ab".repeat(20),
            branch: "main".into(),
            ..Trigger::default()
        };
        RunNotice {
            project: Box::new(project),
            trigger: Box::new(trigger),
            run: RunInfo {
                run_id: 12,
                name: "ci".into(),
                state,
                message: if state == RunState::Failed {
                    "job `test` failed".into()
                } else {
                    String::new()
                },
                created_at_ms: 1_000,
                finished_at_ms: state.is_terminal().then_some(2_000),
                jobs: vec![RunJobInfo {
                    name: "test".into(),
                    stage: "test".into(),
                    state: RunJobState::Failed,
                    job_id: Some(7),
                    runner: None,
                    exit_code: Some(1),
                    started_at_ms: None,
                    finished_at_ms: None,
                    allow_failure: false,
                    reason: String::new(),
                }],
            },
        }
    }

    fn json(request: &Outbound) -> serde_json::Value {
        serde_json::from_slice(&request.body).unwrap()
    }

    fn header<'a>(request: &'a Outbound, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_gitlab_status_names_the_encoded_project_the_ref_and_the_token() {
        let request = status_request(
            &notice(StatusForge::Gitlab, RunState::Running),
            Some("http://ci:8080/"),
        )
        .unwrap();
        assert_eq!(
            request.url,
            format!(
                "https://forge.example/api/v4/projects/group%2Fsub%2Fapp/statuses/{}",
                "ab".repeat(20)
            )
        );
        assert_eq!(header(&request, "private-token"), Some("project-token"));
        assert_eq!(header(&request, "authorization"), None);
        let body = json(&request);
        assert_eq!(body["state"], "running");
        assert_eq!(body["name"], "valkyrie/ci");
        assert_eq!(body["ref"], "main");
        assert_eq!(body["target_url"], "http://ci:8080/api/ci/executions/12");

        for (state, posted) in [
            (RunState::Succeeded, "success"),
            (RunState::Failed, "failed"),
            (RunState::TimedOut, "failed"),
            (RunState::Cancelled, "canceled"),
        ] {
            let request = status_request(&notice(StatusForge::Gitlab, state), None).unwrap();
            assert_eq!(json(&request)["state"], posted, "{state:?}");
            assert!(json(&request).get("target_url").is_none());
        }
        // Its own token wins over the project's; the Debug form hides both.
        let mut n = notice(StatusForge::Gitlab, RunState::Running);
        n.project.status.as_mut().unwrap().token = "status-token".into();
        let request = status_request(&n, None).unwrap();
        assert_eq!(header(&request, "private-token"), Some("status-token"));
        let shown = format!("{request:?} {:?}", n.project);
        assert!(
            !shown.contains("status-token")
                && !shown.contains("project-token")
                && !shown.contains("notify-secret"),
            "{shown}"
        );
    }

    #[test]
    fn a_github_status_has_its_context_state_and_bearer_token() {
        let request = status_request(&notice(StatusForge::Github, RunState::Failed), None).unwrap();
        assert_eq!(
            request.url,
            format!(
                "https://forge.example/api/v4/repos/o/app/statuses/{}",
                "ab".repeat(20)
            )
        );
        assert_eq!(header(&request, "authorization"), Some("Bearer project-token"));
        assert_eq!(header(&request, "accept"), Some("application/vnd.github+json"));
        let body = json(&request);
        assert_eq!(body["state"], "failure");
        assert_eq!(body["context"], "valkyrie/ci");
        assert_eq!(body["description"], "run 12 failed: job `test` failed");
        assert_eq!(
            json(&status_request(&notice(StatusForge::Github, RunState::Running), None).unwrap())["state"],
            "pending"
        );
        assert_eq!(
            json(&status_request(&notice(StatusForge::Github, RunState::Cancelled), None).unwrap())["state"],
            "error"
        );
        // No commit, no status.
        let mut n = notice(StatusForge::Github, RunState::Running);
        n.trigger.sha.clear();
        assert!(status_request(&n, None).is_none());
    }

    #[test]
    fn the_webhook_is_sent_at_the_end_only_and_its_signature_verifies() {
        assert!(webhook_request(&notice(StatusForge::Github, RunState::Running), "d", None).is_none());
        let request = webhook_request(&notice(StatusForge::Github, RunState::Failed), "d-1", None).unwrap();
        assert_eq!(request.url, "https://hooks.example/ci");
        assert_eq!(header(&request, EVENT_HEADER), Some(RUN_FINISHED));
        assert_eq!(header(&request, DELIVERY_HEADER), Some("d-1"));
        let signature = header(&request, SIGNATURE_HEADER).unwrap();
        let hex_sig = signature.strip_prefix("sha256=").unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"notify-secret");
        hmac::verify(&key, &request.body, &hex::decode(hex_sig).unwrap()).unwrap();
        let body = json(&request);
        assert_eq!(body["run_id"], 12);
        assert_eq!(body["state"], "failed");
        assert_eq!(body["sha"], "ab".repeat(20));
        assert_eq!(body["jobs"][0]["name"], "test");
        assert_eq!(body["jobs"][0]["state"], "failed");
        assert_eq!(body["finished_at_ms"], 2_000);
    }

    #[test]
    fn urls_and_repositories_are_checked_and_derived() {
        assert_eq!(
            check_url("api_url", "https://ghe.example/api/v3/").unwrap(),
            "https://ghe.example/api/v3"
        );
        for bad in ["ftp://x", "https://", "https://u:p@x/", "https://x/a b", "x"] {
            assert!(check_url("api_url", bad).is_err(), "{bad}");
        }
        assert!(check_repository(StatusForge::Github, "o/app").is_ok());
        assert!(check_repository(StatusForge::Github, "o/sub/app").is_err());
        assert!(check_repository(StatusForge::Github, "../x").is_err());
        assert!(check_repository(StatusForge::Gitlab, "g/sub/app").is_ok());
        assert!(check_repository(StatusForge::Gitlab, "1234").is_ok());
        assert!(check_repository(StatusForge::Gitlab, "app").is_err());
        assert_eq!(
            repository_from_url(StatusForge::Github, "https://github.com/o/app.git").as_deref(),
            Some("o/app")
        );
        assert_eq!(
            repository_from_url(StatusForge::Gitlab, "git@gitlab.com:g/sub/app.git").as_deref(),
            Some("g/sub/app")
        );
        assert_eq!(
            repository_from_url(StatusForge::Github, "ssh://git@github.com/o/app").as_deref(),
            Some("o/app")
        );
        assert_eq!(
            repository_from_url(StatusForge::Github, "git://127.0.0.1:9/app.git"),
            None
        );
        assert_eq!(percent_encode("g/a b"), "g%2Fa%20b");
        let long = "é".repeat(200);
        let cut = truncate_chars(&long, MAX_DESCRIPTION_CHARS);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION_CHARS);
    }
}
