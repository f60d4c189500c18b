use super::*;
use crate::message::{RetryOn, StepCommand};

fn errors(yaml: &str) -> Vec<PipelineError> {
    parse("ci.yaml", yaml).expect_err("pipeline should be invalid").0
}

fn one_error(yaml: &str) -> PipelineError {
    let errs = errors(yaml);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn the_demo_pipeline_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.yaml")).unwrap();
    let p = parse("demo.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        p.jobs.len() >= 6,
        "{:?}",
        p.jobs.iter().map(|j| &j.name).collect::<Vec<_>>()
    );
    assert!(p.jobs.iter().any(|j| j.allow_failure));
    assert!(p.jobs.iter().any(|j| j.condition == Condition::Always));
}

#[test]
fn stages_order_jobs_and_needs_form_a_dag() {
    let p = parse(
        "ci.yaml",
        "stages: [build, test, deploy]\njobs:\n  a:\n    stage: build\n    steps: [make]\n  b:\n    stage: build\n    steps: [make b]\n  t:\n    stage: test\n    steps: [test]\n  fast:\n    stage: deploy\n    needs: [a]\n    steps: [go]\n",
    )
    .unwrap();
    let idx = |n: &str| p.jobs.iter().position(|j| j.name == n).unwrap();
    assert_eq!(p.jobs[idx("a")].depends_on, Vec::<usize>::new());
    assert_eq!(
        p.jobs[idx("t")].depends_on,
        vec![idx("a"), idx("b")],
        "stage order: every earlier job"
    );
    assert_eq!(
        p.jobs[idx("fast")].depends_on,
        vec![idx("a")],
        "needs override stage order"
    );
}

#[test]
fn matrix_expands_into_one_job_per_combination() {
    let p = parse(
        "ci.yaml",
        "jobs:\n  test:\n    matrix:\n      os: [linux, mac]\n      rust: [stable, beta]\n    tags: ['${{ matrix.os }}']\n    steps:\n      - run: echo ${{ matrix.os }} $rust\n  after:\n    needs: [test]\n    steps: [echo done]\n",
    )
    .unwrap();
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test [os=linux, rust=stable]",
            "test [os=linux, rust=beta]",
            "test [os=mac, rust=stable]",
            "test [os=mac, rust=beta]",
            "after"
        ]
    );
    let first = &p.jobs[0].spec;
    assert_eq!(first.tags, ["linux"]);
    assert_eq!(
        first.steps[0].command,
        StepCommand::Shell("echo linux $rust".into())
    );
    assert!(first.env.contains(&("rust".into(), "stable".into())));
    assert_eq!(
        p.jobs[4].depends_on,
        vec![0, 1, 2, 3],
        "needing a matrix job waits for every expansion"
    );
}

#[test]
fn env_layers_and_options_are_carried() {
    let p = parse(
        "ci.yaml",
        "env: {A: pipeline, B: pipeline}\nsecrets: {TOKEN: s3cret}\nstages:\n  - name: s\n    env: {B: stage, C: stage}\ntimeout: 1h\njobs:\n  j:\n    env: {C: job}\n    timeout: 90s\n    retry: {max: 1, when: [failed]}\n    priority: 7\n    project: web\n    allow_failure: true\n    if: always\n    steps:\n      - name: build\n        run: |\n          echo one\n          echo two\n        env: {D: step}\n        working_directory: sub\n        continue_on_error: true\n",
    )
    .unwrap();
    assert_eq!(p.timeout_ms, 3_600_000);
    let j = &p.jobs[0];
    assert_eq!(
        j.spec.env,
        [
            ("A".into(), "pipeline".into()),
            ("B".into(), "stage".into()),
            ("C".into(), "job".into())
        ]
    );
    assert_eq!(j.spec.secrets, [("TOKEN".into(), "s3cret".into())]);
    assert_eq!(j.spec.timeout_ms, 90_000);
    assert_eq!((j.spec.retry.max_retries, j.spec.retry.on), (1, RetryOn::FAILED));
    assert_eq!((j.spec.priority, j.spec.project.as_str()), (7, "web"));
    assert!(j.allow_failure);
    assert_eq!(j.condition, Condition::Always);
    let step = &j.spec.steps[0];
    assert_eq!(step.command, StepCommand::Shell("echo one\necho two\n".into()));
    assert_eq!(
        (
            step.name.as_str(),
            step.working_directory.as_deref(),
            step.continue_on_error
        ),
        ("build", Some("sub"), true)
    );
}

#[test]
fn unknown_keys_are_errors_with_did_you_mean() {
    let e = one_error("jobs:\n  build:\n    stpes: [make]\n    steps: [make]\n");
    assert_eq!((e.line, e.column), (3, 5));
    assert!(e.message.contains("unknown key `stpes` in job `build`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `steps`?"));
    let e = one_error("nmae: x\njobs:\n  a:\n    steps: [x]\n");
    assert_eq!(
        (e.line, e.column, e.hint.as_deref()),
        (1, 1, Some("did you mean `name`?"))
    );
}

#[test]
fn unknown_need_names_the_closest_job() {
    let e =
        one_error("jobs:\n  build:\n    steps: [make]\n  test:\n    needs: [buld]\n    steps: [make test]\n");
    assert_eq!((e.line, e.column), (5, 13));
    assert_eq!(
        e.to_string(),
        "ci.yaml:5:13: job `test` needs `buld`, which is not defined\n  hint: did you mean `build`?"
    );
}

#[test]
fn cycles_are_reported_with_their_path() {
    let e = one_error("jobs:\n  a:\n    needs: [c]\n    steps: [x]\n  b:\n    needs: [a]\n    steps: [x]\n  c:\n    needs: [b]\n    steps: [x]\n");
    assert!(e.message.contains("a -> c -> b -> a"), "{e}");
    assert_eq!(e.line, 2);
}

#[test]
fn bad_durations_empty_steps_and_duplicates() {
    let e = one_error("jobs:\n  a:\n    timeout: 10\n    steps: [x]\n");
    assert_eq!((e.line, e.column), (3, 14));
    assert!(e.message.contains("bad duration `10`"), "{e}");
    assert!(e.hint.unwrap().contains("90s"));
    let e = one_error("jobs:\n  a:\n    steps: []\n");
    assert!(e.message.contains("job `a` has no steps"), "{e}");
    let e = one_error("jobs:\n  a:\n    tags: [x]\n");
    assert!(e.message.contains("job `a` has no steps"), "{e}");
    let e = one_error("jobs:\n  a:\n    steps: [x]\n  a:\n    steps: [y]\n");
    assert_eq!(e.line, 4);
    assert!(
        e.message.contains("`a` is defined twice (first at line 2)"),
        "{e}"
    );
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let errs = errors(
        "stages: [build]\njobs:\n  a:\n    stage: biuld\n    timeout: soon\n    steps: [x]\n  b:\n    needs: [zzz]\n    iff: always\n    steps: []\n",
    );
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [4, 5, 8, 9, 10], "{errs:#?}");
    assert_eq!(errs[0].hint.as_deref(), Some("did you mean `build`?"));
}

#[test]
fn bad_values_are_named() {
    for (yaml, needle) in [
        (
            "jobs:\n  a:\n    if: sometimes\n    steps: [x]\n",
            "unknown `if` condition `sometimes`",
        ),
        (
            "jobs:\n  a:\n    priority: 999\n    steps: [x]\n",
            "priority must be a whole number",
        ),
        (
            "jobs:\n  a:\n    allow_failure: maybe\n    steps: [x]\n",
            "allow_failure must be true or false",
        ),
        (
            "jobs:\n  a:\n    retry: {max: 1, when: [sometimes]}\n    steps: [x]\n",
            "unknown retry condition",
        ),
        ("jobs:\n  a:\n    steps:\n      - name: x\n", "has no `run`"),
        (
            "jobs:\n  a:\n    env: {'bad-name': 1}\n    steps: [x]\n",
            "not a valid variable name",
        ),
        ("jobs: {}\n", "`jobs` is empty"),
        ("name: x\n", "has no `jobs`"),
        ("jobs:\n  a: [x]\n", "must be a mapping"),
        ("jobs:\n  a:\n    steps: [x\n", "invalid YAML"),
    ] {
        let errs = errors(yaml);
        assert!(
            errs.iter().any(|e| e.message.contains(needle)),
            "{yaml:?}: {errs:#?}"
        );
        assert!(errs.iter().all(|e| e.line >= 1 && e.column >= 1));
    }
}
