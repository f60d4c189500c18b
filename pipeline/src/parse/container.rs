//! `image:`, `services:`, `pull_policy:` and `resources:`: the container a
//! job runs in (see `spec/pipeline.md`, "Containers").
//!
//! `image`, `services` and `pull_policy` may be written at pipeline level
//! (for every job) and in a job (for that job); `resources` only in a job.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::Ctx;
use crate::limits::{MAX_ENV_VARS, MAX_NAME_BYTES};
use valkyrie::message::{ContainerSpec, PullPolicy, ServiceSpec};

/// Service containers per job.
pub const MAX_SERVICES: usize = 8;
/// Length of an image reference (Docker's own limit on a repository name
/// is 255 bytes).
pub const MAX_IMAGE_BYTES: usize = 255;
/// Words of an entrypoint or a service command.
pub const MAX_COMMAND_WORDS: usize = 64;

const IMAGE_KEYS: &[&str] = &["name", "entrypoint"];
const SERVICE_KEYS: &[&str] = &["name", "alias", "env", "command", "entrypoint"];
const RESOURCES_KEYS: &[&str] = &["cpus", "memory"];

/// The container settings written at one level (pipeline or job).
#[derive(Clone, Default)]
pub(super) struct ContainerKeys {
    image: Option<(String, Option<Vec<String>>)>,
    services: Option<Vec<ServiceSpec>>,
    pull_policy: Option<PullPolicy>,
    cpus_milli: u32,
    memory_bytes: u64,
}

impl ContainerKeys {
    /// Reads the keys present in `map`; `what` names the level in errors.
    pub(super) fn parse(cx: &mut Ctx<'_>, map: &MarkedMappingNode, what: &str, job_level: bool) -> Self {
        let mut keys = ContainerKeys {
            image: map.get_node("image").and_then(|n| image(cx, n, what)),
            services: map.get_node("services").map(|n| services(cx, n, what)),
            pull_policy: map.get_node("pull_policy").and_then(|n| pull_policy(cx, n, what)),
            ..ContainerKeys::default()
        };
        if job_level {
            if let Some(node) = map.get_node("resources") {
                resources(cx, node, what, &mut keys);
            }
        }
        keys
    }

    /// The job's container: its own keys over the pipeline's. A job with
    /// services, a pull policy or resources but no image anywhere is an
    /// error at `span`.
    pub(super) fn resolve(
        &self,
        pipeline: &ContainerKeys,
        cx: &mut Ctx<'_>,
        span: &marked_yaml::Span,
        what: &str,
    ) -> Option<ContainerSpec> {
        let Some((image, entrypoint)) = self.image.clone().or_else(|| pipeline.image.clone()) else {
            let services = self.services.as_ref().is_some_and(|s| !s.is_empty());
            if services || self.pull_policy.is_some() || self.cpus_milli > 0 || self.memory_bytes > 0 {
                cx.error(
                    span,
                    format!("{what} sets `services`, `pull_policy` or `resources` but has no `image`"),
                    Some("add `image: <name>[:tag]` to the job or the pipeline; these keys apply to container jobs only".into()),
                );
            }
            return None;
        };
        Some(ContainerSpec {
            image,
            entrypoint,
            pull_policy: self.pull_policy.or(pipeline.pull_policy).unwrap_or_default(),
            services: self
                .services
                .clone()
                .or_else(|| pipeline.services.clone())
                .unwrap_or_default(),
            cpus_milli: self.cpus_milli,
            memory_bytes: self.memory_bytes,
        })
    }
}

/// An image reference: no spaces, not empty, at most [`MAX_IMAGE_BYTES`].
fn image_name(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<String> {
    let s = cx.scalar(node, what)?;
    let name = s.as_str();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.error(
            s.span(),
            format!("{what} `{name}` is not an image name"),
            Some("write it as name[:tag], e.g. `rust:1.89` or `registry.example.com/team/tool:2`".into()),
        );
        return None;
    }
    cx.fits(s.span(), name, MAX_IMAGE_BYTES, what)
        .then(|| name.to_owned())
}

/// A command: one line split on spaces, or a list of words.
fn command(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Vec<String> {
    let words: Vec<String> = match node {
        Node::Scalar(s) => s.as_str().split_whitespace().map(String::from).collect(),
        _ => cx.strings(node, what).into_iter().map(|(w, _)| w).collect(),
    };
    if words.len() > MAX_COMMAND_WORDS {
        cx.error(
            node.span(),
            format!(
                "{what} has {} words, over the limit of {MAX_COMMAND_WORDS}",
                words.len()
            ),
            None,
        );
        return Vec::new();
    }
    words
}

/// `image: name` or `image: {name, entrypoint}`.
fn image(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<(String, Option<Vec<String>>)> {
    let label = format!("the `image` of {what}");
    match node {
        Node::Mapping(m) => {
            cx.check_keys(m, IMAGE_KEYS, &label);
            let Some(name) = m.get_node("name") else {
                cx.error(
                    m.span(),
                    format!("{label} has no `name`"),
                    Some("add `name: <image>[:tag]`".into()),
                );
                return None;
            };
            let name = image_name(cx, name, &label)?;
            let entrypoint = m
                .get_node("entrypoint")
                .map(|n| command(cx, n, &format!("{label} entrypoint")));
            Some((name, entrypoint))
        }
        _ => image_name(cx, node, &label).map(|name| (name, None)),
    }
}

fn pull_policy(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<PullPolicy> {
    let s = cx.scalar(node, "pull_policy")?;
    let policy = PullPolicy::from_name(s.as_str());
    if policy.is_none() {
        cx.error(
            s.span(),
            format!("{what} has an unknown pull_policy `{}`", s.as_str()),
            Some("use if-not-present, always or never".into()),
        );
    }
    policy
}

/// The host name a service is reached by when it names none: the last part
/// of its image path without tag or digest (`library/postgres:16` → `postgres`).
fn default_alias(image: &str) -> String {
    let path = image.split('@').next().unwrap_or(image);
    let last = path.rsplit('/').next().unwrap_or(path);
    last.split(':').next().unwrap_or(last).to_owned()
}

fn valid_alias(alias: &str) -> bool {
    !alias.is_empty()
        && alias.len() <= 63
        && alias.starts_with(|c: char| c.is_ascii_alphanumeric())
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn services(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Vec<ServiceSpec> {
    let label = format!("the `services` of {what}");
    let Some(seq) = node.as_sequence() else {
        cx.error(
            node.span(),
            format!("{label} must be a list"),
            Some("write `services: [postgres:16]` or a list of `- name: <image>` mappings".into()),
        );
        return Vec::new();
    };
    if !cx.few_enough(seq.span(), seq.len(), MAX_SERVICES, &label) {
        return Vec::new();
    }
    let mut out: Vec<ServiceSpec> = Vec::new();
    for item in seq.iter() {
        let service = match item {
            Node::Mapping(m) => {
                cx.check_keys(m, SERVICE_KEYS, "a service");
                let Some(name) = m.get_node("name") else {
                    cx.error(
                        m.span(),
                        "a service has no `name`",
                        Some("add `name: <image>[:tag]`".into()),
                    );
                    continue;
                };
                let Some(image) = image_name(cx, name, "a service name") else {
                    continue;
                };
                let alias = match m.get_node("alias") {
                    Some(n) => match cx.name(n, "a service alias") {
                        Some(a) => a,
                        None => continue,
                    },
                    None => default_alias(&image),
                };
                let env = m
                    .get_node("env")
                    .map(|n| cx.env(n, "service env"))
                    .unwrap_or_default();
                if env.len() > MAX_ENV_VARS {
                    continue;
                }
                let command = m
                    .get_node("command")
                    .map(|n| command(cx, n, "a service command"))
                    .unwrap_or_default();
                if m.get_node("entrypoint").is_some() {
                    cx.error(
                        m.get_node("entrypoint").map_or(m.span(), Node::span),
                        "a service's `entrypoint` is not supported",
                        Some("use `command:` (arguments to the image's entrypoint)".into()),
                    );
                }
                ServiceSpec {
                    image,
                    alias,
                    env,
                    command,
                }
            }
            _ => {
                let Some(image) = image_name(cx, item, "a service") else {
                    continue;
                };
                ServiceSpec {
                    alias: default_alias(&image),
                    image,
                    env: Vec::new(),
                    command: Vec::new(),
                }
            }
        };
        if !valid_alias(&service.alias) || service.alias.len() > MAX_NAME_BYTES {
            cx.error(
                item.span(),
                format!("service alias `{}` is not a valid host name", service.alias),
                Some("use letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most 63 bytes; set `alias:`".into()),
            );
            continue;
        }
        if out.iter().any(|s| s.alias == service.alias) {
            cx.error(
                item.span(),
                format!("two services of {what} are reached as `{}`", service.alias),
                Some("give one of them another `alias:`".into()),
            );
            continue;
        }
        out.push(service);
    }
    out
}

/// `resources: {cpus: 1.5, memory: 512m}`.
fn resources(cx: &mut Ctx<'_>, node: &Node, what: &str, keys: &mut ContainerKeys) {
    let Some(map) = cx.mapping(node, &format!("the `resources` of {what}")) else {
        return;
    };
    cx.check_keys(map, RESOURCES_KEYS, "resources");
    if let Some(s) = map.get_node("cpus").and_then(|n| cx.scalar(n, "resources.cpus")) {
        match parse_cpus_milli(s.as_str()) {
            Some(milli) => keys.cpus_milli = milli,
            None => cx.error(
                s.span(),
                format!("resources.cpus `{}` is not a CPU count", s.as_str()),
                Some("use a number of CPUs from 0.001 to 1024, e.g. 2 or 0.5".into()),
            ),
        }
    }
    if let Some(s) = map
        .get_node("memory")
        .and_then(|n| cx.scalar(n, "resources.memory"))
    {
        match parse_memory_bytes(s.as_str()) {
            Some(bytes) => keys.memory_bytes = bytes,
            None => cx.error(
                s.span(),
                format!("resources.memory `{}` is not a memory size", s.as_str()),
                Some("use bytes with a unit k, m or g (powers of 1024), at least 6m, e.g. 512m or 2g".into()),
            ),
        }
    }
}

/// CPUs as thousandths: `1.5` → 1500. At most 1024 CPUs, at least 0.001.
fn parse_cpus_milli(text: &str) -> Option<u32> {
    let cpus: f64 = text.trim().parse().ok()?;
    if !cpus.is_finite() || !(0.001..=1024.0).contains(&cpus) {
        return None;
    }
    Some((cpus * 1000.0).round() as u32)
}

/// `512m`, `2g`, `1048576`: bytes, units powers of 1024. Docker refuses
/// less than 6 MiB for a container, so less is refused here.
fn parse_memory_bytes(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (digits, shift) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 10),
        'm' => (&text[..text.len() - 1], 20),
        'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().ok()?;
    let bytes = n.checked_mul(1u64 << shift)?;
    (bytes >= 6 << 20).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_aliases() {
        assert_eq!(parse_cpus_milli("1.5"), Some(1500));
        assert_eq!(parse_cpus_milli("0"), None);
        assert_eq!(parse_memory_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_memory_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_memory_bytes("1k"), None);
        assert_eq!(parse_memory_bytes("lots"), None);
        assert_eq!(default_alias("registry:5000/library/postgres:16"), "postgres");
        assert_eq!(default_alias("redis@sha256:abc"), "redis");
        assert!(!valid_alias("-db"));
    }

    fn container(yaml: &str) -> Vec<Option<ContainerSpec>> {
        let p = crate::parse("ci.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        p.jobs.into_iter().map(|j| j.spec.container.map(|c| *c)).collect()
    }

    fn error(yaml: &str) -> String {
        let e = crate::parse("ci.yaml", yaml).expect_err("should be invalid");
        e.to_string()
    }

    #[test]
    fn jobs_take_the_pipeline_image_unless_they_name_their_own() {
        let jobs = container(
            "image: alpine:3\npull_policy: never\njobs:\n  a:\n    steps: [x]\n  b:\n    image: {name: rust:1.89, entrypoint: ['']}\n    services:\n      - postgres:16\n      - name: redis:7\n        alias: cache\n        env: {A: b}\n        command: redis-server --save ''\n    resources: {cpus: 1.5, memory: 1g}\n    steps: [x]\n",
        );
        let a = jobs[0].clone().unwrap();
        assert_eq!(
            (a.image.as_str(), a.pull_policy, a.entrypoint),
            ("alpine:3", PullPolicy::Never, None)
        );
        let b = jobs[1].clone().unwrap();
        assert_eq!(b.image, "rust:1.89");
        assert_eq!(b.entrypoint, Some(vec![String::new()]));
        assert_eq!(b.pull_policy, PullPolicy::Never);
        assert_eq!((b.cpus_milli, b.memory_bytes), (1500, 1 << 30));
        let aliases: Vec<&str> = b.services.iter().map(|s| s.alias.as_str()).collect();
        assert_eq!(aliases, ["postgres", "cache"]);
        assert_eq!(b.services[1].command, ["redis-server", "--save", "''"]);
        assert_eq!(b.services[1].env, [("A".to_owned(), "b".to_owned())]);
        assert_eq!(container("jobs:\n  a:\n    steps: [x]\n"), [None]);
    }

    #[test]
    fn bad_container_keys_are_refused_with_their_position() {
        let e = error("jobs:\n  a:\n    image: 'rust 1.89'\n    steps: [x]\n");
        assert!(
            e.contains("ci.yaml:3:12: the `image` of job `a` `rust 1.89` is not an image name"),
            "{e}"
        );
        let e = error("jobs:\n  a:\n    services: [postgres]\n    steps: [x]\n");
        assert!(e.contains("ci.yaml:2:3: job `a` sets `services`"), "{e}");
        let e = error("image: x\njobs:\n  a:\n    pull_policy: sometimes\n    steps: [x]\n");
        assert!(
            e.contains("ci.yaml:4:18: job `a` has an unknown pull_policy `sometimes`"),
            "{e}"
        );
        let e = error("image: x\njobs:\n  a:\n    services: [db, other/db:2]\n    steps: [x]\n");
        assert!(
            e.contains("ci.yaml:4:20: two services of job `a` are reached as `db`"),
            "{e}"
        );
        let e = error("image: x\njobs:\n  a:\n    resources: {memory: 1k}\n    steps: [x]\n");
        assert!(e.contains("resources.memory `1k` is not a memory size"), "{e}");
        let e = error("image: {entrypoint: [sh]}\njobs:\n  a:\n    steps: [x]\n");
        assert!(
            e.contains("ci.yaml:1:8: the `image` of the pipeline has no `name`"),
            "{e}"
        );
        let e = error("jobs:\n  a:\n    image: x\n    services: [{name: db, alias: -x}]\n    steps: [x]\n");
        assert!(e.contains("service alias `-x` is not a valid host name"), "{e}");
    }
}
