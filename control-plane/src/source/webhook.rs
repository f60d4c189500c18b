//! The forges' webhook requests: their authentication and the events that
//! start runs. Pure: bytes and headers in, a decision out.
//!
//! | forge | authenticates with | events that run | ignored |
//! |---|---|---|---|
//! | GitHub | `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 of the body with the secret | `push` (a branch or a tag), `pull_request` (`opened`, `synchronize`, `reopened`) | `ping` (answered), branch deletions, any other event or action |
//! | GitLab | `X-Gitlab-Token`, the secret itself | `Push Hook`, `Tag Push Hook`, `Merge Request Hook` (`open`, `update`, `reopen`) | deletions, any other event or action |
//!
//! Both comparisons take the same time whatever the bytes sent: the
//! GitHub signature with [`ring::hmac::verify`]; the GitLab token by
//! comparing HMACs of both values under a per-process random key with it
//! (ring's plain constant-time comparison is deprecated). ring is the
//! server's crypto library already (secrets at rest), so no `hmac`/`sha2`
//! crates are added for it.

use ring::hmac;
use serde::Deserialize;

/// The forge a request claims to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// github.com or GitHub Enterprise.
    GitHub,
    /// gitlab.com or a self-hosted GitLab.
    GitLab,
}

impl Forge {
    /// Its name in messages and delivery keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
        }
    }

    /// The header naming the event.
    pub fn event_header(self) -> &'static str {
        match self {
            Forge::GitHub => "x-github-event",
            Forge::GitLab => "x-gitlab-event",
        }
    }

    /// The header holding the delivery's unique id (the same on a
    /// redelivery).
    pub fn delivery_header(self) -> &'static str {
        match self {
            Forge::GitHub => "x-github-delivery",
            Forge::GitLab => "x-gitlab-event-uuid",
        }
    }
}

/// Why a request is not authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyWebhookError {
    /// The project has no webhook secret.
    #[error("project `{0}` has no webhook secret; set one with `vk projects add … --webhook-secret`")]
    NoSecret(String),
    /// The header is missing.
    #[error("the request has no {0} header")]
    Missing(&'static str),
    /// The header is not of the expected form.
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    /// The signature or token does not match the project's secret.
    #[error("the {0} does not match the project's webhook secret")]
    Mismatch(&'static str),
}

/// Checks a request's signature (GitHub) or token (GitLab) against
/// `secret`. `header` is the value of `X-Hub-Signature-256` or
/// `X-Gitlab-Token`.
pub fn verify(
    forge: Forge,
    project: &str,
    secret: &str,
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyWebhookError> {
    if secret.is_empty() {
        return Err(VerifyWebhookError::NoSecret(project.to_owned()));
    }
    match forge {
        Forge::GitHub => {
            let header = header.ok_or(VerifyWebhookError::Missing("X-Hub-Signature-256"))?;
            let hex_sig = header
                .strip_prefix(b"sha256=")
                .ok_or(VerifyWebhookError::Malformed("X-Hub-Signature-256"))?;
            let signature =
                hex::decode(hex_sig).map_err(|_| VerifyWebhookError::Malformed("X-Hub-Signature-256"))?;
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
            hmac::verify(&key, body, &signature).map_err(|_| VerifyWebhookError::Mismatch("signature"))
        }
        Forge::GitLab => {
            let header = header.ok_or(VerifyWebhookError::Missing("X-Gitlab-Token"))?;
            let key = comparison_key();
            let given = hmac::sign(key, header);
            hmac::verify(key, secret.as_bytes(), given.as_ref())
                .map_err(|_| VerifyWebhookError::Mismatch("token"))
        }
    }
}

/// A random key, made once per process, under which two values are
/// compared by their HMACs.
fn comparison_key() -> &'static hmac::Key {
    static KEY: std::sync::OnceLock<hmac::Key> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the OS random source is available")
    })
}

/// The GitHub signature header for `body` (what a forge sends; for tests
/// and tools).
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// A commit to run, from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `push`, `tag`, `pull_request` or `merge_request`.
    pub event: &'static str,
    /// The ref to fetch (`refs/heads/x`, `refs/tags/v1`,
    /// `refs/pull/7/head`, `refs/merge-requests/7/head`).
    pub git_ref: String,
    /// The commit.
    pub sha: String,
    /// The branch (a request's source branch), or empty.
    pub branch: String,
    /// The tag, or empty.
    pub tag: String,
    /// The pull or merge request number.
    pub pr_number: Option<u64>,
}

/// What a webhook request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Run this commit.
    Run(Push),
    /// GitHub's `ping`, sent when a hook is created.
    Ping,
    /// Nothing to run; says why.
    Ignored(String),
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {event} payload is not valid: {detail}")]
pub struct ParsePayloadError {
    /// The event.
    pub event: String,
    /// What is wrong.
    pub detail: String,
}

fn is_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// The commit a push of `git_ref` at `sha` runs (or why none).
fn push_of(event: &str, git_ref: &str, sha: &str) -> Result<Event, ParsePayloadError> {
    if sha.is_empty() || is_zero_sha(sha) {
        return Ok(Event::Ignored(format!("the push deleted {git_ref}")));
    }
    if !is_sha(sha) {
        return Err(ParsePayloadError {
            event: event.into(),
            detail: format!("`{sha}` is not a commit id"),
        });
    }
    if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        Ok(Event::Run(Push {
            event: "push",
            git_ref: git_ref.into(),
            sha: sha.to_ascii_lowercase(),
            branch: branch.into(),
            tag: String::new(),
            pr_number: None,
        }))
    } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        Ok(Event::Run(Push {
            event: "tag",
            git_ref: git_ref.into(),
            sha: sha.to_ascii_lowercase(),
            branch: String::new(),
            tag: tag.into(),
            pr_number: None,
        }))
    } else {
        Ok(Event::Ignored(format!("pushes to {git_ref} do not run")))
    }
}

fn payload<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, ParsePayloadError> {
    serde_json::from_slice(body).map_err(|e| ParsePayloadError {
        event: event.into(),
        detail: e.to_string(),
    })
}

#[derive(Deserialize)]
struct GitHubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    deleted: bool,
}

#[derive(Deserialize)]
struct GitHubPullRequestEvent {
    action: String,
    number: u64,
    pull_request: GitHubPullRequest,
}

#[derive(Deserialize)]
struct GitHubPullRequest {
    head: GitHubHead,
}

#[derive(Deserialize)]
struct GitHubHead {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

#[derive(Deserialize)]
struct GitLabPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
}

#[derive(Deserialize)]
struct GitLabMergeRequestEvent {
    object_attributes: GitLabMergeRequest,
}

#[derive(Deserialize)]
struct GitLabMergeRequest {
    iid: u64,
    source_branch: String,
    #[serde(default)]
    action: Option<String>,
    last_commit: GitLabCommit,
}

#[derive(Deserialize)]
struct GitLabCommit {
    id: String,
}

/// Reads a GitHub event (`X-GitHub-Event`) and its JSON body.
pub fn github_event(event: &str, body: &[u8]) -> Result<Event, ParsePayloadError> {
    match event {
        "ping" => Ok(Event::Ping),
        "push" => {
            let push: GitHubPush = payload(event, body)?;
            if push.deleted {
                return Ok(Event::Ignored(format!("the push deleted {}", push.git_ref)));
            }
            push_of(event, &push.git_ref, &push.after)
        }
        "pull_request" => {
            let pr: GitHubPullRequestEvent = payload(event, body)?;
            if !matches!(pr.action.as_str(), "opened" | "synchronize" | "reopened") {
                return Ok(Event::Ignored(format!(
                    "pull_request action `{}` does not run (opened, synchronize and reopened do)",
                    pr.action
                )));
            }
            if !is_sha(&pr.pull_request.head.sha) {
                return Err(ParsePayloadError {
                    event: event.into(),
                    detail: format!("`{}` is not a commit id", pr.pull_request.head.sha),
                });
            }
            Ok(Event::Run(Push {
                event: "pull_request",
                git_ref: format!("refs/pull/{}/head", pr.number),
                sha: pr.pull_request.head.sha.to_ascii_lowercase(),
                branch: pr.pull_request.head.git_ref,
                tag: String::new(),
                pr_number: Some(pr.number),
            }))
        }
        "" => Ok(Event::Ignored("the request has no X-GitHub-Event header".into())),
        other => Ok(Event::Ignored(format!(
            "GitHub event `{other}` does not run (push and pull_request do)"
        ))),
    }
}

/// Reads a GitLab event (`X-Gitlab-Event`) and its JSON body.
pub fn gitlab_event(event: &str, body: &[u8]) -> Result<Event, ParsePayloadError> {
    match event {
        "Push Hook" | "Tag Push Hook" => {
            let push: GitLabPush = payload(event, body)?;
            // `checkout_sha` is null when the push deleted the ref.
            let sha = match push.checkout_sha {
                Some(sha) => sha,
                None if is_zero_sha(&push.after) || push.after.is_empty() => String::new(),
                None => push.after,
            };
            push_of(event, &push.git_ref, &sha)
        }
        "Merge Request Hook" => {
            let mr: GitLabMergeRequestEvent = payload(event, body)?;
            let mr = mr.object_attributes;
            let action = mr.action.unwrap_or_default();
            if !matches!(action.as_str(), "open" | "update" | "reopen") {
                return Ok(Event::Ignored(format!(
                    "merge request action `{action}` does not run (open, update and reopen do)"
                )));
            }
            if !is_sha(&mr.last_commit.id) {
                return Err(ParsePayloadError {
                    event: event.into(),
                    detail: format!("`{}` is not a commit id", mr.last_commit.id),
                });
            }
            Ok(Event::Run(Push {
                event: "merge_request",
                git_ref: format!("refs/merge-requests/{}/head", mr.iid),
                sha: mr.last_commit.id.to_ascii_lowercase(),
                branch: mr.source_branch,
                tag: String::new(),
                pr_number: Some(mr.iid),
            }))
        }
        "" => Ok(Event::Ignored("the request has no X-Gitlab-Event header".into())),
        other => Ok(Event::Ignored(format!(
            "GitLab event `{other}` does not run (Push Hook, Tag Push Hook and Merge Request Hook do)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

    #[test]
    fn a_github_signature_is_checked_against_the_body() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = github_signature("s3cret", body);
        assert!(verify(Forge::GitHub, "p", "s3cret", Some(good.as_bytes()), body).is_ok());
        let other = github_signature("other", body);
        assert_eq!(
            verify(Forge::GitHub, "p", "s3cret", Some(other.as_bytes()), body),
            Err(VerifyWebhookError::Mismatch("signature"))
        );
        assert_eq!(
            verify(Forge::GitHub, "p", "s3cret", Some(good.as_bytes()), b"{}"),
            Err(VerifyWebhookError::Mismatch("signature"))
        );
        assert_eq!(
            verify(Forge::GitHub, "p", "s3cret", Some(b"sha1=00"), body),
            Err(VerifyWebhookError::Malformed("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify(Forge::GitHub, "p", "s3cret", None, body),
            Err(VerifyWebhookError::Missing("X-Hub-Signature-256"))
        );
        assert!(matches!(
            verify(Forge::GitHub, "p", "", Some(good.as_bytes()), body),
            Err(VerifyWebhookError::NoSecret(_))
        ));
    }

    #[test]
    fn a_gitlab_token_must_equal_the_secret() {
        assert!(verify(Forge::GitLab, "p", "tok", Some(b"tok"), b"").is_ok());
        assert!(verify(Forge::GitLab, "p", "tok", Some(b"tok2"), b"").is_err());
        assert!(verify(Forge::GitLab, "p", "tok", Some(b""), b"").is_err());
    }

    #[test]
    fn github_pushes_and_pull_requests_run_and_deletions_do_not() {
        let push = format!(
            r#"{{"ref":"refs/heads/main","before":"{}","after":"{SHA}","deleted":false,"repository":{{"full_name":"o/r"}}}}"#,
            "0".repeat(40)
        );
        let Event::Run(run) = github_event("push", push.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (run.event, run.branch.as_str(), run.sha.as_str()),
            ("push", "main", SHA)
        );
        let tag = format!(r#"{{"ref":"refs/tags/v1.0","after":"{SHA}"}}"#);
        let Event::Run(run) = github_event("push", tag.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!((run.event, run.tag.as_str()), ("tag", "v1.0"));
        let deleted = format!(
            r#"{{"ref":"refs/heads/x","after":"{}","deleted":true}}"#,
            "0".repeat(40)
        );
        assert!(matches!(
            github_event("push", deleted.as_bytes()).unwrap(),
            Event::Ignored(_)
        ));
        let pr = format!(
            r#"{{"action":"synchronize","number":7,"pull_request":{{"head":{{"ref":"feat","sha":"{SHA}"}},"base":{{"ref":"main"}}}}}}"#
        );
        let Event::Run(run) = github_event("pull_request", pr.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(run.git_ref, "refs/pull/7/head");
        assert_eq!(run.pr_number, Some(7));
        let closed = pr.replace("synchronize", "closed");
        assert!(matches!(
            github_event("pull_request", closed.as_bytes()).unwrap(),
            Event::Ignored(_)
        ));
        assert_eq!(github_event("ping", b"{}").unwrap(), Event::Ping);
        let Event::Ignored(why) = github_event("issues", b"{}").unwrap() else {
            panic!()
        };
        assert!(why.contains("`issues`"), "{why}");
        assert!(github_event("push", b"not json").is_err());
    }

    #[test]
    fn gitlab_pushes_and_merge_requests_run() {
        let push = format!(
            r#"{{"object_kind":"push","ref":"refs/heads/dev","before":"{}","after":"{SHA}","checkout_sha":"{SHA}"}}"#,
            "0".repeat(40)
        );
        let Event::Run(run) = gitlab_event("Push Hook", push.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!((run.branch.as_str(), run.sha.as_str()), ("dev", SHA));
        let deleted = format!(
            r#"{{"ref":"refs/heads/dev","after":"{}","checkout_sha":null}}"#,
            "0".repeat(40)
        );
        assert!(matches!(
            gitlab_event("Push Hook", deleted.as_bytes()).unwrap(),
            Event::Ignored(_)
        ));
        let mr = format!(
            r#"{{"object_kind":"merge_request","object_attributes":{{"iid":3,"source_branch":"feat","target_branch":"main","action":"open","last_commit":{{"id":"{SHA}"}}}}}}"#
        );
        let Event::Run(run) = gitlab_event("Merge Request Hook", mr.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(run.git_ref, "refs/merge-requests/3/head");
        assert!(matches!(
            gitlab_event("Note Hook", b"{}").unwrap(),
            Event::Ignored(_)
        ));
    }
}
