//! A project and the trigger context of a run started from it.

use serde::{Deserialize, Serialize};
use valkyrie::message::{CheckoutSpec, TriggerSpec};
use valkyrie_pipeline::Pipeline;

use super::status::{self, NotifyConfig, StatusConfig};

/// Default pipeline file path in a project's repository.
pub const DEFAULT_PIPELINE_FILE: &str = ".valkyrie.yml";

/// Longest project name.
pub const MAX_NAME_BYTES: usize = 100;

/// A git repository whose pushes start runs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Unique name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Clone URL, without credentials.
    pub repo: String,
    /// Default branch (what `POST /api/projects/{name}/trigger` without a
    /// ref runs).
    pub branch: String,
    /// Path of the pipeline file in the repository.
    pub file: String,
    /// The webhook secret (GitHub's HMAC key, GitLab's token). Never
    /// shown; sealed in the store.
    #[serde(default)]
    pub webhook_secret: String,
    /// An HTTPS token for a private repository. Never shown; sealed in the
    /// store; given to the agent with each job that checks out.
    #[serde(default)]
    pub token: String,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Cron schedules that start runs of a branch.
    #[serde(default)]
    pub schedules: Vec<super::Schedule>,
    /// Commit statuses posted to the forge when a run starts and ends.
    #[serde(default)]
    pub status: Option<StatusConfig>,
    /// The generic webhook sent when a run ends.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
}

// Hand-written so that the secrets never reach a log line.
impl std::fmt::Debug for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Project")
            .field("name", &self.name)
            .field("repo", &self.repo)
            .field("branch", &self.branch)
            .field("file", &self.file)
            .field("webhook_secret", &!self.webhook_secret.is_empty())
            .field("token", &!self.token.is_empty())
            .field("schedules", &self.schedules)
            .field("status", &self.status)
            .field("notify", &self.notify)
            .finish()
    }
}

/// Why a project was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckProjectError {
    /// A field is not acceptable; says which and why.
    #[error("{0}")]
    Invalid(String),
}

impl Project {
    /// A project as a caller asks for it (REST or `vk projects add`): an
    /// empty `branch` or `file` means `main` or [`DEFAULT_PIPELINE_FILE`];
    /// no schedules, statuses or run webhook yet. Not yet [checked](Self::check).
    pub fn new(
        name: String,
        repo: String,
        branch: String,
        file: String,
        webhook_secret: String,
        token: String,
    ) -> Self {
        let or = |value: String, default: &str| {
            if value.is_empty() {
                default.to_owned()
            } else {
                value
            }
        };
        Self {
            name,
            repo,
            branch: or(branch, "main"),
            file: or(file, DEFAULT_PIPELINE_FILE),
            webhook_secret,
            token,
            created_at_ms: 0,
            schedules: Vec::new(),
            status: None,
            notify: None,
        }
    }

    /// What clients see (never the secrets).
    pub fn info(&self) -> valkyrie::message::ProjectInfo {
        valkyrie::message::ProjectInfo {
            name: self.name.clone(),
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            file: self.file.clone(),
            has_webhook_secret: !self.webhook_secret.is_empty(),
            has_token: !self.token.is_empty(),
            created_at_ms: self.created_at_ms,
        }
    }

    /// Checks what a caller gave: a name usable in a URL path, a
    /// repository URL without credentials, a relative file path.
    pub fn check(&self) -> Result<(), CheckProjectError> {
        let bad = |m: String| Err(CheckProjectError::Invalid(m));
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_BYTES
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || self.name.starts_with('.')
        {
            return bad(format!(
                "project name `{}` is not valid: use 1 to {MAX_NAME_BYTES} letters, digits, `-`, `_` or `.`, not starting with `.`",
                self.name
            ));
        }
        if self.repo.is_empty() || self.repo.starts_with('-') || self.repo.chars().any(char::is_control) {
            return bad(format!("repository URL `{}` is not valid", self.repo));
        }
        if let Some((_, rest)) = self.repo.split_once("://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.contains('@') && !self.repo.starts_with("ssh://") {
                return bad(
                    "the repository URL holds credentials; give the URL without them and the token with `token`"
                        .into(),
                );
            }
        }
        if self.branch.is_empty() || self.branch.starts_with('-') || self.branch.contains("..") {
            return bad(format!("branch `{}` is not valid", self.branch));
        }
        if self.file.is_empty()
            || self.file.starts_with('/')
            || self.file.starts_with('-')
            || self.file.split('/').any(|p| p == "..")
            || self.file.contains(':')
        {
            return bad(format!(
                "pipeline file `{}` is not valid: give a path relative to the repository's root",
                self.file
            ));
        }
        if let Some(config) = &self.status {
            status::check_url("status.api_url", &config.api_url).map_err(CheckProjectError::Invalid)?;
            status::check_repository(config.forge, &config.repository).map_err(CheckProjectError::Invalid)?;
            if config.token.is_empty() && self.token.is_empty() {
                return bad(
                    "`status` needs a token to post commit statuses: give `status.token`, or the project's `token`"
                        .into(),
                );
            }
        }
        if let Some(notify) = &self.notify {
            status::check_url("notify_url", &notify.url).map_err(CheckProjectError::Invalid)?;
        }
        Ok(())
    }

    /// Whether its runs are reported outside Valkyrie (commit statuses, the
    /// generic webhook).
    pub fn reports_runs(&self) -> bool {
        self.status.is_some() || self.notify.is_some()
    }
}

/// What started a run from a repository: stored with the run, and given
/// to each of its jobs as variables and a commit to check out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The project.
    pub project: String,
    /// Its clone URL.
    pub repository: String,
    /// `push`, `pull_request`, `merge_request`, `tag`, `api`.
    pub event: String,
    /// The full ref (`refs/heads/main`, `refs/tags/v1`, `refs/pull/7/head`).
    pub git_ref: String,
    /// The commit.
    pub sha: String,
    /// The branch (a pull request's source branch), or empty.
    pub branch: String,
    /// The tag, or empty.
    pub tag: String,
    /// The pull or merge request number.
    pub pr_number: Option<u64>,
    /// Variables given with the trigger (`vk run --var`, the REST trigger).
    pub variables: Vec<(String, String)>,
    /// Commits of history the agents fetch (0: all); 1 by default.
    pub depth: u32,
    /// The forge's delivery id, if a webhook started it.
    #[serde(default)]
    pub delivery: String,
}

/// Variable names reserved for the trigger context.
pub const RESERVED_PREFIX: &str = "VALKYRIE_";

impl Trigger {
    /// What starts a run without a repository (`vk run`, a stored
    /// pipeline's trigger): the event and the variables given with it.
    pub fn plain(event: &str, variables: Vec<(String, String)>) -> Self {
        Self {
            event: event.to_owned(),
            variables,
            ..Self::default()
        }
    }

    /// The variables every job of run `run_id` of `pipeline` gets.
    pub fn variables(&self, run_id: u64, pipeline: &str) -> Vec<(String, String)> {
        let mut vars = vec![
            ("VALKYRIE_COMMIT_SHA".to_owned(), self.sha.clone()),
            ("VALKYRIE_REF".to_owned(), self.git_ref.clone()),
            ("VALKYRIE_BRANCH".to_owned(), self.branch.clone()),
            ("VALKYRIE_TAG".to_owned(), self.tag.clone()),
            ("VALKYRIE_EVENT".to_owned(), self.event.clone()),
            (
                "VALKYRIE_PR_NUMBER".to_owned(),
                self.pr_number.map(|n| n.to_string()).unwrap_or_default(),
            ),
            ("VALKYRIE_REPOSITORY".to_owned(), self.repository.clone()),
            ("VALKYRIE_PROJECT".to_owned(), self.project.clone()),
            ("VALKYRIE_RUN_ID".to_owned(), run_id.to_string()),
            ("VALKYRIE_PIPELINE".to_owned(), pipeline.to_owned()),
        ];
        vars.extend(
            self.variables
                .iter()
                .filter(|(name, _)| !name.starts_with(RESERVED_PREFIX))
                .cloned(),
        );
        vars
    }

    /// Gives every job of `pipeline` (run `run_id`) the trigger: its
    /// variables and, unless the job says `checkout: false`, the commit to
    /// check out (without the token, which the core adds when it releases
    /// the job, so that it is stored only with the project and the job).
    ///
    /// The trigger's own variables win over the pipeline file's `env`
    /// (pipeline, defaults, stage, job, matrix), as GitLab's pipeline
    /// variables do: that `env` loses the names they set. A step's `env`
    /// and the secrets still override them.
    pub fn apply(&self, run_id: u64, pipeline: &mut Pipeline) {
        let variables = self.variables(run_id, &pipeline.name);
        for job in &mut pipeline.jobs {
            job.spec
                .env
                .retain(|(name, _)| !self.variables.iter().any(|(n, _)| n == name));
            let checkout =
                (job.checkout && !self.repository.is_empty() && !self.sha.is_empty()).then(|| CheckoutSpec {
                    repository: self.repository.clone(),
                    sha: self.sha.clone(),
                    git_ref: self.git_ref.clone(),
                    depth: job.checkout_depth.unwrap_or(self.depth),
                    token: String::new(),
                });
            job.spec.trigger = Some(Box::new(TriggerSpec {
                variables: variables.clone(),
                checkout,
            }));
        }
    }
}

/// Checks variables given with a trigger: names of letters, digits and
/// `_` not starting with a digit nor `VALKYRIE_`; at most 100, values at
/// most 64 KiB in all.
pub fn check_variables(variables: &[(String, String)]) -> Result<(), String> {
    const MAX_VARIABLES: usize = 100;
    const MAX_BYTES: usize = 64 << 10;
    if variables.len() > MAX_VARIABLES {
        return Err(format!(
            "{} variables, over the limit of {MAX_VARIABLES}",
            variables.len()
        ));
    }
    let bytes: usize = variables.iter().map(|(n, v)| n.len() + v.len()).sum();
    if bytes > MAX_BYTES {
        return Err(format!(
            "the variables take {bytes} bytes, over the limit of {MAX_BYTES}"
        ));
    }
    for (name, _) in variables {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "variable name `{name}` is not valid: use letters, digits and `_`, not starting with a digit"
            ));
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "variable `{name}` is reserved: names starting with {RESERVED_PREFIX} are set by the server"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        Project {
            name: "app".into(),
            repo: "https://git.example/ci/app.git".into(),
            branch: "main".into(),
            file: DEFAULT_PIPELINE_FILE.into(),
            webhook_secret: "hook-secret".into(),
            token: "forge-token".into(),
            created_at_ms: 0,
            schedules: Vec::new(),
            status: None,
            notify: None,
        }
    }

    #[test]
    fn projects_are_checked_and_their_secrets_never_printed() {
        assert!(project().check().is_ok());
        let shown = format!("{:?}", project());
        assert!(
            !shown.contains("hook-secret") && !shown.contains("forge-token"),
            "{shown}"
        );
        for (name, repo, file) in [
            ("a/b", "https://x/y.git", ".valkyrie.yml"),
            ("", "https://x/y.git", ".valkyrie.yml"),
            ("app", "https://user:pw@x/y.git", ".valkyrie.yml"),
            ("app", "-uhelp", ".valkyrie.yml"),
            ("app", "https://x/y.git", "../etc/passwd"),
            ("app", "https://x/y.git", "/abs"),
        ] {
            let p = Project {
                name: name.into(),
                repo: repo.into(),
                file: file.into(),
                ..project()
            };
            assert!(p.check().is_err(), "{name} {repo} {file}");
        }
    }

    #[test]
    fn every_job_gets_the_trigger_and_checkout_false_opts_out() {
        let yaml =
            "name: ci\njobs:\n  build:\n    steps: [make]\n  lint:\n    checkout: false\n    steps: [lint]\n";
        let mut pipeline = valkyrie_pipeline::parse("p.yml", yaml).unwrap();
        let trigger = Trigger {
            project: "app".into(),
            repository: "git://h/app".into(),
            event: "push".into(),
            git_ref: "refs/heads/main".into(),
            sha: "a".repeat(40),
            branch: "main".into(),
            variables: vec![("DEPLOY".into(), "1".into()), ("VALKYRIE_X".into(), "no".into())],
            depth: 1,
            ..Trigger::default()
        };
        trigger.apply(9, &mut pipeline);
        let build = pipeline.jobs[0].spec.trigger.as_ref().unwrap();
        let checkout = build.checkout.as_ref().unwrap();
        assert_eq!(checkout.sha, "a".repeat(40));
        assert_eq!(checkout.git_ref, "refs/heads/main");
        let var = |name: &str| {
            build
                .variables
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(var("VALKYRIE_BRANCH"), Some("main"));
        assert_eq!(var("VALKYRIE_RUN_ID"), Some("9"));
        assert_eq!(var("VALKYRIE_PIPELINE"), Some("ci"));
        assert_eq!(var("VALKYRIE_TAG"), Some(""));
        assert_eq!(var("DEPLOY"), Some("1"));
        assert_eq!(var("VALKYRIE_X"), None);
        assert!(pipeline.jobs[1].spec.trigger.as_ref().unwrap().checkout.is_none());
    }

    #[test]
    fn run_variables_override_the_files_env_at_every_level() {
        let yaml = "env: {DEPLOY: \"0\", KEEP: a}\njobs:\n  j:\n    env: {TARGET: job}\n    matrix:\n      DEPLOY: [m]\n    steps: [x]\n";
        let mut pipeline = valkyrie_pipeline::parse("p.yml", yaml).unwrap();
        let vars = vec![("DEPLOY".into(), "1".into()), ("TARGET".into(), "prod".into())];
        Trigger::plain("run", vars).apply(3, &mut pipeline);
        let spec = &pipeline.jobs[0].spec;
        assert_eq!(spec.env, [("KEEP".to_owned(), "a".to_owned())], "{:?}", spec.env);
        let trigger = spec.trigger.as_ref().unwrap();
        assert!(trigger.variables.contains(&("DEPLOY".into(), "1".into())));
        assert!(trigger
            .variables
            .contains(&("VALKYRIE_EVENT".into(), "run".into())));
        assert!(trigger.checkout.is_none(), "no repository, nothing to check out");
    }

    #[test]
    fn trigger_variables_are_checked() {
        assert!(check_variables(&[("A_1".into(), "x".into())]).is_ok());
        assert!(check_variables(&[("1A".into(), "x".into())]).is_err());
        assert!(check_variables(&[("A-B".into(), "x".into())]).is_err());
        assert!(check_variables(&[("VALKYRIE_BRANCH".into(), "x".into())])
            .unwrap_err()
            .contains("reserved"));
    }
}
