//! `GET /metrics`: the core's counters and histograms, the gauges of its
//! state (computed from a snapshot at scrape time), and the HTTP request
//! metrics. Names follow `valkyrie_<area>_<name>_<unit>`.
//!
//! Content negotiation: a scraper whose `Accept` names
//! `application/openmetrics-text` gets OpenMetrics 1.0.0; every other gets
//! the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), which
//! `promtool check metrics` accepts.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::error::ApiError;
use super::AppState;
use valkyrie::message::{JobState, RunState, RunnerState};

use crate::core::CoreSnapshot;
use crate::metrics::{HttpLabel, PriorityLabel, TransportLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A gauge per state: every known state (at 0 when empty, so series do
/// not vanish), plus any other the snapshot names.
fn state_gauges(
    known: impl IntoIterator<Item = &'static str>,
    counts: &std::collections::BTreeMap<&'static str, u64>,
) -> Family<StateLabel, Gauge> {
    let family = Family::<StateLabel, Gauge>::default();
    for state in known {
        drop(family.get_or_create(&StateLabel {
            state: state.to_owned(),
        }));
    }
    for (state, n) in counts {
        family
            .get_or_create(&StateLabel {
                state: (*state).to_owned(),
            })
            .set(*n as i64);
    }
    family
}

/// Encodes the static metrics and the gauges of `snapshot`, in OpenMetrics.
pub fn encode(metrics: &crate::metrics::Metrics, snapshot: &CoreSnapshot) -> String {
    for transport in ["unix", "tcp", "tls", "quic"] {
        // Zero until a connection opens, so each transport's series exists.
        drop(metrics.connections.get_or_create(&TransportLabel {
            transport: transport.into(),
        }));
    }
    // Every priority seen keeps its series (at 0 once none is queued), and
    // the default one always exists, so an empty queue reads 0, not nothing.
    for priority in 0..=u8::MAX {
        let label = PriorityLabel {
            priority: priority.to_string(),
        };
        let n = snapshot.queued_by_priority.get(&priority).copied().unwrap_or(0);
        if n > 0 || priority == 0 {
            metrics.queue_depth.get_or_create(&label).set(n as i64);
        } else if let Some(gauge) = metrics.queue_depth.get(&label) {
            gauge.set(0);
        }
    }
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let valkyrie = registry.sub_registry_with_prefix("valkyrie");
    valkyrie.register_with_unit(
        "jobs_state",
        "Jobs held in memory, by state",
        Unit::Other("jobs".into()),
        state_gauges(JobState::ALL.iter().map(|s| s.as_str()), &snapshot.jobs_by_state),
    );
    valkyrie.register_with_unit(
        "runners_state",
        "Registered runners, by state",
        Unit::Other("runners".into()),
        state_gauges(
            RunnerState::ALL.iter().map(|s| s.as_str()),
            &snapshot.runners_by_state,
        ),
    );
    valkyrie.register_with_unit(
        "runs_state",
        "Pipeline runs held in memory, by state",
        Unit::Other("runs".into()),
        state_gauges(RunState::ALL.iter().map(|s| s.as_str()), &snapshot.runs_by_state),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// Rewrites OpenMetrics text as the Prometheus text format 0.0.4:
/// counters are named with their `_total` suffix in `# HELP` and `# TYPE`
/// (as their samples are), and `# UNIT` and `# EOF` are left out.
/// (prometheus-client writes only OpenMetrics.)
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether `headers` ask for OpenMetrics.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().starts_with("application/openmetrics-text"))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Metrics: OpenMetrics when asked for (Accept: application/openmetrics-text), else the Prometheus text format 0.0.4",
        content((String = "text/plain"), (String = "application/openmetrics-text"))),
        (status = 503, body = super::error::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let snapshot = state.core.snapshot().await.ok_or_else(ApiError::core_stopped)?;
    let text = encode(state.core.metrics(), &snapshot);
    Ok(if wants_openmetrics(&headers) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text)
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&text),
        )
    })
}

/// Counts and times a routed request by method, route template (given
/// where the route is declared) and status.
pub async fn record_http(
    State((state, route)): State<(AppState, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = route.to_owned();
    let response = next.run(request).await;
    let label = HttpLabel {
        method,
        route,
        status: response.status().as_u16(),
    };
    let metrics = state.core.metrics();
    metrics.http_requests.get_or_create(&label).inc();
    metrics
        .http_request_duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP a_jobs Jobs.\n# TYPE a_jobs counter\n# UNIT a_jobs jobs\na_jobs_total 3\n# HELP b_seconds B.\n# TYPE b_seconds gauge\nb_seconds 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_jobs_total Jobs.\n# TYPE a_jobs_total counter\na_jobs_total 3\n# HELP b_seconds B.\n# TYPE b_seconds gauge\nb_seconds 1\n"
        );
    }
}
