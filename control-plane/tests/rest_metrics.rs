//! `/metrics`: content negotiation, the Prometheus text format that
//! promtool accepts, the dispatch latency of a real dispatch, HTTP request
//! metrics by route template, and a queue depth that reads 0 when empty.

mod rest_support;

use std::time::Instant;

use reqwest::StatusCode;
use rest_support::*;
use valkyrie_control_plane::rest::auth::Role;

async fn scrape(server: &TestServer, accept: Option<&str>) -> (String, String) {
    let mut request = server.http.get(server.url("/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, response.text().await.unwrap())
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_are_negotiated_and_promtool_accepts_them() {
    let server = start(|c| c).await;
    let (om_type, om) = scrape(&server, Some("application/openmetrics-text; version=1.0.0")).await;
    assert!(om_type.starts_with("application/openmetrics-text"), "{om_type}");
    assert!(om.ends_with("# EOF\n"));
    for accept in [
        Some("text/plain; version=0.0.4"),
        Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
        None,
    ] {
        let (content_type, text) = scrape(&server, accept).await;
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(
            text.contains("# HELP valkyrie_jobs_submitted_jobs_total "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE valkyrie_logs_received_bytes_total counter"),
            "{text}"
        );
    }
    // An empty queue reads 0, not nothing.
    let (_, text) = scrape(&server, None).await;
    assert_eq!(
        sample(&text, "valkyrie_queue_depth_jobs{priority=\"0\"}"),
        Some(0.0),
        "{text}"
    );

    // promtool (which reads the text format 0.0.4 only) lints the text
    // format; prometheus-client's strict OpenMetrics parser checks the
    // OpenMetrics answer. Both are required: scripts/test installs them.
    let out = run_with_stdin("promtool", &["check", "metrics"], &text);
    assert!(
        out.status.success(),
        "promtool check metrics refuses the text format: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_with_stdin("python3", &["-c", OPENMETRICS_CHECK], &om);
    let families = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the OpenMetrics parser refuses the OpenMetrics answer: {families}{}\n{om}",
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "valkyrie_jobs_submitted_jobs counter",
        "valkyrie_dispatch_latency_seconds histogram",
        "valkyrie_queue_depth_jobs gauge",
    ] {
        assert!(
            families.lines().any(|l| l == family),
            "{family} not parsed:\n{families}"
        );
    }
}

/// Parses OpenMetrics from stdin with prometheus-client's parser (which
/// refuses a missing `# EOF`, a UNIT that does not end the name, a sample
/// outside its family, …) and prints each family's name and type.
const OPENMETRICS_CHECK: &str = r#"
import sys
try:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
except ImportError:
    sys.exit("prometheus-client is not installed: python3 -m pip install prometheus-client==0.26.0 (scripts/test does)")
for family in text_string_to_metric_families(sys.stdin.read()):
    print(family.name, family.type)
"#;

/// Runs `program` with `args` and `input` on stdin; a missing program
/// fails the test (it is required, not optional).
fn run_with_stdin(program: &str, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} cannot be started ({e}): scripts/test installs it"));
    // Written from another thread, so a child that answers before it has
    // read everything cannot deadlock with us.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

#[tokio::test]
async fn http_requests_are_counted_by_route_template_and_status() {
    let server = start(|c| c).await;
    let viewer = server.token(Role::Viewer);
    for id in [7, 8, 9] {
        let response = server.get(&format!("/api/ci/pipelines/{id}"), &viewer).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let (_, text) = scrape(&server, None).await;
    let labels = "{method=\"GET\",route=\"/api/ci/pipelines/{id}\",status=\"404\"}";
    assert_eq!(
        sample(&text, &format!("valkyrie_http_requests_total{labels}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("valkyrie_http_request_duration_seconds_count{labels}")
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        !text.contains("/api/ci/pipelines/7"),
        "concrete paths leak into labels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_latency_measures_the_wait_in_the_queue() {
    // A job queued with no runner, then a runner: the job waited at least
    // as long as the test took between its acceptance and the runner's start.
    let mut server = start(|c| c).await;
    let submitted = Instant::now();
    let response = server
        .post_yaml(
            "/api/ci/pipelines",
            &server.api_token,
            "name: one\njobs:\n  a:\n    steps: [echo hi]\n",
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &server.api_token)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let accepted = Instant::now();
    // Wait (for an event, not a fixed time) until the job is queued and
    // some time has visibly passed, so the lower bound is not trivial.
    eventually("the job is queued", || async {
        let (_, text) = scrape(&server, None).await;
        (sample(&text, "valkyrie_queue_depth_jobs{priority=\"0\"}") == Some(1.0)).then_some(())
    })
    .await;
    let before_agent = accepted.elapsed();
    server.add_agent().await;
    let text = eventually("a dispatch is observed", || async {
        let (_, text) = scrape(&server, None).await;
        (sample(&text, "valkyrie_dispatch_latency_seconds_count").unwrap_or(0.0) >= 1.0).then_some(text)
    })
    .await;
    let upper = submitted.elapsed();
    let sum = sample(&text, "valkyrie_dispatch_latency_seconds_sum").unwrap();
    let count = sample(&text, "valkyrie_dispatch_latency_seconds_count").unwrap();
    assert!(count >= 1.0);
    // The first job dispatched waited at least from its acceptance to the
    // runner's registration, and at most the whole test.
    assert!(
        sum >= before_agent.as_secs_f64(),
        "sum {sum} < {before_agent:?}:\n{text}"
    );
    assert!(
        sum <= upper.as_secs_f64() * count,
        "sum {sum} > {upper:?} × {count}"
    );
    let lowest = sample(&text, "valkyrie_dispatch_latency_seconds_bucket{le=\"1e-5\"}")
        .or_else(|| sample(&text, "valkyrie_dispatch_latency_seconds_bucket{le=\"0.00001\"}"))
        .expect("the lowest bucket");
    assert_eq!(
        lowest, 0.0,
        "a dispatch that waited {before_agent:?} fell in the lowest bucket:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_dispatch_measures_a_nonzero_wait() {
    // With a free runner a job is assigned in the core turn that queued
    // it, well under a millisecond. Measured in whole milliseconds since
    // the epoch, as it was, such waits read 0 and the sum stayed 0.
    let server = start_with_agent().await;
    let started = Instant::now();
    let id = server.create_hello().await;
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &server.api_token)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = eventually("both jobs are dispatched", || async {
        let (_, text) = scrape(&server, None).await;
        (sample(&text, "valkyrie_dispatch_latency_seconds_count").unwrap_or(0.0) >= 2.0).then_some(text)
    })
    .await;
    let sum = sample(&text, "valkyrie_dispatch_latency_seconds_sum").unwrap();
    assert!(sum > 0.0, "dispatches measured a zero wait:\n{text}");
    assert!(
        sum <= 2.0 * started.elapsed().as_secs_f64(),
        "sum {sum} is more than the test's duration allows"
    );
}
