//! Hints for keys that users of GitHub Actions and GitLab CI write out of
//! habit. Looked up before the edit-distance suggestion, which would
//! otherwise offer a key that merely looks alike (`strategy` is not
//! `stage`, `services` is not `secrets`).

/// Where an unknown key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Pipeline,
    Job,
    Step,
}

/// The hint for a well-known key at `level`, if there is one.
pub(crate) fn well_known(level: Level, key: &str) -> Option<String> {
    let hint: &str = match (level, key) {
        // Pipeline level.
        (Level::Pipeline, "on") => {
            "Valkyrie's `triggers:` lists triggers (informational); a run starts when the pipeline is submitted or triggered through the API"
        }
        (Level::Pipeline, "variables") => "use `env:` (GitLab `variables`)",
        (Level::Pipeline, "default") => "use `defaults:` (shell, env, timeout, tags, retry for every job)",
        (Level::Pipeline, "run-name") => "use `name:`",
        (Level::Pipeline, "include") => "Valkyrie does not include other files yet; put the jobs in this file",
        (Level::Pipeline, "concurrency" | "permissions") => "Valkyrie has no `concurrency` or `permissions` yet",
        (Level::Pipeline, "cache") => "put `cache:` in `defaults:` (for every job) or in a job",
        (Level::Pipeline, "before_script" | "after_script") => {
            "GitLab's global keywords have no Valkyrie equivalent at pipeline level; shared settings go in `defaults:`"
        }
        // Job level.
        (Level::Job, "runs-on") => "use `tags:`: a runner must have every tag listed",
        (Level::Job, "strategy") => {
            "Valkyrie has no `strategy`: put `matrix:` (with its `include` and `exclude`) directly in the job, and `fail_fast:` next to it; `max-parallel` is not supported yet"
        }
        (Level::Job, "continue-on-error") => {
            "use `allow_failure: true` on the job (or `continue_on_error: true` on a step)"
        }
        (Level::Job, "timeout-minutes") => "use `timeout:` with a unit, e.g. `timeout: 30m`",
        (Level::Job, "script") => "use `steps:`, a list of commands (`- make`) or of `- run: ...` mappings (GitLab `script`)",
        (Level::Job, "before_script" | "after_script") => {
            "put the commands in `steps:` (first or last); for cleanup that must run after a failure, use a job with `if: always`"
        }
        (Level::Job, "variables") => "use `env:` (GitLab `variables`)",
        (Level::Job, "only" | "except" | "rules") => {
            "use `if:` with an expression, e.g. `if: $VALKYRIE_BRANCH == \"main\"` (GitLab `rules: - if:`), and `when: manual`; rules by changed files are not supported yet"
        }
        (Level::Job, "container") => {
            "use `image:` (`image: {name, entrypoint}` for the long form) and `services:`"
        }
        (Level::Job, "dependencies") => "use `needs:` (the jobs this one waits for)",
        (Level::Job, "parallel") => "use `matrix:` (one job per combination of values)",
        (Level::Job, "extends") => "Valkyrie has no `extends`; put what jobs share in `defaults:`",
        (Level::Job, "environment" | "outputs" | "permissions" | "concurrency") => {
            "not supported yet"
        }
        (Level::Job, "uses" | "with") => "Valkyrie jobs have no reusable actions or workflows; write the commands in `steps:`",
        (Level::Job, "runs_on") => "use `tags:`",
        (Level::Job, "defaults") => "`defaults:` is a pipeline-level key: move it to the top of the file",
        // Step level.
        (Level::Step, "uses" | "with") => "Valkyrie steps have no actions; write the command in `run:`",
        (Level::Step, "script") => "use `run:`",
        (Level::Step, "shell") => "the shell is set per job (`shell:`) or for every job in `defaults:`",
        (Level::Step, "id") => "steps have no ids; name them with `name:`",
        (Level::Step, "timeout-minutes" | "timeout") => "steps have no timeout of their own; set the job's `timeout:`",
        _ => {
            // `continue-on-error`, `working-directory`, `allow-failure`...:
            // the same key with underscores.
            if key.contains('-') {
                let snake = key.replace('-', "_");
                let known: &[&str] = match level {
                    Level::Pipeline => &["defaults", "fail_fast"],
                    Level::Job => &["allow_failure", "fail_fast"],
                    Level::Step => &["continue_on_error", "working_directory"],
                };
                if known.contains(&snake.as_str()) {
                    return Some(format!("use `{snake}` (Valkyrie's keys use underscores)"));
                }
            }
            return None;
        }
    };
    Some(hint.to_owned())
}
