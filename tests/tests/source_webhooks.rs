//! From a push to a running pipeline: a bare repository served on loopback
//! by `git daemon`, a project pointing at it, and signed GitHub and GitLab
//! webhooks that start runs whose jobs check the pushed commit out.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::git::{git, Repo};
use support::*;
use valkyrie::message::{EventBody, JobState, RunState};
use valkyrie_sdk::Client;

const SECRET: &str = "webhook-s3cret";

const PIPELINE: &str = "name: app-ci
jobs:
  head:
    steps:
      - run: echo \"head=$(git rev-parse HEAD) branch=$VALKYRIE_BRANCH event=$VALKYRIE_EVENT sha=$VALKYRIE_COMMIT_SHA\"
  bare:
    checkout: false
    steps:
      - run: test ! -e .git && echo \"empty workspace run=$VALKYRIE_RUN_ID\"
";

/// A server with the REST API, an agent, and a project on `repo`.
struct Ci {
    server: Server,
    client: Client,
    http: reqwest::Client,
    base: String,
    agent: Agent,
}

impl Ci {
    async fn start(h: &Harness, repo: &Repo) -> Self {
        Self::start_with(h, repo, serde_json::json!({})).await
    }

    /// The same, with `extra` fields in the project (its commit statuses,
    /// its run webhook).
    async fn start_with(h: &Harness, repo: &Repo, extra: serde_json::Value) -> Self {
        let port = free_port();
        let http_arg = format!("127.0.0.1:{port}");
        let server = h
            .server()
            .data_dir(h.path().join("data"))
            .args(&["--http", &http_arg])
            .start();
        let client = server.client().await;
        let agent = h.agent(&server).start(&client).await;
        let ci = Self {
            base: format!("http://{http_arg}"),
            http: http_client(),
            server,
            client,
            agent,
        };
        let (status, body) = ci
            .create_project(
                serde_json::json!({"name": "app", "repo": repo.url, "webhook_secret": SECRET}),
                extra,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["has_webhook_secret"], true);
        assert!(!body.to_string().contains(SECRET), "{body}");
        ci
    }

    /// `POST /api/projects` with `project`'s fields and `extra`'s; the
    /// status and the body.
    async fn create_project(
        &self,
        mut project: serde_json::Value,
        extra: serde_json::Value,
    ) -> (u16, String) {
        for (key, value) in extra.as_object().expect("an object") {
            project[key] = value.clone();
        }
        let response = self
            .http
            .post(format!("{}/api/projects", self.base))
            .bearer_auth(&self.server.api_token)
            .json(&project)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn github(
        &self,
        event: &str,
        delivery: &str,
        body: &str,
        signature: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .post(format!("{}/api/webhooks/github/app", self.base))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn gitlab(&self, event: &str, delivery: &str, body: &str, token: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/api/webhooks/gitlab/app", self.base))
            .header("content-type", "application/json")
            .header("x-gitlab-event", event)
            .header("x-gitlab-event-uuid", delivery)
            .header("x-gitlab-token", token)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn runs(&self) -> usize {
        self.client.runs(1000).await.unwrap().len()
    }

    /// Waits for run `id` to end; returns each job's name and output.
    async fn finished(&self, id: u64) -> Vec<(String, String)> {
        let run = wait_until(&format!("run {id} to end"), || async {
            let run = self.client.run(id).await.unwrap();
            (run.state != RunState::Running).then_some(run)
        })
        .await;
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");
        let mut out = Vec::new();
        for job in run.jobs {
            let job_id = job.job_id.expect("released");
            out.push((job.name, output_of(&self.client, job_id).await));
        }
        out
    }
}

/// The job's whole output, once it has ended.
async fn output_of(client: &Client, id: u64) -> String {
    let mut events = client.watch(Some(id), true, true).await.expect("watch");
    let mut output = Vec::new();
    within("the job's output up to its end", async {
        loop {
            let event = events.recv().await.expect("subscription open").expect("event");
            match event.body {
                EventBody::Log { data, .. } => output.extend_from_slice(&data),
                EventBody::State { state, .. } if state.is_terminal() => break,
                _ => {}
            }
        }
    })
    .await;
    text(&output)
}

fn github_push(branch: &str, sha: &str) -> String {
    // The fields of GitHub's push event that matter, in its shape
    // (docs.github.com, "Webhook events and payloads", push).
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "created": true,
        "deleted": false,
        "forced": false,
        "compare": "https://github.com/o/app/compare/x",
        "commits": [{"id": sha, "message": "change", "distinct": true}],
        "head_commit": {"id": sha, "message": "change"},
        "repository": {"id": 1, "name": "app", "full_name": "o/app", "clone_url": "https://github.com/o/app.git"},
        "pusher": {"name": "t", "email": "t@example.com"},
        "sender": {"login": "t", "id": 1}
    })
    .to_string()
}

fn gitlab_push(branch: &str, sha: &str) -> String {
    // GitLab's Push Hook payload (docs.gitlab.com, "Webhook events", push events).
    serde_json::json!({
        "object_kind": "push",
        "event_name": "push",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "ref": format!("refs/heads/{branch}"),
        "ref_protected": false,
        "checkout_sha": sha,
        "user_id": 4,
        "user_name": "t",
        "project_id": 15,
        "project": {"id": 15, "name": "app", "git_http_url": "https://gitlab.example/o/app.git", "path_with_namespace": "o/app"},
        "commits": [{"id": sha, "message": "change"}],
        "total_commits_count": 1,
        "repository": {"name": "app", "url": "git@gitlab.example:o/app.git"}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pushes_start_runs_at_their_commit_and_nothing_else_does() {
    let h = Harness::new();
    let repo = Repo::serve(&h, PIPELINE).await;
    let ci = Ci::start(&h, &repo).await;
    let sha = repo.push("main", "a.txt");

    // A bad signature: 401, and nothing runs.
    let body = github_push("main", &sha);
    let wrong = valkyrie_control_plane_signature("not-the-secret", &body);
    let (status, answer) = ci.github("push", "d-1", &body, Some(&wrong)).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("signature"),
        "{answer}"
    );
    let (status, _) = ci.github("push", "d-1", &body, None).await;
    assert_eq!(status, 401);
    assert_eq!(ci.runs().await, 0);

    // A ping is answered; another event is ignored with a reason.
    let ping = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let (status, answer) = ci
        .github(
            "ping",
            "d-0",
            ping,
            Some(&valkyrie_control_plane_signature(SECRET, ping)),
        )
        .await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")));
    let issue = r#"{"action":"opened","issue":{"number":1}}"#;
    let (status, answer) = ci
        .github(
            "issues",
            "d-2",
            issue,
            Some(&valkyrie_control_plane_signature(SECRET, issue)),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("`issues`"),
        "{answer}"
    );
    assert_eq!(ci.runs().await, 0);

    // A signed push: a run at that commit.
    let signature = valkyrie_control_plane_signature(SECRET, &body);
    let (status, answer) = ci.github("push", "d-1", &body, Some(&signature)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["status"], "started");
    assert_eq!(answer["sha"], sha.as_str());
    let run_id = answer["run_id"].as_u64().unwrap();
    let jobs = ci.finished(run_id).await;
    let head = &jobs.iter().find(|(n, _)| n == "head").unwrap().1;
    assert!(
        head.contains(&format!("head={sha} branch=main event=push sha={sha}")),
        "{head}"
    );
    assert!(head.contains("[valkyrie] checkout"), "{head}");
    let bare = &jobs.iter().find(|(n, _)| n == "bare").unwrap().1;
    assert!(bare.contains(&format!("empty workspace run={run_id}")), "{bare}");

    // The same delivery again: the same run, nothing new.
    let (status, answer) = ci.github("push", "d-1", &body, Some(&signature)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(answer["run_id"].as_u64(), Some(run_id));
    assert_eq!(ci.runs().await, 1);

    // GitLab: a push to another branch, with its token.
    let sha2 = repo.push("dev", "b.txt");
    let body = gitlab_push("dev", &sha2);
    let (status, _) = ci.gitlab("Push Hook", "g-1", &body, "wrong-token").await;
    assert_eq!(status, 401);
    assert_eq!(ci.runs().await, 1);
    let (status, answer) = ci.gitlab("Push Hook", "g-1", &body, SECRET).await;
    assert_eq!(status, 201, "{answer}");
    let run2 = answer["run_id"].as_u64().unwrap();
    let jobs = ci.finished(run2).await;
    let head = &jobs.iter().find(|(n, _)| n == "head").unwrap().1;
    assert!(
        head.contains(&format!("head={sha2} branch=dev event=push")),
        "{head}"
    );
    let (status, answer) = ci.gitlab("Push Hook", "g-1", &body, SECRET).await;
    assert_eq!((status, answer["run_id"].as_u64()), (200, Some(run2)));
    assert_eq!(ci.runs().await, 2);

    // The REST trigger: a ref and variables.
    let response = ci
        .http
        .post(format!("{}/api/projects/app/trigger", ci.base))
        .bearer_auth(&ci.server.api_token)
        .json(&serde_json::json!({"ref": "main", "variables": {"DEPLOY": "yes"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["sha"], sha.as_str());
    ci.finished(answer["run_id"].as_u64().unwrap()).await;

    // The project never shows its secret.
    let shown = ci
        .http
        .get(format!("{}/api/projects/app", ci.base))
        .bearer_auth(&ci.server.api_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        shown.contains("\"has_webhook_secret\":true") && !shown.contains(SECRET),
        "{shown}"
    );

    // Nor does the store hold it in the clear.
    let stored = std::fs::read(h.path().join("data/valkyrie.redb")).unwrap();
    assert!(
        !stored.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the webhook secret is in valkyrie.redb in the clear"
    );
}

/// Rules by branch: one pipeline file, pushed to three branches.
const RULES_PIPELINE: &str = "name: rules-ci
workflow:
  if: $VALKYRIE_BRANCH != \"wip\"
jobs:
  build:
    checkout: false
    steps: [echo build]
  deploy:
    checkout: false
    needs: [build]
    if: $VALKYRIE_BRANCH == \"main\" && $VALKYRIE_EVENT == \"push\"
    steps: [echo deploy]
  smoke:
    checkout: false
    needs: [deploy]
    steps: [echo smoke]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_skip_jobs_by_branch_and_a_workflow_rule_starts_no_run() {
    let h = Harness::new();
    let repo = Repo::serve(&h, RULES_PIPELINE).await;
    let ci = Ci::start(&h, &repo).await;
    let push = |branch: &str, delivery: &'static str| {
        let sha = repo.push(branch, &format!("{branch}.txt"));
        let body = github_push(branch, &sha);
        let signature = valkyrie_control_plane_signature(SECRET, &body);
        let ci = &ci;
        async move { ci.github("push", delivery, &body, Some(&signature)).await }
    };
    let ended = |id: u64| {
        let client = &ci.client;
        async move {
            wait_until(&format!("run {id} to end"), || async {
                let run = client.run(id).await.unwrap();
                (run.state != RunState::Running).then_some(run)
            })
            .await
        }
    };
    let state = |run: &valkyrie::message::RunInfo, name: &str| {
        let job = run.jobs.iter().find(|j| j.name == name).unwrap();
        (job.state.as_str().to_owned(), job.reason.clone())
    };

    let (status, answer) = push("main", "r-1").await;
    assert_eq!(status, 201, "{answer}");
    let run = ended(answer["run_id"].as_u64().unwrap()).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(state(&run, "deploy").0, "succeeded");
    assert_eq!(state(&run, "smoke").0, "succeeded");

    // Another branch: deploy is skipped by its rule, smoke (which needs
    // it) in turn; the run still succeeds.
    let (status, answer) = push("feature", "r-2").await;
    assert_eq!(status, 201, "{answer}");
    let run = ended(answer["run_id"].as_u64().unwrap()).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(state(&run, "build").0, "succeeded");
    let (deploy, why) = state(&run, "deploy");
    assert_eq!(deploy, "skipped");
    assert!(
        why.starts_with("skipped by rules: `if: $VALKYRIE_BRANCH == \"main\""),
        "{why}"
    );
    assert_eq!(
        state(&run, "smoke"),
        (
            "skipped".to_owned(),
            "skipped: needs `deploy` was skipped".to_owned()
        )
    );

    // `workflow: if` is false: 202 with the reason, and no run.
    let before = ci.runs().await;
    let (status, answer) = push("wip", "r-3").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "ignored");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("`workflow: if` is false"),
        "{answer}"
    );
    assert_eq!(ci.runs().await, before, "no run was created");
}

/// A forge's API and a webhook receiver on loopback: records every request
/// and answers 201, but 500 to the first `fail_hooks` requests to `/hook`.
struct Receiver {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One request a [`Receiver`] got, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: std::collections::HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }
}

impl Receiver {
    async fn start(fail_hooks: usize) -> Self {
        use axum::extract::State;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        type Shared = (Arc<Mutex<Vec<Received>>>, Arc<AtomicUsize>);
        async fn record(
            State((seen, failures)): State<Shared>,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let path = uri.path().to_owned();
            let fail = path == "/hook"
                && failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            let answered = if fail { 500 } else { 201 };
            seen.lock().unwrap().push(Received {
                path,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect(),
                body: body.to_vec(),
                answered,
            });
            axum::http::StatusCode::from_u16(answered).unwrap()
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state: Shared = (seen.clone(), Arc::new(AtomicUsize::new(fail_hooks)));
        let app = axum::Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, seen, task }
    }

    /// The requests to `path` so far.
    fn to(&self, path: &str) -> Vec<Received> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got a request whose body's `field` is `last`;
    /// returns every request to `path`.
    async fn until(&self, path: &str, field: &str, last: &str) -> Vec<Received> {
        wait_until(&format!("{path} to get {field} {last}"), || async {
            let got = self.to(path);
            got.iter().any(|r| r.json()[field] == last).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const STATUS_PIPELINE: &str = "name: status-ci
jobs:
  check:
    checkout: false
    steps:
      - run: test \"$VALKYRIE_BRANCH\" != broken
";

const STATUS_TOKEN: &str = "ghp-status-token-4711";
const NOTIFY_SECRET: &str = "notify-s3cret-0815";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_post_their_state_to_the_forge_and_a_signed_webhook_when_they_end() {
    let h = Harness::new();
    let repo = Repo::serve(&h, STATUS_PIPELINE).await;
    // The first run-end webhook is answered 500: it must be retried.
    let forge = Receiver::start(1).await;
    let ci = Ci::start_with(
        &h,
        &repo,
        serde_json::json!({
            "status": {
                "forge": "github",
                "api_url": format!("{}/api/v3/", forge.url),
                "repository": "o/app",
                "token": STATUS_TOKEN,
            },
            "notify_url": format!("{}/hook", forge.url),
            "notify_secret": NOTIFY_SECRET,
        }),
    )
    .await;
    let shown: serde_json::Value = ci
        .http
        .get(format!("{}/api/projects/app", ci.base))
        .bearer_auth(&ci.server.api_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"]["forge"], "github", "{shown}");
    assert_eq!(shown["status"]["api_url"], format!("{}/api/v3", forge.url));
    assert_eq!(shown["status"]["repository"], "o/app");
    assert_eq!(shown["status"]["has_token"], true);
    assert_eq!(shown["notify_url"], format!("{}/hook", forge.url));
    assert_eq!(shown["has_notify_secret"], true);
    let text = shown.to_string();
    assert!(
        !text.contains(STATUS_TOKEN) && !text.contains(NOTIFY_SECRET),
        "{text}"
    );

    // A push to main: pending, then success, on the pushed commit.
    let sha = repo.push("main", "a.txt");
    let body = github_push("main", &sha);
    let signature = valkyrie_control_plane_signature(SECRET, &body);
    let (status, answer) = ci.github("push", "s-1", &body, Some(&signature)).await;
    assert_eq!(status, 201, "{answer}");
    let run_id = answer["run_id"].as_u64().unwrap();
    ci.finished(run_id).await;
    let path = format!("/api/v3/repos/o/app/statuses/{sha}");
    let statuses = forge.until(&path, "state", "success").await;
    let states: Vec<serde_json::Value> = statuses.iter().map(|r| r.json()["state"].clone()).collect();
    assert_eq!(states, ["pending", "success"], "{statuses:?}");
    for posted in &statuses {
        assert_eq!(posted.header("authorization"), format!("Bearer {STATUS_TOKEN}"));
        assert_eq!(posted.header("accept"), "application/vnd.github+json");
        assert!(posted.header("user-agent").starts_with("valkyrie/"), "{posted:?}");
        let json = posted.json();
        assert_eq!(json["context"], "valkyrie/status-ci", "{json}");
        assert_eq!(
            json["target_url"],
            format!("{}/api/ci/executions/{run_id}", ci.base),
            "{json}"
        );
    }

    // The webhook: refused once (500), sent again with the same delivery
    // id, signed with the project's secret.
    let hooks = wait_until("the run webhook to be retried", || async {
        let got = forge.to("/hook");
        got.iter().any(|r| r.answered == 201).then_some(got)
    })
    .await;
    assert_eq!(
        hooks.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 201],
        "{hooks:?}"
    );
    assert_eq!(
        hooks[0].header("x-valkyrie-delivery"),
        hooks[1].header("x-valkyrie-delivery")
    );
    assert_eq!(hooks[1].header("x-valkyrie-event"), "run.finished");
    for hook in &hooks {
        let hex_sig = hook
            .header("x-valkyrie-signature-256")
            .strip_prefix("sha256=")
            .expect("a sha256= signature");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, NOTIFY_SECRET.as_bytes());
        ring::hmac::verify(&key, &hook.body, &hex::decode(hex_sig).unwrap())
            .expect("the signature verifies with notify_secret");
    }
    let summary = hooks[1].json();
    assert_eq!(summary["run_id"], run_id);
    assert_eq!(summary["project"], "app");
    assert_eq!(summary["pipeline"], "status-ci");
    assert_eq!(summary["sha"], sha.as_str());
    assert_eq!(summary["ref"], "refs/heads/main");
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["jobs"][0]["name"], "check");
    assert_eq!(summary["jobs"][0]["state"], "succeeded");
    assert!(summary["finished_at_ms"].as_u64() >= summary["started_at_ms"].as_u64());

    // A failing job: failure, and a webhook saying so.
    let sha2 = repo.push("broken", "b.txt");
    let body = github_push("broken", &sha2);
    let signature = valkyrie_control_plane_signature(SECRET, &body);
    let (status, answer) = ci.github("push", "s-2", &body, Some(&signature)).await;
    assert_eq!(status, 201, "{answer}");
    let run2 = answer["run_id"].as_u64().unwrap();
    let path2 = format!("/api/v3/repos/o/app/statuses/{sha2}");
    let statuses = forge.until(&path2, "state", "failure").await;
    let states: Vec<serde_json::Value> = statuses.iter().map(|r| r.json()["state"].clone()).collect();
    assert_eq!(states, ["pending", "failure"], "{statuses:?}");
    assert!(
        statuses[1].json()["description"]
            .as_str()
            .unwrap()
            .contains("job `check` failed"),
        "{statuses:?}"
    );
    let hooks = forge.until("/hook", "state", "failed").await;
    let failed = hooks
        .iter()
        .find(|r| r.json()["state"] == "failed")
        .unwrap()
        .json();
    assert_eq!(failed["run_id"], run2);
    assert_eq!(failed["jobs"][0]["state"], "failed");
    assert_eq!(ci.client.run(run2).await.unwrap().state, RunState::Failed);

    // Neither secret is in the server's log nor, in the clear, in its store.
    let log = ci.server.process.log();
    assert!(
        log.contains("could not post the run's state; retrying"),
        "the refused webhook is logged: {log}"
    );
    assert!(
        !log.contains(STATUS_TOKEN) && !log.contains(NOTIFY_SECRET),
        "a secret is in the server's log"
    );
    let stored = std::fs::read(h.path().join("data/valkyrie.redb")).unwrap();
    for secret in [STATUS_TOKEN, NOTIFY_SECRET] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in valkyrie.redb in the clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_project_posts_running_then_success_with_its_private_token() {
    let h = Harness::new();
    let repo = Repo::serve(&h, STATUS_PIPELINE).await;
    let forge = Receiver::start(0).await;
    // The status token defaults to the project's token.
    let ci = Ci::start_with(
        &h,
        &repo,
        serde_json::json!({
            "token": STATUS_TOKEN,
            "status": {"forge": "gitlab", "api_url": format!("{}/api/v4", forge.url), "repository": "group/sub/app"},
        }),
    )
    .await;
    let sha = repo.push("main", "a.txt");
    let response = ci
        .http
        .post(format!("{}/api/projects/app/trigger", ci.base))
        .bearer_auth(&ci.server.api_token)
        .json(&serde_json::json!({"ref": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["sha"], sha.as_str());
    let path = format!("/api/v4/projects/group%2Fsub%2Fapp/statuses/{sha}");
    let statuses = forge.until(&path, "state", "success").await;
    let states: Vec<serde_json::Value> = statuses.iter().map(|r| r.json()["state"].clone()).collect();
    assert_eq!(states, ["running", "success"], "{statuses:?}");
    for posted in &statuses {
        assert_eq!(posted.header("private-token"), STATUS_TOKEN);
        let json = posted.json();
        assert_eq!(json["name"], "valkyrie/status-ci", "{json}");
        assert_eq!(json["ref"], "main", "{json}");
    }
    assert!(forge.to("/hook").is_empty(), "no notify_url, no webhook");

    // Settings that cannot work are refused when the project is created.
    for (fields, says) in [
        (
            serde_json::json!({"status": {"forge": "github", "token": "x"}}),
            "cannot tell the github repository",
        ),
        (
            serde_json::json!({"status": {"forge": "github", "repository": "o/app"}}),
            "needs a token",
        ),
        (
            serde_json::json!({"status": {"forge": "gitlab", "repository": "g/app", "token": "x", "api_url": "ftp://h/api/v4"}}),
            "status.api_url",
        ),
        (
            serde_json::json!({"status": {"forge": "bitbucket", "token": "x"}}),
            "bitbucket",
        ),
        (serde_json::json!({"notify_secret": "s"}), "notify_url"),
        (
            serde_json::json!({"notify_url": "https://user:pw@hooks.example/"}),
            "credentials",
        ),
    ] {
        let (status, answer) = ci
            .create_project(
                serde_json::json!({"name": "other", "repo": repo.url}),
                fields.clone(),
            )
            .await;
        assert_eq!(status, 400, "{fields}: {answer}");
        assert!(answer.contains(says), "{fields}: {answer}");
    }
}

/// The GitHub signature of `body` under `secret`, as GitHub computes it.
fn valkyrie_control_plane_signature(secret: &str, body: &str) -> String {
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("openssl computes the HMAC");
    let line = text(&out.stdout);
    let hex = line.trim().rsplit(' ').next().unwrap().to_owned();
    format!("sha256={hex}")
}

/// Figures, not a test: webhook received → first job running (p50, p99,
/// warm mirror), and a checkout on an agent that already checked out the
/// repository next to a plain `git clone`. Run with
/// `cargo test -p valkyrie-tests --test source_webhooks -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures"]
async fn figures_webhook_to_running_and_checkout() {
    let h = Harness::new();
    let pipeline = "jobs:\n  head:\n    steps:\n      - run: git rev-parse HEAD\n";
    let repo = Repo::serve(&h, pipeline).await;
    let ci = Ci::start(&h, &repo).await;
    let mut latencies = Vec::new();
    let mut answered = Vec::new();
    for i in 0..60 {
        let sha = repo.push("main", "a.txt");
        let body = github_push("main", &sha);
        let signature = valkyrie_control_plane_signature(SECRET, &body);
        let mut events = ci.client.watch(None, false, false).await.unwrap();
        let sent = Instant::now();
        let (status, answer) = ci
            .github("push", &format!("lat-{i}"), &body, Some(&signature))
            .await;
        assert_eq!(status, 201, "{answer}");
        answered.push(sent.elapsed());
        within("the job to run", async {
            loop {
                let event = events.recv().await.unwrap().unwrap();
                if let EventBody::State {
                    state: JobState::Running,
                    ..
                } = event.body
                {
                    break;
                }
            }
        })
        .await;
        latencies.push(sent.elapsed());
        ci.finished(answer["run_id"].as_u64().unwrap()).await;
    }
    latencies.sort();
    answered.sort();
    println!(
        "webhook -> answered (run started on the server), {} pushes: p50 {:.1} ms",
        answered.len(),
        answered[answered.len() / 2].as_secs_f64() * 1e3
    );
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "webhook -> first job running, {} pushes, warm mirror: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );

    // 1,000 commits, then two jobs on the same agent.
    let mut import = String::new();
    for i in 0..1000 {
        let content = format!("line {i}\n");
        import.push_str(&format!(
            "commit refs/heads/main\ncommitter t <t@example.com> {} +0000\ndata 2\nc\n{}M 100644 inline f{}.txt\ndata {}\n{}\n",
            1_700_000_000 + i,
            if i == 0 { String::from("from refs/heads/main^0\n") } else { String::new() },
            i % 50,
            content.len(),
            content
        ));
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&repo.work)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(import.as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success());
    git(&repo.work, &["reset", "-q", "--hard", "main"]);
    git(
        &repo.work,
        &["push", "-q", "-f", repo.bare.to_str().unwrap(), "main:main"],
    );
    let count = git(&repo.bare, &["rev-list", "--count", "main"]);
    let mut checkout_lines = Vec::new();
    for n in 0..2 {
        let sha = repo.push("main", "a.txt");
        let body = github_push("main", &sha);
        let signature = valkyrie_control_plane_signature(SECRET, &body);
        let (status, answer) = ci
            .github("push", &format!("big-{n}"), &body, Some(&signature))
            .await;
        assert_eq!(status, 201, "{answer}");
        let jobs = ci.finished(answer["run_id"].as_u64().unwrap()).await;
        let out = &jobs[0].1;
        assert!(out.contains(&sha), "{out}");
        checkout_lines.push(
            out.lines()
                .filter(|l| l.starts_with("[valkyrie]"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .join(" | "),
        );
    }
    println!("repository: {} commits", count.trim());
    println!("first job on the agent:  {}", checkout_lines[0]);
    println!("second job on the agent: {}", checkout_lines[1]);
    for (what, args) in [
        ("git clone (full)", vec!["clone", "-q"]),
        ("git clone --depth 1", vec!["clone", "-q", "--depth", "1"]),
    ] {
        let dest = h.path().join(format!("clone-{}", args.len()));
        let started = Instant::now();
        let status = Command::new("git")
            .args(&args)
            .arg(&repo.url)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success());
        println!("{what}: {:.3} s", started.elapsed().as_secs_f64());
    }
    let _ = Duration::ZERO;
}

const SCHEDULED_PIPELINE: &str = "\
name: nightly
jobs:
  report:
    steps:
      - run: echo \"event=$VALKYRIE_EVENT suite=$SUITE branch=$VALKYRIE_BRANCH head=$(git rev-parse HEAD)\"
";

/// `vk projects` and `vk schedules` over the Valkyrie protocol, and a
/// schedule firing on the leader: each run is at the branch's tip, carries
/// the event `schedule` and the schedule's variables, and no slot fires
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_projects_and_schedules_fire_a_run_per_slot() {
    let h = Harness::new();
    let repo = Repo::serve(&h, SCHEDULED_PIPELINE).await;
    let server = h.server().data_dir(h.path().join("data")).start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;
    let vk = |args: &'static [&'static str]| server.vk(args);
    let ok = |out: &std::process::Output| {
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };

    let add = server
        .vk(&[
            "projects",
            "add",
            "app",
            "--repo",
            &repo.url,
            "--webhook-secret",
            SECRET,
        ])
        .await;
    let shown = ok(&add);
    assert!(shown.contains("app") && shown.contains(&repo.url), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    let again = server.vk(&["projects", "add", "app", "--repo", &repo.url]).await;
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let bad = server
        .vk(&["projects", "add", "bad/name", "--repo", &repo.url])
        .await;
    assert!(
        text(&bad.stderr).contains("is not valid"),
        "{}",
        text(&bad.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&vk(&["projects", "list", "--json"]).await)).unwrap();
    assert_eq!(listed[0]["name"], "app");
    assert_eq!(listed[0]["has_webhook_secret"], true);
    assert_eq!(listed[0]["has_token"], false);

    let refused = vk(&["schedules", "add", "app", "0 3 * *"]).await;
    assert!(
        text(&refused.stderr).contains("is not valid"),
        "{}",
        text(&refused.stderr)
    );
    let missing = vk(&["schedules", "add", "nope", "0 3 * * *"]).await;
    assert!(
        text(&missing.stderr).contains("no project `nope`"),
        "{}",
        text(&missing.stderr)
    );
    let added = ok(&vk(&[
        "schedules",
        "add",
        "app",
        "*/2 * * * * *",
        "--var",
        "SUITE=nightly",
    ])
    .await);
    assert!(
        added.contains("*/2 * * * * *") && added.contains("SUITE=nightly"),
        "{added}"
    );
    let schedules: serde_json::Value =
        serde_json::from_str(&ok(&vk(&["schedules", "list", "app", "--json"]).await)).unwrap();
    let id = schedules[0]["id"].as_u64().unwrap();
    let created = schedules[0]["next_ms"].as_u64().unwrap() - 2_000;

    let sha = git(&repo.work, &["rev-parse", "HEAD"]);
    let runs = wait_until("two scheduled runs", || async {
        let runs = client.runs(100).await.unwrap();
        (runs.len() >= 2).then_some(runs)
    })
    .await;
    let run = runs.iter().min_by_key(|r| r.run_id).unwrap();
    let run = wait_until("the first scheduled run to end", || async {
        let run = client.run(run.run_id).await.unwrap();
        (run.state != RunState::Running).then_some(run)
    })
    .await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    let out = output_of(&client, run.jobs[0].job_id.unwrap()).await;
    assert!(
        out.contains(&format!("event=schedule suite=nightly branch=main head={sha}")),
        "{out}"
    );

    // At most one run per slot: never more runs than slots since it was added.
    let shown = ok(&vk(&["projects", "show", "app"]).await);
    assert!(shown.contains("*/2 * * * * *"), "{shown}");
    let removed = vk_remove_schedule(&server, id).await;
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let slots = (now_ms - created) / 2_000 + 1;
    let fired = client.runs(1000).await.unwrap().len() as u64;
    assert!(fired <= slots, "{fired} runs in {slots} slots");
    let left: serde_json::Value =
        serde_json::from_str(&ok(&vk(&["schedules", "list", "--json"]).await)).unwrap();
    assert_eq!(left, serde_json::json!([]));
    let again = vk_remove_schedule(&server, id).await;
    assert!(
        text(&again.stderr).contains(&format!("no schedule {id}")),
        "{}",
        text(&again.stderr)
    );

    ok(&vk(&["projects", "remove", "app"]).await);
    let gone = vk(&["projects", "show", "app"]).await;
    assert!(
        text(&gone.stderr).contains("no project `app`"),
        "{}",
        text(&gone.stderr)
    );
}

async fn vk_remove_schedule(server: &Server, id: u64) -> std::process::Output {
    server.vk(&["schedules", "remove", &id.to_string()]).await
}

const PRIVATE_TOKEN: &str = "glpat-pr1vate-t0ken";

const PRIVATE_PIPELINE: &str = "\
name: private
jobs:
  head:
    steps:
      - run: echo \"head=$(git rev-parse HEAD)\"; env; git config --list --show-origin
";

/// A private repository over HTTP (`git http-backend` behind a server that
/// answers 401 without the token): the server reads the pipeline file and
/// the agent checks the commit out with the project's token, and the token
/// is in no log, no job environment, no git config and no store file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_is_checked_out_with_its_token_and_the_token_shows_nowhere() {
    let h = Harness::new();
    let repo = Repo::serve_private(&h, PRIVATE_PIPELINE, PRIVATE_TOKEN).await;
    let anonymous = Command::new("git")
        .args(["ls-remote", &repo.url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(!anonymous.status.success(), "the repository is private");
    assert!(
        repo.http_counts()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    let ci = Ci::start_with(&h, &repo, serde_json::json!({"token": PRIVATE_TOKEN})).await;
    let sha = repo.push("main", "a.txt");
    let body = github_push("main", &sha);
    let signature = valkyrie_control_plane_signature(SECRET, &body);
    let (status, answer) = ci.github("push", "p-1", &body, Some(&signature)).await;
    assert_eq!(status, 201, "{answer}");
    let run_id = answer["run_id"].as_u64().unwrap();
    let jobs = ci.finished(run_id).await;
    let output = &jobs[0].1;
    assert!(output.contains(&format!("head={sha}")), "{output}");
    assert!(
        repo.http_counts()
            .served
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "the server and the agent both fetched with the token"
    );

    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{PRIVATE_TOKEN}"))
    };
    let server_log = ci.server.process.log();
    let agent_log = ci.agent.process.log();
    for (what, text) in [
        ("the job's output (its env and git config)", output.as_str()),
        ("the server's log", server_log.as_str()),
        ("the agent's log", agent_log.as_str()),
    ] {
        assert!(!text.contains(PRIVATE_TOKEN), "the token is in {what}:\n{text}");
        assert!(!text.contains(&basic), "the token's header is in {what}:\n{text}");
    }
    // Not merely masked: absent from the job's environment and git config.
    assert!(
        !output.contains("***") && !output.contains("GIT_CONFIG_") && !output.contains("extraheader"),
        "{output}"
    );
    assert!(
        output.contains("VALKYRIE_COMMIT_SHA="),
        "the job printed its env: {output}"
    );
    let stored = std::fs::read(h.path().join("data/valkyrie.redb")).unwrap();
    assert!(
        !stored
            .windows(PRIVATE_TOKEN.len())
            .any(|w| w == PRIVATE_TOKEN.as_bytes()),
        "the token is in valkyrie.redb in the clear"
    );
}

const DEPTH_PIPELINE: &str = "\
name: depth
jobs:
  shallow:
    steps:
      - run: echo \"commits=$(git rev-list --count HEAD)\"
  three:
    checkout: {depth: 3}
    steps:
      - run: echo \"commits=$(git rev-list --count HEAD)\"
  full:
    checkout: {depth: 0}
    steps:
      - run: echo \"commits=$(git rev-list --count HEAD)\"
";

/// `checkout: {depth: N}`: one commit by default, N when asked, the whole
/// history with 0, even on an agent whose mirror is already shallow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_depth_fetches_the_history_a_job_asks_for() {
    let h = Harness::new();
    let repo = Repo::serve(&h, DEPTH_PIPELINE).await;
    let ci = Ci::start(&h, &repo).await;
    for n in 0..5 {
        repo.push("main", &format!("f{n}.txt"));
    }
    let total = git(&repo.bare, &["rev-list", "--count", "main"]);
    assert_eq!(total, "6");
    let response = ci
        .http
        .post(format!("{}/api/projects/app/trigger", ci.base))
        .bearer_auth(&ci.server.api_token)
        .json(&serde_json::json!({"ref": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answer: serde_json::Value = response.json().await.unwrap();
    let jobs = ci.finished(answer["run_id"].as_u64().unwrap()).await;
    let count = |name: &str| {
        let out = &jobs.iter().find(|(n, _)| n == name).unwrap().1;
        out.lines()
            .find_map(|l| l.strip_prefix("commits="))
            .unwrap_or_else(|| panic!("{name}: {out}"))
            .to_owned()
    };
    assert_eq!(count("shallow"), "1");
    assert_eq!(count("three"), "3");
    assert_eq!(count("full"), total);
}
