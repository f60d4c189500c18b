//! Parsing and validation: walks the YAML node tree (which keeps every
//! node's position), collects every problem instead of stopping at the
//! first, then expands matrices and resolves dependencies.

use std::collections::{HashMap, HashSet};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use super::error::{did_you_mean, PipelineError, PipelineErrors};
use super::graph;
use super::hints::{self, Level};
use super::limits::{self, *};
use super::model::{Condition, Pipeline, PipelineJob};
use valkyrie::message::{JobSpec, RetryOn, RetryPolicy, StepCommand, StepCondition, StepSpec};

mod matrix;
use matrix::Matrix;

mod container;
use container::ContainerKeys;

mod artifacts;
mod cache;

mod rules;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "triggers",
    "env",
    "secrets",
    "stages",
    "timeout",
    "defaults",
    "fail_fast",
    "jobs",
    "image",
    "services",
    "pull_policy",
    "workflow",
];
const WORKFLOW_KEYS: &[&str] = &["if"];
const DEFAULTS_KEYS: &[&str] = &["shell", "env", "timeout", "tags", "retry", "cache"];
const STAGE_KEYS: &[&str] = &["name", "env"];
const CHECKOUT_KEYS: &[&str] = &["depth"];
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
    "image",
    "services",
    "pull_policy",
    "resources",
    "name",
    "fail_fast",
    "checkout",
    "artifacts",
    "dependencies",
    "cache",
    "when",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "run",
    "env",
    "working_directory",
    "continue_on_error",
    "if",
];
const RETRY_KEYS: &[&str] = &["max", "when"];

struct Ctx<'a> {
    file: &'a str,
    /// The file's text, to place errors inside a scalar.
    text: &'a str,
    errors: Vec<PipelineError>,
    /// Errors found beyond [`MAX_ERRORS`], counted, not kept.
    suppressed: usize,
}

fn position(span: &Span) -> (usize, usize) {
    span.start().map_or((1, 1), |m| (m.line(), m.column()))
}

impl Ctx<'_> {
    fn error(&mut self, span: &Span, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = position(span);
        self.error_at(line, column, message, hint);
    }

    fn error_at(&mut self, line: usize, column: usize, message: impl Into<String>, hint: Option<String>) {
        if self.errors.len() >= MAX_ERRORS {
            self.suppressed += 1;
            return;
        }
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
                // Well-known keys of other CI systems first: edit distance
                // would suggest a key that merely looks alike.
                let level = if std::ptr::eq(allowed, TOP_KEYS) {
                    Some(Level::Pipeline)
                } else if std::ptr::eq(allowed, JOB_KEYS) {
                    Some(Level::Job)
                } else if std::ptr::eq(allowed, STEP_KEYS) {
                    Some(Level::Step)
                } else {
                    None
                };
                let hint = level
                    .and_then(|level| hints::well_known(level, key.as_str()))
                    .or_else(|| (key.as_str() == "<<").then(limits::anchors_hint))
                    .or_else(|| did_you_mean(key.as_str(), allowed.iter().copied()))
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

    /// Whether `text` fits in `max` bytes; an error at `span` if not.
    fn fits(&mut self, span: &Span, text: &str, max: usize, what: &str) -> bool {
        if text.len() <= max {
            return true;
        }
        self.error(
            span,
            format!(
                "{what} is {} bytes long, over the limit of {max} bytes",
                text.len()
            ),
            None,
        );
        false
    }

    /// Whether a collection of `count` items fits in `max`; an error at
    /// `span` if not (the items are then not looked at).
    fn few_enough(&mut self, span: &Span, count: usize, max: usize, what: &str) -> bool {
        if count <= max {
            return true;
        }
        self.error(
            span,
            format!("{what} has {count} entries, over the limit of {max}"),
            None,
        );
        false
    }

    /// A name: a single value of at most [`MAX_NAME_BYTES`].
    fn name(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.scalar(node, what)?;
        self.fits(s.span(), s.as_str(), MAX_NAME_BYTES, what)
            .then(|| s.as_str().to_owned())
    }

    /// A list of names, at most `max` of them.
    fn names(&mut self, node: &Node, what: &str, max: usize) -> Vec<(String, Span)> {
        if let Node::Sequence(seq) = node {
            if !self.few_enough(seq.span(), seq.len(), max, what) {
                return Vec::new();
            }
        }
        let all = self.strings(node, what);
        all.into_iter()
            .filter(|(s, span)| self.fits(span, s, MAX_NAME_BYTES, what))
            .collect()
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
        if !self.few_enough(map.span(), map.len(), MAX_ENV_VARS, what) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (key, value) in map.iter() {
            let name = key.as_str();
            if !self.fits(
                key.span(),
                name,
                MAX_NAME_BYTES,
                &format!("a variable name in {what}"),
            ) {
                continue;
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                self.error(
                    key.span(),
                    format!("`{name}` is not a valid variable name in {what}"),
                    Some("use letters, digits and underscores".into()),
                );
                continue;
            }
            let value_what = format!("{what}.{name}");
            if let Some(v) = self.string(value, &value_what) {
                if self.fits(value.span(), &v, MAX_ENV_VALUE_BYTES, &value_what) {
                    out.push((name.to_owned(), v));
                }
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
    stage_index: usize,
    needs: Option<Vec<(String, Span)>>,
    /// `dependencies:`: the jobs whose artifacts it downloads (all those it
    /// waits for when absent).
    dependencies: Option<Vec<(String, Span)>>,
    condition: Condition,
    /// `if:` as an expression.
    rule: Option<crate::Expr>,
    /// `when: manual`.
    manual: bool,
    allow_failure: bool,
    matrix: Matrix,
    /// How many jobs it expands into.
    legs: usize,
    /// `name:`, the display name (with `${{ matrix.key }}` substituted per
    /// leg), and where it was written.
    display_name: Option<(String, Span)>,
    /// A failing leg of its matrix cancels the others.
    fail_fast: bool,
    /// `checkout:` (default true): a triggered run checks out its commit.
    checkout: bool,
    /// `checkout: {depth: N}`.
    checkout_depth: Option<u32>,
    spec: JobSpec,
}

/// Parses and validates a pipeline file. `file` names it in error messages.
pub fn parse(file: &str, text: &str) -> Result<Pipeline, PipelineErrors> {
    // Size, depth and node count first: the tree loader below recurses
    // once per nesting level and allocates per node.
    limits::check_document(file, text).map_err(|e| PipelineErrors(vec![e]))?;
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
        suppressed: 0,
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
        .and_then(|n| cx.name(n, "name"))
        .unwrap_or_else(|| "pipeline".into());
    let description = top
        .get_node("description")
        .and_then(|n| cx.string(n, "description"))
        .unwrap_or_default();
    if let Some(triggers) = top.get_node("triggers") {
        // Accepted for compatibility with the original design; runs start
        // when a pipeline is submitted or triggered through the API.
        let _ = cx.names(triggers, "triggers", MAX_TAGS);
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
    let fail_fast = top
        .get_node("fail_fast")
        .and_then(|n| cx.boolean(n, "fail_fast"))
        .unwrap_or(false);
    let workflow_rule = top.get_node("workflow").and_then(|n| rules::workflow(&mut cx, n));

    let mut defaults = match top.get_node("defaults") {
        Some(node) => parse_defaults(&mut cx, node),
        None => Defaults::default(),
    };
    defaults.container = ContainerKeys::parse(&mut cx, top, "the pipeline", false);

    // Stages: names, or mappings with a name and an env.
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut stage_index: HashMap<String, usize> = HashMap::new();
    if let Some(node) = top.get_node("stages") {
        match node.as_sequence() {
            Some(seq) if cx.few_enough(seq.span(), seq.len(), MAX_STAGES, "stages") => {
                for item in seq.iter() {
                    let stage = match item {
                        Node::Scalar(_) => cx.name(item, "stage name").map(|n| (n, Vec::new())),
                        Node::Mapping(m) => {
                            cx.check_keys(m, STAGE_KEYS, "a stage");
                            let name = m.get_node("name").and_then(|n| cx.name(n, "stage name"));
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
                        if stage_index.contains_key(&stage_name) {
                            cx.error(item.span(), format!("stage `{stage_name}` is listed twice"), None);
                        } else {
                            stage_index.insert(stage_name.clone(), stages.len());
                            stages.push((stage_name, env));
                        }
                    }
                }
            }
            Some(_) => {}
            None => cx.error(node.span(), "stages must be a list of stage names", None),
        }
    }
    let declared_stages = !stages.is_empty();
    if !declared_stages {
        stage_index.insert("default".into(), 0);
        stages.push(("default".into(), Vec::new()));
    }
    let stage_names = Stages {
        list: &stages,
        index: &stage_index,
        declared: declared_stages,
    };

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
                // Refused before any job is looked at.
                if cx.few_enough(jobs.span(), jobs.len(), MAX_JOBS, "`jobs`") {
                    for (key, value) in jobs.iter() {
                        if let Some(job) = parse_job(&mut cx, key, value, &stage_names, &defaults) {
                            raw_jobs.push(job);
                        }
                    }
                }
            }
        }
    }

    // Every job gets the pipeline's env and secrets under its own.
    for job in &mut raw_jobs {
        let stage_env = &stages[job.stage_index].1;
        job.spec.env = merge(&merge(&merge(&env, &defaults.env), stage_env), &job.spec.env);
        job.spec.secrets = merge(&secrets, &job.spec.secrets);
    }

    // `needs` by name, in one pass over a name index.
    let index: HashMap<&str, usize> = raw_jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut needs: Vec<Option<Vec<usize>>> = Vec::with_capacity(raw_jobs.len());
    for job in &raw_jobs {
        let Some(named) = &job.needs else {
            needs.push(None);
            continue;
        };
        let mut deps = Vec::with_capacity(named.len());
        let mut seen = HashSet::with_capacity(named.len());
        for (need, span) in named {
            match index.get(need.as_str()) {
                Some(_) if *need == job.name => {
                    cx.error(span, format!("job `{}` needs itself", job.name), None)
                }
                Some(&i) => {
                    if seen.insert(i) {
                        deps.push(i);
                    }
                }
                None => {
                    // Suggestions compare with every name: only for the
                    // errors that are kept, so at most MAX_ERRORS × jobs.
                    let hint = if cx.errors.len() < MAX_ERRORS {
                        did_you_mean(need, raw_jobs.iter().map(|j| j.name.as_str()))
                            .or_else(|| Some(defined_jobs(&raw_jobs)))
                    } else {
                        None
                    };
                    cx.error(
                        span,
                        format!("job `{}` needs `{need}`, which is not defined", job.name),
                        hint,
                    );
                }
            }
        }
        needs.push(Some(deps));
    }
    let deps: Vec<graph::Deps<'_>> = raw_jobs
        .iter()
        .zip(&needs)
        .map(|(job, needs)| graph::Deps {
            stage: job.stage_index,
            needs: needs.as_deref(),
        })
        .collect();
    if let Err(cycle) = graph::order(&deps, stages.len()) {
        let path: Vec<&str> = cycle.iter().map(|&i| raw_jobs[i].name.as_str()).collect();
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

    // Matrix sizes and the expanded pipeline's size, before expanding.
    let mut expanded_jobs = 0usize;
    let mut expanded_bytes = 0usize;
    for job in &raw_jobs {
        let legs = job.legs;
        expanded_jobs = expanded_jobs.saturating_add(legs);
        expanded_bytes = expanded_bytes.saturating_add(legs.saturating_mul(spec_bytes(&job.spec)));
    }
    if let Some(jobs) = top.get_node("jobs") {
        if expanded_jobs > MAX_JOBS {
            cx.error(
                jobs.span(),
                format!("the pipeline expands into {expanded_jobs} jobs, over the limit of {MAX_JOBS}"),
                Some("use fewer matrix values, or split the pipeline".into()),
            );
        } else if expanded_bytes > MAX_EXPANDED_BYTES {
            cx.error(
                jobs.span(),
                format!(
                    "the pipeline's jobs come to {expanded_bytes} bytes after matrix expansion, over the limit of {MAX_EXPANDED_BYTES}"
                ),
                Some("use fewer matrix values or shorter steps, or split the pipeline".into()),
            );
        }
    }
    let mut edges = 0usize;
    for (job, needs) in raw_jobs.iter().zip(&needs) {
        let per_leg: usize = needs.iter().flatten().map(|&d| raw_jobs[d].legs).sum();
        edges = edges.saturating_add(per_leg.saturating_mul(job.legs));
    }
    if edges > MAX_DEPENDENCIES {
        if let Some(jobs) = top.get_node("jobs") {
            cx.error(
                jobs.span(),
                format!(
                    "the jobs' `needs` come to {edges} dependencies after matrix expansion, over the limit of {MAX_DEPENDENCIES}"
                ),
                Some("need fewer matrix jobs, or put the jobs in stages instead".into()),
            );
        }
    }

    if !cx.errors.is_empty() {
        cx.errors.sort_by_key(|e| (e.line, e.column));
        if cx.suppressed > 0 {
            let last = cx.errors.last().map_or(1, |e| e.line);
            cx.errors.push(PipelineError {
                file: file.to_owned(),
                line: last,
                column: 1,
                message: format!(
                    "{} more problems not shown (at most {MAX_ERRORS} are reported)",
                    cx.suppressed
                ),
                hint: Some("fix these and validate again".into()),
            });
        }
        return Err(PipelineErrors(cx.errors));
    }

    // `dependencies` name jobs this one waits for (by `needs`, or by
    // stage when it has none).
    let mut artifact_deps: Vec<Option<Vec<usize>>> = Vec::with_capacity(raw_jobs.len());
    for (raw_index, job) in raw_jobs.iter().enumerate() {
        let Some(named) = &job.dependencies else {
            artifact_deps.push(None);
            continue;
        };
        let mut deps = Vec::with_capacity(named.len());
        for (dep, span) in named {
            let waited = index
                .get(dep.as_str())
                .copied()
                .filter(|&i| match &needs[raw_index] {
                    Some(needed) => needed.contains(&i),
                    None => raw_jobs[i].stage_index < job.stage_index,
                });
            match waited {
                Some(i) => deps.push(i),
                None => {
                    let hint = did_you_mean(dep, named_waits(&raw_jobs, &needs, raw_index))
                        .or_else(|| Some("list only jobs that this job `needs` (or, without `needs`, jobs of earlier stages)".into()));
                    cx.error(
                        span,
                        format!(
                            "job `{}` takes the artifacts of `{dep}`, which it does not wait for",
                            job.name
                        ),
                        hint,
                    );
                }
            }
        }
        artifact_deps.push(Some(deps));
    }

    // Expand matrices, then resolve dependencies to expanded indices.
    let mut jobs = Vec::with_capacity(expanded_jobs);
    let mut expansions: Vec<Vec<usize>> = Vec::with_capacity(raw_jobs.len());
    for (raw_index, job) in raw_jobs.iter().enumerate() {
        let mut mine = Vec::new();
        let combinations = job.matrix.combinations();
        let group = (job.fail_fast && combinations.len() > 1).then_some(raw_index);
        for combination in combinations {
            mine.push(jobs.len());
            let mut expanded = expand(job, &combination);
            expanded.fail_fast_group = group;
            jobs.push(expanded);
        }
        expansions.push(mine);
    }
    // Display names are what runs show and what `vk` finds jobs by: two
    // jobs (or two legs of one matrix) must not share one.
    let mut shown: HashMap<&str, usize> = HashMap::with_capacity(jobs.len());
    for (raw_index, mine) in expansions.iter().enumerate() {
        for &i in mine {
            if let Some(&other) = shown.get(jobs[i].name.as_str()) {
                let raw = &raw_jobs[raw_index];
                let span = raw.display_name.as_ref().map_or(&raw.span, |(_, span)| span);
                cx.error(
                    span,
                    format!(
                        "job `{}` is shown as `{}`, like job `{}`",
                        raw.name, jobs[i].name, raw_jobs[other].name
                    ),
                    Some("give each job (and each leg of a matrix) its own `name:`, e.g. with `${{ matrix.key }}` in it".into()),
                );
                break;
            }
            shown.insert(jobs[i].name.as_str(), raw_index);
        }
    }
    if !cx.errors.is_empty() {
        cx.errors.sort_by_key(|e| (e.line, e.column));
        return Err(PipelineErrors(cx.errors));
    }
    for (raw_index, deps) in needs.iter().enumerate() {
        let Some(deps) = deps else {
            for &expanded in &expansions[raw_index] {
                jobs[expanded].waits_for_earlier_stages = true;
            }
            continue;
        };
        let resolved: Vec<usize> = deps.iter().flat_map(|&d| expansions[d].iter().copied()).collect();
        for &expanded in &expansions[raw_index] {
            jobs[expanded].depends_on = resolved.clone();
        }
    }
    for (raw_index, deps) in artifact_deps.iter().enumerate() {
        if let Some(deps) = deps {
            let resolved: Vec<usize> = deps.iter().flat_map(|&d| expansions[d].iter().copied()).collect();
            for &expanded in &expansions[raw_index] {
                jobs[expanded].artifacts_from = Some(resolved.clone());
            }
        }
    }
    Ok(Pipeline {
        name,
        description,
        stages: stages.into_iter().map(|(n, _)| n).collect(),
        timeout_ms,
        fail_fast,
        jobs,
        workflow_rule,
        env,
    })
}

/// The names of the jobs raw job `of` waits for: its `needs`, or the jobs
/// of earlier stages.
fn named_waits<'a>(
    raw_jobs: &'a [RawJob],
    needs: &'a [Option<Vec<usize>>],
    of: usize,
) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    match &needs[of] {
        Some(needed) => Box::new(needed.iter().map(|&i| raw_jobs[i].name.as_str())),
        None => Box::new(
            raw_jobs
                .iter()
                .filter(move |j| j.stage_index < raw_jobs[of].stage_index)
                .map(|j| j.name.as_str()),
        ),
    }
}

/// The declared stages and how to find one.
struct Stages<'a> {
    list: &'a [(String, Vec<(String, String)>)],
    index: &'a HashMap<String, usize>,
    declared: bool,
}

/// "defined jobs: a, b, …" with at most a few names.
fn defined_jobs(jobs: &[RawJob]) -> String {
    const SHOWN: usize = 10;
    let names: Vec<&str> = jobs.iter().take(SHOWN).map(|j| j.name.as_str()).collect();
    let more = jobs.len().saturating_sub(SHOWN);
    if more > 0 {
        format!("defined jobs: {}, and {more} more", names.join(", "))
    } else {
        format!("defined jobs: {}", names.join(", "))
    }
}

/// What one copy of a job weighs: its step commands and names, environment
/// and secrets.
fn spec_bytes(spec: &JobSpec) -> usize {
    let pairs = |v: &[(String, String)]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let steps: usize = spec
        .steps
        .iter()
        .map(|s| {
            let command = match &s.command {
                StepCommand::Shell(line) => line.len(),
                _ => 0,
            };
            s.name.len() + command + pairs(&s.env)
        })
        .sum();
    spec.name.len() + steps + pairs(&spec.env) + pairs(&spec.secrets)
}

fn merge(base: &[(String, String)], over: &[(String, String)]) -> Vec<(String, String)> {
    let overridden: HashSet<&str> = over.iter().map(|(k, _)| k.as_str()).collect();
    let mut out: Vec<(String, String)> = base
        .iter()
        .filter(|(k, _)| !overridden.contains(k.as_str()))
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

/// `defaults:`: settings for every job that does not set its own.
#[derive(Default)]
struct Defaults {
    shell: Option<Vec<String>>,
    env: Vec<(String, String)>,
    timeout_ms: Option<u64>,
    tags: Option<Vec<String>>,
    retry: Option<RetryPolicy>,
    /// `cache:` for every job that names none.
    cache: Option<Vec<valkyrie::message::CacheSpec>>,
    /// `image`, `services` and `pull_policy` at pipeline level.
    container: ContainerKeys,
}

fn parse_defaults(cx: &mut Ctx<'_>, node: &Node) -> Defaults {
    let Some(map) = cx.mapping(node, "defaults") else {
        return Defaults::default();
    };
    cx.check_keys(map, DEFAULTS_KEYS, "defaults");
    Defaults {
        shell: map
            .get_node("shell")
            .and_then(|n| cx.string(n, "defaults.shell"))
            .map(|s| s.split_whitespace().map(String::from).collect()),
        env: map
            .get_node("env")
            .map(|n| cx.env(n, "defaults.env"))
            .unwrap_or_default(),
        timeout_ms: map
            .get_node("timeout")
            .and_then(|n| cx.duration_ms(n, "defaults.timeout")),
        tags: map.get_node("tags").map(|n| {
            cx.names(n, "tags", MAX_TAGS)
                .into_iter()
                .map(|(t, _)| t)
                .collect()
        }),
        retry: map.get_node("retry").map(|n| parse_retry(cx, n, "defaults")),
        cache: map.get_node("cache").map(|n| cache::parse(cx, n, "defaults")),
        container: ContainerKeys::default(),
    }
}

/// `checkout: true | false | {depth: N}`: whether a triggered run checks
/// its commit out, and how many commits of history (0: all).
fn checkout_setting(cx: &mut Ctx, node: &Node, what: &str) -> (bool, Option<u32>) {
    let Node::Mapping(map) = node else {
        return (cx.boolean(node, "checkout").unwrap_or(true), None);
    };
    let within = format!("{what} checkout");
    cx.check_keys(map, CHECKOUT_KEYS, &within);
    let depth = map
        .get_scalar("depth")
        .and_then(|s| match s.as_str().parse::<u32>() {
            Ok(n) if n <= MAX_CHECKOUT_DEPTH => Some(n),
            _ => {
                cx.error(
                    s.span(),
                    format!("{within} depth `{}` is not a number of commits", s.as_str()),
                    Some(format!(
                        "use 1 (the default) to {MAX_CHECKOUT_DEPTH}, or 0 for the whole history"
                    )),
                );
                None
            }
        });
    (true, depth)
}

fn parse_job(
    cx: &mut Ctx<'_>,
    key: &MarkedScalarNode,
    value: &Node,
    stages: &Stages<'_>,
    defaults: &Defaults,
) -> Option<RawJob> {
    let name = key.as_str().to_owned();
    let what = format!("job `{name}`");
    if !cx.fits(key.span(), &name, MAX_NAME_BYTES, "a job name") {
        return None;
    }
    let map = cx.mapping(value, &what)?;
    cx.check_keys(map, JOB_KEYS, &what);

    let (stage, stage_index) = match map.get_node("stage").and_then(|n| cx.name(n, "stage")) {
        Some(stage) => {
            let span = *map.get_node("stage").map(Node::span).unwrap_or(key.span());
            match stages.index.get(&stage) {
                Some(&i) if stages.declared => (stage, i),
                _ if stages.declared => {
                    let hint = did_you_mean(&stage, stages.list.iter().map(|(n, _)| n.as_str()))
                        .or_else(|| Some("add it to `stages:` or use a declared stage".into()));
                    cx.error(
                        &span,
                        format!("{what} is in stage `{stage}`, which is not declared"),
                        hint,
                    );
                    (stage, 0)
                }
                _ => {
                    cx.error(
                        &span,
                        format!("{what} names stage `{stage}` but the pipeline declares no `stages`"),
                        None,
                    );
                    (stage, 0)
                }
            }
        }
        None => (stages.list[0].0.clone(), 0),
    };
    let needs = map.get_node("needs").map(|n| cx.names(n, "needs", MAX_JOBS));
    let dependencies = map
        .get_node("dependencies")
        .map(|n| cx.names(n, "dependencies", MAX_JOBS));
    let artifacts = map
        .get_node("artifacts")
        .and_then(|n| artifacts::parse(cx, n, &what));
    let cache = match map.get_node("cache") {
        Some(n) => cache::parse(cx, n, &what),
        None => defaults.cache.clone().unwrap_or_default(),
    };
    let (condition, rule) = map
        .get_node("if")
        .map(|n| rules::job_if(cx, n, &what))
        .unwrap_or((Condition::OnSuccess, None));
    let manual = map.get_node("when").is_some_and(|n| rules::when(cx, n, &what));
    let allow_failure = map
        .get_node("allow_failure")
        .and_then(|n| cx.boolean(n, "allow_failure"))
        .unwrap_or(false);
    let tags: Vec<String> = match map.get_node("tags") {
        Some(n) => cx
            .names(n, "tags", MAX_TAGS)
            .into_iter()
            .map(|(t, _)| t)
            .collect(),
        None => defaults.tags.clone().unwrap_or_default(),
    };
    let env = map
        .get_node("env")
        .map(|n| cx.env(n, &format!("{what} env")))
        .unwrap_or_default();
    let secrets = map
        .get_node("secrets")
        .map(|n| cx.env(n, &format!("{what} secrets")))
        .unwrap_or_default();
    let timeout_ms = match map.get_node("timeout") {
        Some(n) => cx.duration_ms(n, &format!("{what} timeout")).unwrap_or(0),
        None => defaults.timeout_ms.unwrap_or(0),
    };
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
        .and_then(|n| cx.name(n, "project"))
        .unwrap_or_else(|| "default".into());
    let shell = match map.get_node("shell") {
        Some(n) => cx
            .string(n, "shell")
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        None => defaults.shell.clone().unwrap_or_default(),
    };
    let retry = match map.get_node("retry") {
        Some(n) => parse_retry(cx, n, &what),
        None => defaults.retry.unwrap_or_default(),
    };

    let matrix = map
        .get_node("matrix")
        .and_then(|n| matrix::parse_matrix(cx, n, &what))
        .unwrap_or_default();
    let legs = matrix.legs();
    let display_name = map
        .get_node("name")
        .and_then(|n| cx.name(n, &format!("{what} name")).map(|s| (s, *n.span())));
    let fail_fast = map
        .get_node("fail_fast")
        .and_then(|n| cx.boolean(n, "fail_fast"))
        .unwrap_or(true);
    let (checkout, checkout_depth) = map
        .get_node("checkout")
        .map(|n| checkout_setting(cx, n, &what))
        .unwrap_or((true, None));

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
            if !cx.few_enough(seq.span(), seq.len(), MAX_STEPS_PER_JOB, &format!("{what} steps")) {
                return None;
            }
            for item in seq.iter() {
                if let Some(step) = parse_step(cx, item, &what) {
                    steps.push(step);
                }
            }
        }
        Some(other) => cx.error(other.span(), format!("{what} steps must be a list"), None),
    }

    let container =
        ContainerKeys::parse(cx, map, &what, true).resolve(&defaults.container, cx, key.span(), &what);
    let spec = JobSpec {
        container: container.map(Box::new),
        trigger: None,
        name: name.clone(),
        project,
        priority,
        tags,
        steps,
        env,
        secrets,
        timeout_ms,
        retry,
        shell,
        artifacts: artifacts.map(Box::new),
        cache,
    };
    Some(RawJob {
        name,
        span: *key.span(),
        stage,
        stage_index,
        needs,
        dependencies,
        condition,
        rule,
        manual,
        allow_failure,
        matrix,
        legs,
        display_name,
        fail_fast,
        checkout,
        checkout_depth,
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
        Node::Scalar(s) => cx
            .fits(s.span(), s.as_str(), MAX_RUN_BYTES, &format!("a step of {what}"))
            .then(|| StepSpec::shell(s.as_str())),
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
            if let Some(n) = m.get_node("run") {
                if !cx.fits(
                    n.span(),
                    &run,
                    MAX_RUN_BYTES,
                    &format!("the `run` of a step of {what}"),
                ) {
                    return None;
                }
            }
            if run.trim().is_empty() {
                cx.error(m.span(), format!("a step of {what} has an empty `run`"), None);
            }
            let name = m.get_node("name").and_then(|n| cx.name(n, "step name"));
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
            if let Some(n) = m.get_node("if") {
                step.condition = step_condition(cx, n, what).unwrap_or_default();
            }
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

/// A step's `if:`, with the same words as a job's.
fn step_condition(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<StepCondition> {
    let s = cx.scalar(node, "if")?;
    match s.as_str().trim() {
        "on_success" | "success()" => Some(StepCondition::OnSuccess),
        "on_failure" | "failure()" => Some(StepCondition::OnFailure),
        "always" | "always()" => Some(StepCondition::Always),
        other => {
            cx.error(
                s.span(),
                format!("a step of {what} has an unknown `if` condition `{other}`"),
                Some("use on_success, on_failure or always".into()),
            );
            None
        }
    }
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
    let shown = job
        .display_name
        .as_ref()
        .map_or(job.name.as_str(), |(n, _)| n.as_str());
    let mut name = shown.to_owned();
    if !combination.is_empty() {
        let label: Vec<String> = combination.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // A display name that names matrix values is complete; any other
        // name gets the values appended, as GitHub Actions does.
        name = if shown.contains("${{") {
            substitute(shown, combination)
        } else {
            format!("{shown} [{}]", label.join(", "))
        };
        spec.env = merge(&spec.env, combination);
        for step in &mut spec.steps {
            step.name = substitute(&step.name, combination);
            if let StepCommand::Shell(line) = &mut step.command {
                *line = substitute(line, combination);
            }
        }
        spec.tags = spec.tags.iter().map(|t| substitute(t, combination)).collect();
        if let Some(container) = &mut spec.container {
            container.image = substitute(&container.image, combination);
        }
        for cache in &mut spec.cache {
            cache.key = substitute(&cache.key, combination);
            for key in &mut cache.fallback_keys {
                *key = substitute(key, combination);
            }
        }
    }
    spec.name = name.clone();
    PipelineJob {
        name,
        stage: job.stage.clone(),
        stage_index: job.stage_index,
        depends_on: Vec::new(),
        waits_for_earlier_stages: false,
        condition: job.condition,
        rule: job.rule.clone(),
        manual: job.manual,
        allow_failure: job.allow_failure,
        fail_fast_group: None,
        checkout: job.checkout,
        checkout_depth: job.checkout_depth,
        artifacts_from: None,
        spec,
    }
}
