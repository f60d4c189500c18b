//! Parsing and validation: walks the YAML node tree (which keeps every
//! node's position), collects every problem instead of stopping at the
//! first, then expands matrices and resolves dependencies.

use std::collections::HashMap;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use super::error::{did_you_mean, PipelineError, PipelineErrors};
use super::model::{Condition, Pipeline, PipelineJob};
use crate::message::{JobSpec, RetryOn, RetryPolicy, StepCommand, StepSpec};

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "triggers",
    "env",
    "secrets",
    "stages",
    "timeout",
    "jobs",
];
const STAGE_KEYS: &[&str] = &["name", "env"];
const JOB_KEYS: &[&str] = &[
    "stage",
    "needs",
    "steps",
    "tags",
    "env",
    "secrets",
    "timeout",
    "retry",
    "allow_failure",
    "matrix",
    "if",
    "priority",
    "project",
    "shell",
];
const STEP_KEYS: &[&str] = &["name", "run", "env", "working_directory", "continue_on_error"];
const RETRY_KEYS: &[&str] = &["max", "when"];

struct Ctx<'a> {
    file: &'a str,
    errors: Vec<PipelineError>,
}

fn position(span: &Span) -> (usize, usize) {
    span.start().map_or((1, 1), |m| (m.line(), m.column()))
}

impl Ctx<'_> {
    fn error(&mut self, span: &Span, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = position(span);
        self.errors.push(PipelineError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
            hint,
        });
    }

    fn check_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = did_you_mean(key.as_str(), allowed.iter().copied())
                    .or_else(|| Some(format!("{what} accepts: {}", allowed.join(", "))));
                self.error(
                    key.span(),
                    format!("unknown key `{}` in {what}", key.as_str()),
                    hint,
                );
            }
        }
    }

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        let map = node.as_mapping();
        if map.is_none() {
            self.error(node.span(), format!("{what} must be a mapping"), None);
        }
        map
    }

    fn scalar<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedScalarNode> {
        let s = node.as_scalar();
        if s.is_none() {
            self.error(
                node.span(),
                format!("{what} must be a single value, not a list or mapping"),
                None,
            );
        }
        s
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        self.scalar(node, what).map(|s| s.as_str().to_owned())
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let s = self.scalar(node, what)?;
        match s.as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            other => {
                self.error(
                    s.span(),
                    format!("{what} must be true or false, not `{other}`"),
                    None,
                );
                None
            }
        }
    }

    /// A list of strings; a single value is a list of one.
    fn strings(&mut self, node: &Node, what: &str) -> Vec<(String, Span)> {
        match node {
            Node::Scalar(s) if s.as_str().is_empty() => Vec::new(),
            Node::Scalar(s) => vec![(s.as_str().to_owned(), *s.span())],
            Node::Sequence(seq) => seq
                .iter()
                .filter_map(|item| {
                    self.scalar(item, what)
                        .map(|s| (s.as_str().to_owned(), *s.span()))
                })
                .collect(),
            Node::Mapping(m) => {
                self.error(m.span(), format!("{what} must be a list"), None);
                Vec::new()
            }
        }
    }

    fn env(&mut self, node: &Node, what: &str) -> Vec<(String, String)> {
        let Some(map) = self.mapping(node, what) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in map.iter() {
            let name = key.as_str();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.error(
                    key.span(),
                    format!("`{name}` is not a valid variable name in {what}"),
                    Some("use letters, digits and underscores".into()),
                );
                continue;
            }
            if let Some(v) = self.string(value, &format!("{what}.{name}")) {
                out.push((name.to_owned(), v));
            }
        }
        out
    }

    fn duration_ms(&mut self, node: &Node, what: &str) -> Option<u64> {
        let s = self.scalar(node, what)?;
        match humantime::parse_duration(s.as_str()) {
            Ok(d) if !d.is_zero() => Some(d.as_millis() as u64),
            _ => {
                self.error(
                    s.span(),
                    format!("bad duration `{}` for {what}", s.as_str()),
                    Some("use a number with a unit, e.g. 90s, 10m, 1h 30m".into()),
                );
                None
            }
        }
    }
}

/// A job as written, before matrix expansion.
struct RawJob {
    name: String,
    span: Span,
    stage: String,
    needs: Option<Vec<(String, Span)>>,
    condition: Condition,
    allow_failure: bool,
    matrix: Vec<(String, Vec<String>)>,
    spec: JobSpec,
}

/// Parses and validates a pipeline file. `file` names it in error messages.
pub fn parse(file: &str, text: &str) -> Result<Pipeline, PipelineErrors> {
    let mut cx = Ctx {
        file,
        errors: Vec::new(),
    };
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(node) => node,
        Err(err) => return Err(PipelineErrors(vec![load_error(file, err)])),
    };
    let Some(top) = cx.mapping(&root, "the pipeline") else {
        return Err(PipelineErrors(cx.errors));
    };
    cx.check_keys(top, TOP_KEYS, "the pipeline");

    let name = top
        .get_node("name")
        .and_then(|n| cx.string(n, "name"))
        .unwrap_or_else(|| "pipeline".into());
    let description = top
        .get_node("description")
        .and_then(|n| cx.string(n, "description"))
        .unwrap_or_default();
    if let Some(triggers) = top.get_node("triggers") {
        // Accepted for compatibility with the original design; runs start
        // when a pipeline is submitted or triggered through the API.
        let _ = cx.strings(triggers, "triggers");
    }
    let env = top.get_node("env").map(|n| cx.env(n, "env")).unwrap_or_default();
    let secrets = top
        .get_node("secrets")
        .map(|n| cx.env(n, "secrets"))
        .unwrap_or_default();
    let timeout_ms = top
        .get_node("timeout")
        .and_then(|n| cx.duration_ms(n, "timeout"))
        .unwrap_or(0);

    // Stages: names, or mappings with a name and an env.
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    if let Some(node) = top.get_node("stages") {
        match node.as_sequence() {
            Some(seq) => {
                for item in seq.iter() {
                    let stage = match item {
                        Node::Scalar(s) => Some((s.as_str().to_owned(), Vec::new())),
                        Node::Mapping(m) => {
                            cx.check_keys(m, STAGE_KEYS, "a stage");
                            let name = m.get_node("name").and_then(|n| cx.string(n, "stage name"));
                            if name.is_none() && m.get_node("name").is_none() {
                                cx.error(m.span(), "a stage mapping needs a `name`", None);
                            }
                            let env = m
                                .get_node("env")
                                .map(|n| cx.env(n, "stage env"))
                                .unwrap_or_default();
                            name.map(|n| (n, env))
                        }
                        Node::Sequence(s) => {
                            cx.error(s.span(), "a stage must be a name or a mapping", None);
                            None
                        }
                    };
                    if let Some((stage_name, env)) = stage {
                        if stages.iter().any(|(n, _)| *n == stage_name) {
                            cx.error(item.span(), format!("stage `{stage_name}` is listed twice"), None);
                        } else {
                            stages.push((stage_name, env));
                        }
                    }
                }
            }
            None => cx.error(node.span(), "stages must be a list of stage names", None),
        }
    }
    let declared_stages = !stages.is_empty();
    if !declared_stages {
        stages.push(("default".into(), Vec::new()));
    }

    let mut raw_jobs: Vec<RawJob> = Vec::new();
    match top.get_node("jobs") {
        None => cx.error(
            top.span(),
            "the pipeline has no `jobs`",
            Some("add `jobs:` with at least one job".into()),
        ),
        Some(node) => {
            if let Some(jobs) = cx.mapping(node, "jobs") {
                if jobs.is_empty() {
                    cx.error(
                        jobs.span(),
                        "`jobs` is empty",
                        Some("add at least one job".into()),
                    );
                }
                for (key, value) in jobs.iter() {
                    if let Some(job) = parse_job(&mut cx, key, value, &stages, declared_stages) {
                        raw_jobs.push(job);
                    }
                }
            }
        }
    }

    // Every job gets the pipeline's env and secrets under its own.
    for job in &mut raw_jobs {
        let stage_env = stages
            .iter()
            .find(|(n, _)| *n == job.stage)
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        job.spec.env = merge(&merge(&env, &stage_env), &job.spec.env);
        job.spec.secrets = merge(&secrets, &job.spec.secrets);
    }

    let stage_index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let names: Vec<String> = raw_jobs.iter().map(|j| j.name.clone()).collect();
    // Effective dependencies between written jobs (by index).
    let mut edges: Vec<Vec<usize>> = Vec::with_capacity(raw_jobs.len());
    for job in &raw_jobs {
        let deps = match &job.needs {
            Some(needs) => {
                let mut deps = Vec::new();
                for (need, span) in needs {
                    match names.iter().position(|n| n == need) {
                        Some(i) if names[i] == job.name => {
                            cx.error(span, format!("job `{}` needs itself", job.name), None)
                        }
                        Some(i) => deps.push(i),
                        None => {
                            let hint = did_you_mean(need, names.iter().map(String::as_str));
                            cx.error(
                                span,
                                format!("job `{}` needs `{need}`, which is not defined", job.name),
                                hint.or_else(|| Some(format!("defined jobs: {}", names.join(", ")))),
                            );
                        }
                    }
                }
                deps
            }
            None => {
                let mine = stage_index.get(job.stage.as_str()).copied().unwrap_or(0);
                raw_jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, other)| stage_index.get(other.stage.as_str()).copied().unwrap_or(0) < mine)
                    .map(|(i, _)| i)
                    .collect()
            }
        };
        edges.push(deps);
    }
    if let Some(cycle) = find_cycle(&edges) {
        let path: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
        let first = &raw_jobs[cycle[0]];
        cx.error(
            &first.span,
            format!("jobs depend on each other in a cycle: {}", path.join(" -> ")),
            Some(
                "remove one of these `needs` (a job without `needs` waits for every job of earlier stages)"
                    .into(),
            ),
        );
    }

    if !cx.errors.is_empty() {
        cx.errors.sort_by_key(|e| (e.line, e.column));
        return Err(PipelineErrors(cx.errors));
    }

    // Expand matrices, then resolve dependencies to expanded indices.
    let mut jobs = Vec::new();
    let mut expansions: Vec<Vec<usize>> = Vec::with_capacity(raw_jobs.len());
    for job in &raw_jobs {
        let mut mine = Vec::new();
        for combination in combinations(&job.matrix) {
            mine.push(jobs.len());
            jobs.push(expand(job, &combination));
        }
        expansions.push(mine);
    }
    for (raw_index, deps) in edges.iter().enumerate() {
        let resolved: Vec<usize> = deps.iter().flat_map(|&d| expansions[d].iter().copied()).collect();
        for &expanded in &expansions[raw_index] {
            jobs[expanded].depends_on = resolved.clone();
        }
    }
    Ok(Pipeline {
        name,
        description,
        stages: stages.into_iter().map(|(n, _)| n).collect(),
        timeout_ms,
        jobs,
    })
}

fn merge(base: &[(String, String)], over: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .cloned()
        .collect();
    out.extend(over.iter().cloned());
    out
}

fn load_error(file: &str, err: LoadError) -> PipelineError {
    let (marker, message) = match &err {
        LoadError::DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            format!(
                "`{}` is defined twice (first at line {})",
                inner.key.as_str(),
                inner.prev_key.span().start().map_or(0, |m| m.line())
            ),
        ),
        LoadError::TopLevelMustBeMapping(m) => (Some(*m), "the pipeline must be a mapping of keys".into()),
        LoadError::ScanError(m, e) => (Some(*m), format!("invalid YAML: {e}")),
        LoadError::UnexpectedAnchor(m) => (Some(*m), "YAML anchors and aliases are not supported".into()),
        LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".into()),
        LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain names".into()),
        other => (None, other.to_string()),
    };
    let (line, column) = marker.map_or((1, 1), |m| (m.line(), m.column()));
    let hint =
        matches!(err, LoadError::DuplicateKey(_)).then(|| "job and key names must be unique".to_owned());
    PipelineError {
        file: file.to_owned(),
        line,
        column,
        message,
        hint,
    }
}

fn parse_job(
    cx: &mut Ctx<'_>,
    key: &MarkedScalarNode,
    value: &Node,
    stages: &[(String, Vec<(String, String)>)],
    declared_stages: bool,
) -> Option<RawJob> {
    let name = key.as_str().to_owned();
    let what = format!("job `{name}`");
    let map = cx.mapping(value, &what)?;
    cx.check_keys(map, JOB_KEYS, &what);

    let stage = match map.get_node("stage").and_then(|n| cx.string(n, "stage")) {
        Some(stage) => {
            if declared_stages && !stages.iter().any(|(n, _)| *n == stage) {
                let span = *map.get_node("stage").map(Node::span).unwrap_or(key.span());
                let hint = did_you_mean(&stage, stages.iter().map(|(n, _)| n.as_str()))
                    .or_else(|| Some("add it to `stages:` or use a declared stage".into()));
                cx.error(
                    &span,
                    format!("{what} is in stage `{stage}`, which is not declared"),
                    hint,
                );
            } else if !declared_stages {
                let span = *map.get_node("stage").map(Node::span).unwrap_or(key.span());
                cx.error(
                    &span,
                    format!("{what} names stage `{stage}` but the pipeline declares no `stages`"),
                    None,
                );
            }
            stage
        }
        None => stages[0].0.clone(),
    };
    let needs = map.get_node("needs").map(|n| cx.strings(n, "needs"));
    let condition = match map.get_scalar("if") {
        None => {
            if let Some(n) = map.get_node("if") {
                cx.scalar(n, "if");
            }
            Condition::OnSuccess
        }
        Some(s) => match s.as_str().trim() {
            "on_success" | "success()" => Condition::OnSuccess,
            "on_failure" | "failure()" => Condition::OnFailure,
            "always" | "always()" => Condition::Always,
            other => {
                cx.error(
                    s.span(),
                    format!("{what} has an unknown `if` condition `{other}`"),
                    Some("use on_success, on_failure or always".into()),
                );
                Condition::OnSuccess
            }
        },
    };
    let allow_failure = map
        .get_node("allow_failure")
        .and_then(|n| cx.boolean(n, "allow_failure"))
        .unwrap_or(false);
    let tags = map
        .get_node("tags")
        .map(|n| cx.strings(n, "tags"))
        .unwrap_or_default();
    let env = map
        .get_node("env")
        .map(|n| cx.env(n, &format!("{what} env")))
        .unwrap_or_default();
    let secrets = map
        .get_node("secrets")
        .map(|n| cx.env(n, &format!("{what} secrets")))
        .unwrap_or_default();
    let timeout_ms = map
        .get_node("timeout")
        .and_then(|n| cx.duration_ms(n, &format!("{what} timeout")))
        .unwrap_or(0);
    let priority = match map.get_scalar("priority") {
        None => 0,
        Some(s) => s.as_str().parse::<u8>().unwrap_or_else(|_| {
            cx.error(
                s.span(),
                format!("{what} priority must be a whole number from 0 to 255"),
                None,
            );
            0
        }),
    };
    let project = map
        .get_node("project")
        .and_then(|n| cx.string(n, "project"))
        .unwrap_or_else(|| "default".into());
    let shell = map
        .get_node("shell")
        .and_then(|n| cx.string(n, "shell"))
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let retry = map
        .get_node("retry")
        .map(|n| parse_retry(cx, n, &what))
        .unwrap_or_default();

    let mut matrix = Vec::new();
    if let Some(node) = map.get_node("matrix") {
        if let Some(m) = cx.mapping(node, &format!("{what} matrix")) {
            for (k, v) in m.iter() {
                let values: Vec<String> = cx
                    .strings(v, "matrix values")
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                if values.is_empty() {
                    cx.error(
                        k.span(),
                        format!("matrix key `{}` has no values", k.as_str()),
                        None,
                    );
                }
                matrix.push((k.as_str().to_owned(), values));
            }
        }
    }

    let mut steps = Vec::new();
    match map.get_node("steps") {
        None => cx.error(
            key.span(),
            format!("{what} has no steps"),
            Some("add `steps:` with at least one `- run: ...`".into()),
        ),
        Some(Node::Sequence(seq)) if seq.is_empty() => cx.error(
            seq.span(),
            format!("{what} has no steps"),
            Some("add at least one `- run: ...`".into()),
        ),
        Some(Node::Sequence(seq)) => {
            for item in seq.iter() {
                if let Some(step) = parse_step(cx, item, &what) {
                    steps.push(step);
                }
            }
        }
        Some(other) => cx.error(other.span(), format!("{what} steps must be a list"), None),
    }

    let spec = JobSpec {
        name: name.clone(),
        project,
        priority,
        tags: tags.into_iter().map(|(t, _)| t).collect(),
        steps,
        env,
        secrets,
        timeout_ms,
        retry,
        shell,
    };
    Some(RawJob {
        name,
        span: *key.span(),
        stage,
        needs,
        condition,
        allow_failure,
        matrix,
        spec,
    })
}

fn parse_retry(cx: &mut Ctx<'_>, node: &Node, what: &str) -> RetryPolicy {
    let all = RetryOn(RetryOn::FAILED.0 | RetryOn::TIMED_OUT.0 | RetryOn::LOST.0);
    match node {
        Node::Scalar(s) => match s.as_str().parse::<u32>() {
            Ok(max) if max <= 10 => RetryPolicy {
                max_retries: max,
                on: all,
            },
            _ => {
                cx.error(
                    s.span(),
                    format!("{what} retry must be a count from 0 to 10"),
                    None,
                );
                RetryPolicy::default()
            }
        },
        Node::Mapping(m) => {
            cx.check_keys(m, RETRY_KEYS, &format!("{what} retry"));
            let max_retries = match m.get_scalar("max") {
                Some(s) => s
                    .as_str()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 10)
                    .unwrap_or_else(|| {
                        cx.error(
                            s.span(),
                            format!("{what} retry.max must be a count from 0 to 10"),
                            None,
                        );
                        0
                    }),
                None => 2,
            };
            let on = match m.get_node("when") {
                None => all,
                Some(n) => {
                    let mut bits = 0u8;
                    for (w, span) in cx.strings(n, "retry.when") {
                        bits |= match w.as_str() {
                            "failed" | "failure" => RetryOn::FAILED.0,
                            "timed_out" | "timeout" => RetryOn::TIMED_OUT.0,
                            "lost" | "runner_lost" => RetryOn::LOST.0,
                            other => {
                                cx.error(
                                    &span,
                                    format!("unknown retry condition `{other}`"),
                                    Some("use failed, timed_out or lost".into()),
                                );
                                0
                            }
                        };
                    }
                    RetryOn(bits)
                }
            };
            RetryPolicy { max_retries, on }
        }
        Node::Sequence(s) => {
            cx.error(
                s.span(),
                format!("{what} retry must be a count or a mapping"),
                None,
            );
            RetryPolicy::default()
        }
    }
}

fn parse_step(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<StepSpec> {
    match node {
        Node::Scalar(s) => Some(StepSpec::shell(s.as_str())),
        Node::Mapping(m) => {
            cx.check_keys(m, STEP_KEYS, &format!("a step of {what}"));
            let run = match m.get_node("run") {
                Some(n) => cx.string(n, "run")?,
                None => {
                    cx.error(
                        m.span(),
                        format!("a step of {what} has no `run`"),
                        Some("add `run: <command>`".into()),
                    );
                    return None;
                }
            };
            if run.trim().is_empty() {
                cx.error(m.span(), format!("a step of {what} has an empty `run`"), None);
            }
            let name = m.get_node("name").and_then(|n| cx.string(n, "step name"));
            let mut step = StepSpec::shell(run);
            if let Some(name) = name {
                step.name = name;
            }
            step.env = m
                .get_node("env")
                .map(|n| cx.env(n, "step env"))
                .unwrap_or_default();
            step.working_directory = m
                .get_node("working_directory")
                .and_then(|n| cx.string(n, "working_directory"));
            step.continue_on_error = m
                .get_node("continue_on_error")
                .and_then(|n| cx.boolean(n, "continue_on_error"))
                .unwrap_or(false);
            Some(step)
        }
        Node::Sequence(s) => {
            cx.error(
                s.span(),
                format!("a step of {what} must be a command or a mapping"),
                None,
            );
            None
        }
    }
}

/// Every combination of matrix values, in key order; one empty combination
/// when there is no matrix.
fn combinations(matrix: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in matrix {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

fn substitute(text: &str, combination: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (k, v) in combination {
        out = out
            .replace(&format!("${{{{ matrix.{k} }}}}"), v)
            .replace(&format!("${{{{matrix.{k}}}}}"), v);
    }
    out
}

fn expand(job: &RawJob, combination: &[(String, String)]) -> PipelineJob {
    let mut spec = job.spec.clone();
    let mut name = job.name.clone();
    if !combination.is_empty() {
        let label: Vec<String> = combination.iter().map(|(k, v)| format!("{k}={v}")).collect();
        name = format!("{} [{}]", job.name, label.join(", "));
        spec.env = merge(&spec.env, combination);
        for step in &mut spec.steps {
            step.name = substitute(&step.name, combination);
            if let StepCommand::Shell(line) = &mut step.command {
                *line = substitute(line, combination);
            }
        }
        spec.tags = spec.tags.iter().map(|t| substitute(t, combination)).collect();
    }
    spec.name = name.clone();
    PipelineJob {
        name,
        stage: job.stage.clone(),
        depends_on: Vec::new(),
        condition: job.condition,
        allow_failure: job.allow_failure,
        spec,
    }
}

/// A cycle in the dependency graph, as a path that starts and ends on the
/// same job.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[n] = Mark::Active;
        stack.push(n);
        for &m in &edges[n] {
            match marks[m] {
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == m).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, edges, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; edges.len()];
    let mut stack = Vec::new();
    (0..edges.len()).find_map(|n| {
        if marks[n] == Mark::New {
            visit(n, edges, &mut marks, &mut stack)
        } else {
            None
        }
    })
}
