use super::*;
use valkyrie::message::{RetryOn, StepCommand};

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
    assert!(p.jobs[idx("t")].waits_for_earlier_stages);
    assert_eq!(
        p.dependencies(idx("t")),
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
            "the `if` of job `a`: unknown word `sometimes`",
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

// ---- limits (spec/pipeline.md, "Limits") ----

use super::limits::*;
use std::fmt::Write as _;

/// `count` jobs, one stage, one step each.
fn jobs_yaml(count: usize) -> String {
    let mut y = String::from("jobs:\n");
    for i in 0..count {
        let _ = writeln!(y, "  j{i}:\n    steps: [echo {i}]");
    }
    y
}

#[test]
fn a_pipeline_at_the_job_cap_validates_and_one_over_it_is_refused() {
    let p = parse("ci.yaml", &jobs_yaml(MAX_JOBS)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.jobs.len(), MAX_JOBS);
    let e = one_error(&jobs_yaml(MAX_JOBS + 1));
    assert_eq!(e.line, 2, "{e}");
    assert!(
        e.message.contains(&format!(
            "`jobs` has {} entries, over the limit of {MAX_JOBS}",
            MAX_JOBS + 1
        )),
        "{e}"
    );
}

#[test]
fn matrix_expansion_counts_against_the_job_cap() {
    // Each job is under the matrix limit; together they are over the job cap.
    let values: Vec<String> = (0..16).map(|v| format!("v{v}")).collect();
    let mut y = String::from("jobs:\n");
    for i in 0..=(MAX_JOBS / 256) {
        let _ = writeln!(
            y,
            "  j{i}:\n    matrix:\n      a: [{0}]\n      b: [{0}]\n    steps: [x]",
            values.join(", ")
        );
    }
    let e = one_error(&y);
    assert!(e.message.contains("expands into"), "{e}");
    assert!(
        e.message.contains(&format!("over the limit of {MAX_JOBS}")),
        "{e}"
    );

    let e = one_error("jobs:\n  j:\n    matrix:\n      a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]\n      b: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]\n    steps: [x]\n");
    assert!(
        e.message.contains(&format!(
            "matrix has 272 combinations, over the limit of {MAX_MATRIX_COMBINATIONS}"
        )),
        "{e}"
    );
}

#[test]
fn deep_nesting_is_refused_before_it_is_loaded() {
    // 5,000 levels: the recursive tree loader would overflow the stack.
    for text in [
        format!(
            "jobs:\n  a:\n    steps: {}{}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        ),
        format!(
            "jobs:\n  a:\n    steps: {}{}\n",
            "{a: ".repeat(5000),
            "}".repeat(5000)
        ),
        // Block nesting 1,000 deep (5,000 deep is over the byte cap).
        {
            let mut y = String::from("jobs:\n");
            for i in 0..1000 {
                let _ = writeln!(y, "{}k{i}:", " ".repeat(i + 1));
            }
            y
        },
        {
            let mut y = String::from("jobs:\n");
            for i in 0..1000 {
                let _ = writeln!(y, "{}-", " ".repeat(i + 1));
            }
            y
        },
    ] {
        let e = one_error(&text);
        assert!(
            e.message.contains(&format!("nested more than {MAX_DEPTH} deep")),
            "{e}"
        );
    }
    let mut y = String::from("jobs:\n");
    for i in 0..5000 {
        let _ = writeln!(y, "{}k{i}:", " ".repeat(i + 1));
    }
    let e = one_error(&y);
    assert!(e.message.contains("over the limit of"), "{e}");
    let e = one_error(&format!(
        "jobs:\n  a:\n    steps: {}{}\n",
        "[".repeat(40),
        "]".repeat(40)
    ));
    assert!(
        e.message.contains(&format!("nested more than {MAX_DEPTH} deep")),
        "{e}"
    );
    assert_eq!(e.line, 3);
}

#[test]
fn oversized_files_and_values_are_refused_with_the_limit_named() {
    let big = format!(
        "jobs:\n  a:\n    steps: [{}]\n",
        "x,".repeat(MAX_PIPELINE_BYTES / 2)
    );
    let e = one_error(&big);
    assert!(
        e.message
            .contains(&format!("over the limit of {MAX_PIPELINE_BYTES} bytes")),
        "{e}"
    );

    let many: String = (0..MAX_NODES).map(|i| format!("{},", i % 10)).collect();
    let e = one_error(&format!("jobs:\n  a:\n    steps: [{many}]\n"));
    assert!(
        e.message.contains(&format!("more than {MAX_NODES} YAML values")),
        "{e}"
    );

    let e = one_error(&format!(
        "jobs:\n  a:\n    steps:\n      - run: '{}'\n",
        "x".repeat(MAX_RUN_BYTES + 1)
    ));
    assert!(
        e.message
            .contains(&format!("over the limit of {MAX_RUN_BYTES} bytes")),
        "{e}"
    );
    assert_eq!(e.line, 4);

    let e = one_error(&format!(
        "jobs:\n  {}:\n    steps: [x]\n",
        "j".repeat(MAX_NAME_BYTES + 1)
    ));
    assert!(e.message.contains("a job name is 256 bytes long"), "{e}");

    let env: String = (0..=MAX_ENV_VARS).map(|i| format!("V{i}: x, ")).collect();
    let e = one_error(&format!("env: {{{env}}}\njobs:\n  a:\n    steps: [x]\n"));
    assert!(
        e.message.contains(&format!(
            "env has {} entries, over the limit of {MAX_ENV_VARS}",
            MAX_ENV_VARS + 1
        )),
        "{e}"
    );

    let steps = "x, ".repeat(MAX_STEPS_PER_JOB + 1);
    let e = one_error(&format!("jobs:\n  a:\n    steps: [{steps}]\n"));
    assert!(
        e.message
            .contains(&format!("over the limit of {MAX_STEPS_PER_JOB}")),
        "{e}"
    );

    let tags = "t, ".repeat(MAX_TAGS + 1);
    let e = one_error(&format!("jobs:\n  a:\n    tags: [{tags}]\n    steps: [x]\n"));
    assert!(
        e.message.contains(&format!("tags has {} entries", MAX_TAGS + 1)),
        "{e}"
    );
}

#[test]
fn anchors_aliases_tags_and_second_documents_are_refused_with_a_reason() {
    let e = one_error("x: &common {A: 1}\njobs:\n  a:\n    env: *common\n    steps: [x]\n");
    assert!(e.message.contains("anchors and aliases"), "{e}");
    assert!(e.hint.as_deref().unwrap_or("").contains("defaults:"), "{e:?}");
    assert_eq!(e.line, 1);
    let e = one_error("jobs:\n  a:\n    steps: [!!str x]\n");
    assert!(e.message.contains("YAML tags"), "{e}");
    let e = one_error("jobs:\n  a:\n    steps: [x]\n---\njobs: {}\n");
    assert!(e.message.contains("more than one YAML document"), "{e}");
}

#[test]
fn errors_beyond_the_cap_are_counted_not_listed() {
    let mut y = String::from("jobs:\n");
    for i in 0..(MAX_ERRORS + 50) {
        let _ = writeln!(y, "  j{i}:\n    needs: [nope{i}]\n    steps: [x]");
    }
    let errs = errors(&y);
    assert_eq!(errs.len(), MAX_ERRORS + 1);
    assert!(
        errs[MAX_ERRORS].message.contains("50 more problems not shown"),
        "{:?}",
        errs[MAX_ERRORS]
    );
}

#[test]
fn long_chains_and_wide_stages_validate_without_listing_every_edge() {
    // A chain of `needs` as long as the job cap: the cycle check is not
    // recursive.
    let mut y = String::from("jobs:\n  j0:\n    steps: [x]\n");
    for i in 1..MAX_JOBS {
        let _ = writeln!(y, "  j{i}:\n    needs: [j{}]\n    steps: [x]", i - 1);
    }
    let p = parse("ci.yaml", &y).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.jobs[MAX_JOBS - 1].depends_on, [MAX_JOBS - 2]);
    let order = p.dependency_order();
    assert_eq!(order, (0..MAX_JOBS).collect::<Vec<_>>());

    // Two stages: the second stage's jobs wait for the first without a
    // list of n² edges.
    let mut y = String::from("stages: [a, b]\njobs:\n");
    for i in 0..MAX_JOBS {
        let _ = writeln!(
            y,
            "  j{i}:\n    stage: {}\n    steps: [x]",
            if i < MAX_JOBS / 2 { "a" } else { "b" }
        );
    }
    let p = parse("ci.yaml", &y).unwrap();
    let last = &p.jobs[MAX_JOBS - 1];
    assert!(last.waits_for_earlier_stages && last.depends_on.is_empty());
    assert_eq!(last.stage_index, 1);
    assert_eq!(
        p.dependencies(MAX_JOBS - 1),
        (0..MAX_JOBS / 2).collect::<Vec<_>>()
    );
    let order = p.dependency_order();
    let pos = |i: usize| order.iter().position(|&o| o == i).unwrap();
    assert!(pos(0) < pos(MAX_JOBS - 1) && pos(MAX_JOBS / 2 - 1) < pos(MAX_JOBS / 2));
}

#[test]
fn cycles_through_stage_order_are_found() {
    // `a` (stage 2, no needs) waits for `b` (stage 1), which needs `a`.
    let e = one_error("stages: [one, two]\njobs:\n  b:\n    stage: one\n    needs: [a]\n    steps: [x]\n  a:\n    stage: two\n    steps: [x]\n");
    assert!(
        e.message.contains("cycle: b -> a -> b") || e.message.contains("cycle: a -> b -> a"),
        "{e}"
    );
}

// ---- defaults and hints for users of other CI systems ----

#[test]
fn defaults_apply_to_every_job_that_does_not_set_its_own() {
    let p = parse(
        "ci.yaml",
        "env: {A: pipeline}\ndefaults:\n  shell: bash -eo pipefail -c\n  env: {A: defaults, B: defaults}\n  timeout: 10m\n  tags: [linux]\n  retry: 1\njobs:\n  plain:\n    steps: [x]\n  own:\n    shell: sh -c\n    env: {B: job}\n    timeout: 1m\n    tags: [mac]\n    retry: 0\n    steps: [x]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plain = &p.jobs[0].spec;
    assert_eq!(plain.shell, ["bash", "-eo", "pipefail", "-c"]);
    assert_eq!(
        plain.env,
        [("A".into(), "defaults".into()), ("B".into(), "defaults".into())]
    );
    assert_eq!(
        (plain.timeout_ms, plain.tags.as_slice()),
        (600_000, &["linux".to_owned()][..])
    );
    assert_eq!(plain.retry.max_retries, 1);
    let own = &p.jobs[1].spec;
    assert_eq!(own.shell, ["sh", "-c"]);
    assert_eq!(
        own.env,
        [("A".into(), "defaults".into()), ("B".into(), "job".into())]
    );
    assert_eq!(
        (own.timeout_ms, own.tags.as_slice()),
        (60_000, &["mac".to_owned()][..])
    );
    assert_eq!(own.retry.max_retries, 0);
    let e = one_error("defaults:\n  image: x\njobs:\n  a:\n    steps: [x]\n");
    assert!(e.message.contains("unknown key `image` in defaults"), "{e}");
}

#[test]
fn github_and_gitlab_keys_get_the_valkyrie_equivalent() {
    for (yaml, needle) in [
        ("on: push\njobs:\n  a:\n    steps: [x]\n", "`triggers:`"),
        ("variables: {A: 1}\njobs:\n  a:\n    steps: [x]\n", "use `env:`"),
        ("default: {}\njobs:\n  a:\n    steps: [x]\n", "use `defaults:`"),
        (
            "jobs:\n  a:\n    strategy: {}\n    steps: [x]\n",
            "directly in the job, and `fail_fast:`",
        ),
        (
            "jobs:\n  a:\n    continue-on-error: true\n    steps: [x]\n",
            "`allow_failure: true`",
        ),
        ("jobs:\n  a:\n    runs-on: linux\n    steps: [x]\n", "use `tags:`"),
        ("jobs:\n  a:\n    script: [make]\n", "use `steps:`"),
        (
            "jobs:\n  a:\n    before_script: [x]\n    steps: [x]\n",
            "put the commands in `steps:`",
        ),
        (
            "jobs:\n  a:\n    container: rust\n    steps: [x]\n",
            "use `image:`",
        ),
        (
            "jobs:\n  a:\n    only: [main]\n    steps: [x]\n",
            "use `if:` with an expression",
        ),
        (
            "jobs:\n  a:\n    except: [main]\n    steps: [x]\n",
            "use `if:` with an expression",
        ),
        (
            "jobs:\n  a:\n    rules: []\n    steps: [x]\n",
            "use `if:` with an expression",
        ),
        (
            "jobs:\n  a:\n    timeout-minutes: 5\n    steps: [x]\n",
            "`timeout: 30m`",
        ),
        (
            "jobs:\n  a:\n    steps:\n      - run: x\n        working-directory: sub\n",
            "use `working_directory`",
        ),
        (
            "jobs:\n  a:\n    steps:\n      - uses: actions/checkout@v4\n",
            "no actions",
        ),
        ("jobs:\n  a:\n    <<: {x: 1}\n    steps: [x]\n", "defaults:"),
    ] {
        let errs = errors(yaml);
        assert!(
            errs.iter().any(
                |e| e.message.contains("unknown key") && e.hint.as_deref().unwrap_or("").contains(needle)
            ),
            "{yaml:?}: {errs:#?}"
        );
        assert!(
            errs.iter()
                .all(|e| !e.hint.as_deref().unwrap_or("").contains("`stage`?")
                    && !e.hint.as_deref().unwrap_or("").contains("`secrets`?")),
            "{yaml:?}: {errs:#?}"
        );
    }
    let e = one_error("jobs:\n  a:\n    fail-fast: false\n    steps: [x]\n");
    assert_eq!(
        e.hint.as_deref(),
        Some("use `fail_fast` (Valkyrie's keys use underscores)"),
        "{e}"
    );
}

fn job_names(p: &Pipeline) -> Vec<&str> {
    p.jobs.iter().map(|j| j.name.as_str()).collect()
}

#[test]
fn matrix_exclude_removes_and_include_extends_or_adds_combinations() {
    let p = parse(
        "ci.yaml",
        "jobs:\n  t:\n    matrix:\n      os: [linux, mac]\n      rust: [stable, beta]\n      exclude:\n        - {os: mac, rust: beta}\n      include:\n        - {os: linux, extra: yes}\n        - {os: windows, rust: stable}\n    steps:\n      - run: echo ${{ matrix.extra }}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        job_names(&p),
        [
            "t [os=linux, rust=stable, extra=yes]",
            "t [os=linux, rust=beta, extra=yes]",
            "t [os=mac, rust=stable]",
            "t [os=windows, rust=stable]",
        ]
    );
    assert_eq!(
        p.jobs[0].spec.steps[0].command,
        StepCommand::Shell("echo yes".into())
    );
    assert!(p.jobs[3].spec.env.contains(&("os".into(), "windows".into())));
    // A matrix of includes only: one job per entry.
    let p = parse(
        "ci.yaml",
        "jobs:\n  t:\n    matrix:\n      include: [{target: x86}, {target: arm}]\n    steps: [x]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(job_names(&p), ["t [target=x86]", "t [target=arm]"]);
}

#[test]
fn bad_matrix_include_and_exclude_entries_are_named() {
    let e = one_error(
        "jobs:\n  t:\n    matrix:\n      os: [linux, mac]\n      exclude:\n        - {oss: mac}\n    steps: [x]\n",
    );
    assert!(
        e.message
            .contains("matrix `exclude` names `oss`, which is not a key"),
        "{e}"
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean `os`?"));
    assert_eq!((e.line, e.column), (6, 12));
    let e = one_error(
        "jobs:\n  t:\n    matrix:\n      os: [linux, mac]\n      exclude:\n        - {os: macos}\n    steps: [x]\n",
    );
    assert!(
        e.message
            .contains("sets `os` to `macos`, which is not one of its values"),
        "{e}"
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean `mac`?"));
    let e = one_error(
        "jobs:\n  t:\n    matrix:\n      os: [linux]\n      exclude: [{os: linux}]\n    steps: [x]\n",
    );
    assert!(e.message.contains("no combination left after `exclude`"), "{e}");
    let e = one_error("jobs:\n  t:\n    matrix:\n      include: [linux]\n    steps: [x]\n");
    assert!(
        e.message.contains("a matrix `include` entry must be a mapping"),
        "{e}"
    );
}

#[test]
fn a_display_name_replaces_the_key_and_takes_matrix_values() {
    let p = parse(
        "ci.yaml",
        "jobs:\n  build:\n    name: Build the crate\n    steps: [x]\n  test:\n    name: test on ${{ matrix.os }}\n    needs: [build]\n    matrix:\n      os: [linux, mac]\n    steps: [x]\n  lint:\n    name: Lint\n    matrix:\n      rust: [stable]\n    steps: [x]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        job_names(&p),
        [
            "Build the crate",
            "test on linux",
            "test on mac",
            "Lint [rust=stable]"
        ]
    );
    assert_eq!(p.jobs[1].spec.name, "test on linux");
    assert_eq!(
        p.jobs[1].depends_on,
        [0],
        "`needs` names the key, not the display name"
    );
    let e = one_error(
        "jobs:\n  test:\n    name: test\n    matrix:\n      os: [linux, mac]\n      rust: [a, b]\n    steps: [x]\n  t2:\n    name: ${{ matrix.os }}\n    matrix:\n      os: [linux, mac]\n      rust: [a, b]\n    steps: [x]\n",
    );
    assert!(
        e.message.contains("job `t2` is shown as `linux`, like job `t2`"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (9, 11));
}

#[test]
fn fail_fast_groups_the_legs_of_a_matrix_unless_turned_off() {
    let p = parse(
        "ci.yaml",
        "fail_fast: true\njobs:\n  a:\n    matrix:\n      os: [linux, mac]\n    steps: [x]\n  b:\n    fail_fast: false\n    matrix:\n      os: [linux, mac]\n    steps: [x]\n  c:\n    steps: [x]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let groups: Vec<Option<usize>> = p.jobs.iter().map(|j| j.fail_fast_group).collect();
    assert_eq!(groups, [Some(0), Some(0), None, None, None]);
    assert!(p.fail_fast);
    assert!(
        !parse("ci.yaml", "jobs:\n  a:\n    steps: [x]\n")
            .unwrap()
            .fail_fast
    );
    let e = one_error("jobs:\n  a:\n    fail_fast: maybe\n    steps: [x]\n");
    assert!(e.message.contains("fail_fast must be true or false"), "{e}");
}

#[test]
fn steps_take_an_if_condition() {
    use valkyrie::message::StepCondition;
    let p = parse(
        "ci.yaml",
        "jobs:\n  a:\n    steps:\n      - make\n      - run: notify\n        if: failure()\n      - run: clean\n        if: always\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conditions: Vec<StepCondition> = p.jobs[0].spec.steps.iter().map(|s| s.condition).collect();
    assert_eq!(
        conditions,
        [
            StepCondition::OnSuccess,
            StepCondition::OnFailure,
            StepCondition::Always
        ]
    );
    let e = one_error("jobs:\n  a:\n    steps:\n      - run: x\n        if: sometimes\n");
    assert!(
        e.message
            .contains("a step of job `a` has an unknown `if` condition `sometimes`"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (5, 13));
}

// ---- artifacts ----

#[test]
fn artifacts_are_parsed_and_needed_jobs_are_their_sources() {
    let p = parse(
        "ci.yaml",
        "jobs:\n  build:\n    steps: [make]\n    artifacts:\n      paths: [dist/, '*.xml']\n      exclude: ['**/*.log']\n      expire_in: 7d\n      when: always\n  lint:\n    steps: [lint]\n  test:\n    needs: [build, lint]\n    steps: [test]\n  package:\n    needs: [build]\n    dependencies: []\n    steps: [pack]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let idx = |n: &str| p.jobs.iter().position(|j| j.name == n).unwrap();
    let a = p.jobs[idx("build")].spec.artifacts.as_deref().unwrap();
    assert_eq!(a.paths, ["dist/", "*.xml"]);
    assert_eq!(a.exclude, ["**/*.log"]);
    assert_eq!(a.expire_in_ms, 7 * 24 * 3600 * 1000);
    assert_eq!(a.when, valkyrie::message::ArtifactWhen::Always);
    // `lint` uploads nothing: only `build` is a source.
    assert_eq!(p.artifact_sources(idx("test")), vec![idx("build")]);
    // `dependencies: []` opts out.
    assert_eq!(p.artifact_sources(idx("package")), Vec::<usize>::new());
}

#[test]
fn artifact_mistakes_have_positions_and_hints() {
    let e =
        one_error("jobs:\n  b:\n    steps: [x]\n    artifacts:\n      path: [dist]\n      paths: [dist]\n");
    assert_eq!((e.line, e.column), (5, 7));
    assert!(e.message.contains("unknown key `path`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `paths`?"));

    let e = one_error("jobs:\n  b:\n    steps: [x]\n    artifacts:\n      paths: [../secrets]\n");
    assert!(e.message.contains("leaves the workspace"), "{e}");
    let e = one_error("jobs:\n  b:\n    steps: [x]\n    artifacts:\n      paths: [/etc]\n");
    assert!(e.message.contains("leaves the workspace"), "{e}");

    let e =
        one_error("jobs:\n  b:\n    steps: [x]\n    artifacts:\n      paths: [d]\n      when: sometimes\n");
    assert!(e.message.contains("unknown `when` `sometimes`"), "{e}");

    let e = one_error(
        "jobs:\n  build:\n    steps: [x]\n  test:\n    needs: [build]\n    dependencies: [biuld]\n    steps: [y]\n",
    );
    assert_eq!((e.line, e.column), (6, 20));
    assert!(e.message.contains("takes the artifacts of `biuld`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `build`?"));
}

// ---- caches ----

#[test]
fn caches_are_parsed_with_defaults_and_matrix_values() {
    use valkyrie::message::{ArtifactWhen, CachePolicy};
    let p = parse(
        "ci.yaml",
        "defaults:\n  cache:\n    key: cargo-${{ hashFiles('Cargo.lock', 'x/**/*.lock') }}\n    paths: [target/]\n    fallback_keys: [cargo-]\njobs:\n  build:\n    steps: [make]\n  lint:\n    matrix:\n      os: [linux, mac]\n    cache:\n      - key: npm-${{ matrix.os }}-$CACHE_V\n        paths: node_modules\n        policy: pull\n        when: always\n      - {key: second, paths: [b/], policy: push}\n    steps: [lint]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let build = &p.jobs.iter().find(|j| j.name == "build").unwrap().spec.cache;
    assert_eq!(build.len(), 1, "from defaults");
    assert_eq!(
        build[0].key,
        "cargo-${{ hashFiles('Cargo.lock', 'x/**/*.lock') }}"
    );
    assert_eq!(build[0].paths, ["target/"]);
    assert_eq!(build[0].fallback_keys, ["cargo-"]);
    assert_eq!(build[0].policy, CachePolicy::PullPush);
    assert_eq!(build[0].when, ArtifactWhen::OnSuccess);
    let lint = &p
        .jobs
        .iter()
        .find(|j| j.name.contains("os=mac"))
        .unwrap()
        .spec
        .cache;
    assert_eq!(lint.len(), 2, "a job's own list replaces the default");
    assert_eq!(lint[0].key, "npm-mac-$CACHE_V");
    assert_eq!(lint[0].paths, ["node_modules"]);
    assert_eq!(
        (lint[0].policy, lint[0].when),
        (CachePolicy::Pull, ArtifactWhen::Always)
    );
    assert_eq!(lint[1].policy, CachePolicy::Push);
}

#[test]
fn cache_mistakes_have_positions_and_hints() {
    let e = one_error(
        "jobs:\n  b:\n    steps: [x]\n    cache:\n      key: k\n      path: [d]\n      paths: [d]\n",
    );
    assert_eq!((e.line, e.column), (6, 7));
    assert!(e.message.contains("unknown key `path` in job `b` cache"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `paths`?"));

    let e = one_error("jobs:\n  b:\n    steps: [x]\n    cache: {key: k, paths: [../up]}\n");
    assert!(
        e.message
            .contains("job `b` cache paths `../up` leaves the workspace"),
        "{e}"
    );
    let e = one_error("jobs:\n  b:\n    steps: [x]\n    cache: {key: k, paths: [/etc]}\n");
    assert!(e.message.contains("leaves the workspace"), "{e}");
    let e = one_error("jobs:\n  b:\n    steps: [x]\n    cache: {paths: [d]}\n");
    assert!(e.message.contains("job `b` cache has no `key`"), "{e}");
    let e = one_error("jobs:\n  b:\n    steps: [x]\n    cache: {key: k}\n");
    assert!(e.message.contains("has no `paths`"), "{e}");

    let e = one_error(
        "jobs:\n  b:\n    steps: [x]\n    cache:\n      key: k\n      paths: [d]\n      policy: pul\n",
    );
    assert_eq!((e.line, e.column), (7, 15));
    assert!(e.message.contains("unknown `policy` `pul`"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `pull`?"));
    let e = one_error(
        "jobs:\n  b:\n    steps: [x]\n    cache:\n      key: k\n      paths: [d]\n      when: on_sucess\n",
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean `on_success`?"));

    let e = one_error(
        "jobs:\n  b:\n    steps: [x]\n    cache:\n      key: k-${{ hashfiles('Cargo.lock') }}\n      paths: [d]\n",
    );
    assert_eq!((e.line, e.column), (5, 12));
    assert!(e.message.contains("unknown function `hashfiles`"), "{e}");
    assert!(e.message.contains("(at character 7)"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `hashFiles`?"));
    let e = one_error(
        "jobs:\n  b:\n    steps: [x]\n    cache:\n      key: k\n      fallback_keys: [\"${{ hashFiles('../x') }}\"]\n      paths: [d]\n",
    );
    assert!(e.message.contains("fallback_keys"), "{e}");
    assert!(e.message.contains("leaves the workspace"), "{e}");

    let five = "      - {key: k, paths: [d]}\n".repeat(5);
    let e = one_error(&format!("jobs:\n  b:\n    steps: [x]\n    cache:\n{five}"));
    assert!(
        e.message
            .contains("job `b` cache has 5 entries, over the limit of 4"),
        "{e}"
    );

    let e = one_error("cache: {key: k, paths: [d]}\njobs:\n  b:\n    steps: [x]\n");
    assert_eq!(
        e.hint.as_deref(),
        Some("put `cache:` in `defaults:` (for every job) or in a job")
    );
}

#[test]
fn if_expressions_when_manual_and_workflow_are_parsed() {
    let p = parse(
        "ci.yaml",
        "workflow:\n  if: $VALKYRIE_EVENT != \"schedule\"\nenv:\n  TARGET: staging\njobs:\n  build:\n    steps: [make]\n  deploy:\n    needs: [build]\n    if: $VALKYRIE_BRANCH == \"main\" && $DEPLOY\n    when: manual\n    steps: [deploy]\n  report:\n    if: always() && $VALKYRIE_BRANCH =~ /^rel/\n    steps: [report]\n  plain:\n    if: on_failure\n    steps: [x]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let job = |n: &str| p.jobs.iter().find(|j| j.name == n).unwrap();
    assert!(p.workflow_rule.is_some());
    assert_eq!(p.env, [("TARGET".to_owned(), "staging".to_owned())]);
    let deploy = job("deploy");
    assert!(deploy.manual);
    assert_eq!(deploy.condition, Condition::OnSuccess);
    assert_eq!(
        deploy.rule.as_ref().map(ToString::to_string).as_deref(),
        Some("$VALKYRIE_BRANCH == \"main\" && $DEPLOY")
    );
    assert_eq!(
        job("report").condition,
        Condition::Always,
        "it reads the needs' status itself"
    );
    assert!(job("plain").rule.is_none() && job("plain").condition == Condition::OnFailure);
    assert!(!job("build").manual && job("build").rule.is_none());
}

#[test]
fn expression_errors_point_inside_the_scalar() {
    // Plain scalar: `if:` value starts at column 9; `and` is 10 bytes in.
    let e = one_error("jobs:\n  a:\n    if: $A == \"x\" and $B\n    steps: [x]\n");
    assert_eq!((e.line, e.column), (3, 19), "{e}");
    assert!(
        e.message.starts_with("the `if` of job `a`: unexpected text"),
        "{e}"
    );
    assert_eq!(e.hint.as_deref(), Some("use `&&`"));
    // Quoted scalar: one more for the quote.
    let e = one_error("jobs:\n  a:\n    if: '$A = \"x\"'\n    steps: [x]\n");
    assert_eq!((e.line, e.column), (3, 13), "{e}");
    assert_eq!(e.hint.as_deref(), Some("compare with `==`"));
    // Block scalar: the line and column inside the block.
    let e = one_error(
        "jobs:\n  a:\n    if: |\n      $A == \"x\" &&\n        startWith($B, \"y\")\n    steps: [x]\n",
    );
    assert_eq!((e.line, e.column), (5, 9), "{e}");
    assert_eq!(e.hint.as_deref(), Some("did you mean `startsWith`?"));
    let e = one_error("jobs:\n  a:\n    if: $A =~ /(/\n    steps: [x]\n");
    assert_eq!((e.line, e.column), (3, 15), "{e}");
    assert!(e.message.contains("bad regular expression"), "{e}");
}

#[test]
fn when_and_workflow_are_checked() {
    let e = one_error("jobs:\n  a:\n    when: never\n    steps: [x]\n");
    assert_eq!((e.line, e.column), (3, 11));
    assert!(e.message.contains("unknown `when` `never`"), "{e}");
    assert!(e.hint.unwrap().contains("if: false"));
    let e = one_error("jobs:\n  a:\n    when: delayed\n    steps: [x]\n");
    assert_eq!(e.hint.as_deref(), Some("delayed jobs are not supported yet"));
    let e = one_error("workflow:\n  if: always()\njobs:\n  a:\n    steps: [x]\n");
    assert!(
        e.message
            .contains("`workflow: if` is decided before any job runs"),
        "{e}"
    );
    let e = one_error("workflow:\n  iff: $A\njobs:\n  a:\n    steps: [x]\n");
    assert!(e.message.contains("unknown key `iff` in workflow"), "{e}");
    let e = one_error("jobs:\n  a:\n    rules: [x]\n    steps: [x]\n");
    assert!(
        e.hint.unwrap().contains("if: $VALKYRIE_BRANCH"),
        "GitLab users are pointed to `if:`"
    );
}

#[test]
fn checkout_takes_a_depth() {
    let p = parse(
        "ci.yaml",
        "jobs:\n  a:\n    checkout: {depth: 50}\n    steps: [x]\n  b:\n    checkout: false\n    steps: [x]\n  c:\n    steps: [x]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let job = |n: &str| p.jobs.iter().find(|j| j.name == n).unwrap();
    assert_eq!((job("a").checkout, job("a").checkout_depth), (true, Some(50)));
    assert_eq!((job("b").checkout, job("b").checkout_depth), (false, None));
    assert_eq!((job("c").checkout, job("c").checkout_depth), (true, None));
    let e = one_error("jobs:\n  a:\n    checkout: {depth: -1}\n    steps: [x]\n");
    assert_eq!((e.line, e.column), (3, 23));
    assert!(
        e.message
            .contains("job `a` checkout depth `-1` is not a number of commits"),
        "{e}"
    );
    let e = one_error("jobs:\n  a:\n    checkout: {deep: 1}\n    steps: [x]\n");
    assert_eq!(e.hint.as_deref(), Some("did you mean `depth`?"));
}
