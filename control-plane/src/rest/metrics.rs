//! `GET /metrics`: the core's counters and histograms, and the gauges of
//! its state, computed from a snapshot at scrape time, in the
//! OpenMetrics text format Prometheus scrapes. Names follow
//! `valkyrie_<area>_<name>_<unit>`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::error::ApiError;
use super::AppState;
use valkyrie::message::{JobState, RunState, RunnerState};

use crate::core::CoreSnapshot;
use crate::metrics::TransportLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabel {
    priority: String,
}

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// Encodes the static metrics and the gauges of `snapshot`.
pub fn encode(metrics: &crate::metrics::Metrics, snapshot: &CoreSnapshot) -> String {
    for transport in ["unix", "tcp", "tls", "quic"] {
        // Zero until a connection opens, so each transport's series exists.
        drop(metrics.connections.get_or_create(&TransportLabel {
            transport: transport.into(),
        }));
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
    let queue = Family::<PriorityLabel, Gauge>::default();
    for (priority, n) in &snapshot.queued_by_priority {
        queue
            .get_or_create(&PriorityLabel {
                priority: priority.to_string(),
            })
            .set(*n as i64);
    }
    valkyrie.register_with_unit(
        "queue_depth",
        "Queued jobs, by priority",
        Unit::Other("jobs".into()),
        queue,
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "application/openmetrics-text", description = "Metrics")))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let snapshot = state.core.snapshot().await.ok_or_else(ApiError::core_stopped)?;
    let text = encode(state.core.metrics(), &snapshot);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}
