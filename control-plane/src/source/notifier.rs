//! The notifier: sends the commit statuses and webhooks that
//! [`super::status`] makes of the run notices the core leaves after each
//! commit. It runs beside the core, so only the leader posts.
//!
//! ```text
//!  core --after commit--> RunNotices::offer (never waits)
//!     --shard = run id % workers--> queue (bounded: when full, the oldest
//!                                   notice is dropped, logged and counted)
//!  worker, one per shard (so one run's notices go out in order):
//!     commit status POST ─┐ refused connection, timeout, 408, 429, 5xx:
//!     webhook POST (end) ─┴ retried after a growing backoff, `attempts` times at most;
//!                           a status a newer notice of the same run supersedes is not retried
//! ```
//!
//! Nothing here slows the core or fails a run: a delivery that still
//! fails after its attempts is logged (`warn`) and counted
//! (`valkyrie_notify_deliveries_requests_total{outcome="failed"}`). Tokens and
//! signatures are never logged.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::status::{status_request, webhook_request, Outbound, RunNotice, Target};

/// Tunables of the notifier.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    workers: usize,
    queue_per_worker: usize,
    attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
    request_timeout: Duration,
    base_url: Option<String>,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            queue_per_worker: 1024,
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            base_url: None,
        }
    }
}

impl NotifierConfig {
    /// Workers, each sending one run's notices in order. Default 4.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Notices waiting per worker before the oldest is dropped. Default 1024.
    pub fn queue_per_worker(mut self, notices: usize) -> Self {
        self.queue_per_worker = notices.max(1);
        self
    }

    /// Tries per request, the first included. Default 5.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Wait before the first retry; doubled after each, up to
    /// `max_backoff`, with jitter. Defaults 500 ms and 30 s.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// Limit on one request, connecting included. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The server's own URL (`http://ci.example:8080`): statuses link to
    /// `{url}/api/ci/executions/{run}`. Default none (no link).
    pub fn base_url(mut self, url: Option<String>) -> Self {
        self.base_url = url;
        self
    }
}

/// The labels of the delivery counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    /// `github`, `gitlab` or `webhook`.
    pub target: String,
    /// `delivered`, `failed` (refused, or out of attempts) or `superseded`
    /// (a newer state of the run was queued while it was retried).
    pub outcome: String,
}

/// The notifier's metrics.
#[derive(Debug, Clone, Default)]
pub struct NotifyMetrics {
    /// Requests finished, by target and outcome.
    pub deliveries: Family<DeliveryLabel, Counter<u64, AtomicU64>>,
    /// Attempts that failed and were retried.
    pub retries: Counter<u64, AtomicU64>,
    /// Notices dropped because their worker's queue was full.
    pub dropped: Counter<u64, AtomicU64>,
}

impl NotifyMetrics {
    /// Registers them under `registry` (the `valkyrie` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "notify_deliveries",
            "Commit status and webhook requests finished, by target and outcome",
            Unit::Other("requests".into()),
            self.deliveries.clone(),
        );
        registry.register_with_unit(
            "notify_retries",
            "Commit status and webhook attempts that failed and were retried",
            Unit::Other("attempts".into()),
            self.retries.clone(),
        );
        registry.register_with_unit(
            "notify_dropped",
            "Run notices dropped because the notifier's queue was full",
            Unit::Other("notices".into()),
            self.dropped.clone(),
        );
    }

    fn count(&self, target: Target, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabel {
                target: target.as_str().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Why the notifier did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartNotifierError {
    /// The HTTP client could not be built (its TLS configuration).
    #[error("cannot build the notifier's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

struct Shard {
    queue: Mutex<VecDeque<RunNotice>>,
    wake: Notify,
}

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RunNotice>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn next(&self) -> RunNotice {
        loop {
            if let Some(notice) = self.lock().pop_front() {
                return notice;
            }
            // `notify_one` stores a permit when nobody waits: an offer
            // between the pop above and this await is not missed.
            self.wake.notified().await;
        }
    }

    /// Whether a newer notice of run `run_id` waits.
    fn has_newer(&self, run_id: u64) -> bool {
        self.lock().iter().any(|n| n.run.run_id == run_id)
    }
}

struct Shared {
    shards: Vec<Shard>,
    capacity: usize,
    metrics: NotifyMetrics,
}

/// Where the core leaves run notices: cheap to clone, and
/// [`offer`](Self::offer) never waits.
#[derive(Clone)]
pub struct RunNotices {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RunNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunNotices")
            .field("workers", &self.shared.shards.len())
            .field("queued", &self.queued())
            .finish()
    }
}

impl RunNotices {
    /// Queues `notice` for its run's worker; when that queue is full, its
    /// oldest notice is dropped (logged and counted).
    pub fn offer(&self, notice: RunNotice) {
        let shards = &self.shared.shards;
        let shard = &shards[(notice.run.run_id % shards.len() as u64) as usize];
        let dropped = {
            let mut queue = shard.lock();
            let dropped = (queue.len() >= self.shared.capacity)
                .then(|| queue.pop_front())
                .flatten();
            queue.push_back(notice);
            dropped
        };
        shard.wake.notify_one();
        if let Some(old) = dropped {
            self.shared.metrics.dropped.inc();
            warn!(
                project = %old.project.name,
                run_id = old.run.run_id,
                state = old.run.state.as_str(),
                "the notifier's queue is full (is the forge or the webhook receiver down?): the oldest run notice was dropped"
            );
        }
    }

    /// Notices waiting to be sent.
    pub fn queued(&self) -> usize {
        self.shared.shards.iter().map(|s| s.lock().len()).sum()
    }
    /// A queue no worker takes from (tests of the core read it with
    /// [`take_all`](Self::take_all)).
    #[cfg(test)]
    pub(crate) fn unstarted() -> Self {
        Self {
            shared: shared(&NotifierConfig::default().workers(1), NotifyMetrics::default()),
        }
    }

    /// Every notice waiting, oldest first, taken off the queues.
    #[cfg(test)]
    pub(crate) fn take_all(&self) -> Vec<RunNotice> {
        self.shared
            .shards
            .iter()
            .flat_map(|s| s.lock().drain(..).collect::<Vec<_>>())
            .collect()
    }
}

/// Starts the notifier's workers (on the current Tokio runtime); returns
/// where the core leaves its notices.
pub fn spawn(config: NotifierConfig, metrics: NotifyMetrics) -> Result<RunNotices, StartNotifierError> {
    // TLS for the HTTP client: ring, as everywhere else in Valkyrie (an
    // error means a provider is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("valkyrie/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(StartNotifierError::Client)?;
    let shared = shared(&config, metrics);
    for index in 0..config.workers {
        let worker = Worker {
            shared: shared.clone(),
            index,
            client: client.clone(),
            config: config.clone(),
        };
        tokio::spawn(worker.run());
    }
    Ok(RunNotices { shared })
}

fn shared(config: &NotifierConfig, metrics: NotifyMetrics) -> Arc<Shared> {
    Arc::new(Shared {
        shards: (0..config.workers)
            .map(|_| Shard {
                queue: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
            })
            .collect(),
        capacity: config.queue_per_worker,
        metrics,
    })
}

struct Worker {
    shared: Arc<Shared>,
    index: usize,
    client: reqwest::Client,
    config: NotifierConfig,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Worth another try (connection, timeout, 408, 429, 5xx).
    Retry(String),
    /// Not worth another try (another 4xx, a request that cannot be built).
    Refused(String),
}

/// The first bytes of an answer's body, for a log line (bounded).
async fn body_start(mut response: reqwest::Response) -> String {
    const MAX: usize = 512;
    let mut bytes = Vec::new();
    while bytes.len() < MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(MAX - bytes.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// An error and its causes, without the URL (a webhook URL may hold a
/// token of the receiver's).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Worker {
    async fn run(self) {
        loop {
            let notice = self.shared.shards[self.index].next().await;
            let base = self.config.base_url.as_deref();
            if let Some(request) = status_request(&notice, base) {
                self.deliver(&notice, request).await;
            }
            let delivery = format!("r{}-{:016x}", notice.run.run_id, fastrand::u64(..));
            if let Some(request) = webhook_request(&notice, &delivery, base) {
                self.deliver(&notice, request).await;
            }
        }
    }

    async fn attempt(&self, request: &Outbound) -> Attempt {
        let mut builder = self
            .client
            .post(&request.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        match builder.send().await {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) => {
                let status = response.status();
                let why = format!("HTTP {status}: {}", body_start(response).await);
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    Attempt::Retry(why)
                } else {
                    Attempt::Refused(why)
                }
            }
            Err(err) if err.is_builder() => Attempt::Refused(describe(err)),
            Err(err) => Attempt::Retry(describe(err)),
        }
    }

    /// Sends `request`, retrying what may pass later; logs and counts the
    /// outcome. Never fails.
    async fn deliver(&self, notice: &RunNotice, request: Outbound) {
        let metrics = &self.shared.metrics;
        let (project, run_id, state) = (&notice.project.name, notice.run.run_id, notice.run.state.as_str());
        let target = request.target.as_str();
        // The webhook's URL is not logged: it may carry the receiver's token.
        let url = match request.target {
            Target::Webhook => "(notify_url)",
            Target::Status(_) => request.url.as_str(),
        };
        let mut backoff = self.config.first_backoff;
        for attempt in 1..=self.config.attempts {
            let why = match self.attempt(&request).await {
                Attempt::Delivered => {
                    debug!(%project, run_id, state, target, attempt, "run state posted");
                    metrics.count(request.target, "delivered");
                    return;
                }
                Attempt::Refused(why) => {
                    warn!(%project, run_id, state, target, url, %why, "the run's state was refused; not retried (check the project's status settings and token)");
                    metrics.count(request.target, "failed");
                    return;
                }
                Attempt::Retry(why) => why,
            };
            if attempt == self.config.attempts {
                warn!(%project, run_id, state, target, url, attempts = attempt, %why, "could not post the run's state; giving up");
                metrics.count(request.target, "failed");
                return;
            }
            if matches!(request.target, Target::Status(_)) && self.shared.shards[self.index].has_newer(run_id)
            {
                debug!(%project, run_id, state, target, "a newer state of the run waits: this one is not retried");
                metrics.count(request.target, "superseded");
                return;
            }
            let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            warn!(%project, run_id, state, target, url, attempt, %why, retry_in_ms = wait.as_millis() as u64, "could not post the run's state; retrying");
            metrics.retries.inc();
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::status::tests::notice;
    use crate::source::status::{StatusConfig, StatusForge};
    use valkyrie::message::RunState;

    fn delivered(metrics: &NotifyMetrics, outcome: &str) -> u64 {
        metrics
            .deliveries
            .get_or_create(&DeliveryLabel {
                target: "github".into(),
                outcome: outcome.into(),
            })
            .get()
    }

    /// Polls `check` every 10 ms until it holds, failing after 10 s.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_notice_and_counts_it() {
        let metrics = NotifyMetrics::default();
        let config = NotifierConfig::default().workers(1).queue_per_worker(2);
        // No workers: nothing is taken off the queue.
        let notices = RunNotices {
            shared: shared(&config, metrics.clone()),
        };
        for run_id in 1..=3 {
            let mut n = notice(StatusForge::Github, RunState::Running);
            n.run.run_id = run_id;
            notices.offer(n);
        }
        assert_eq!(notices.queued(), 2);
        assert_eq!(metrics.dropped.get(), 1);
        let left: Vec<u64> = notices.shared.shards[0]
            .lock()
            .iter()
            .map(|n| n.run.run_id)
            .collect();
        assert_eq!(left, [2, 3], "the oldest went");
    }

    /// A forge on loopback answering `status` to every request; returns
    /// its API URL and the count of requests it got.
    async fn forge(status: u16) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        let app = axum::Router::new().fallback(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { axum::http::StatusCode::from_u16(status).unwrap() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, count)
    }

    fn to(api_url: &str) -> RunNotice {
        let mut n = notice(StatusForge::Github, RunState::Succeeded);
        n.project.notify = None;
        n.project.status = Some(StatusConfig {
            api_url: api_url.to_owned(),
            ..n.project.status.clone().unwrap()
        });
        n
    }

    #[tokio::test]
    async fn failures_are_retried_a_bounded_number_of_times_and_refusals_not_at_all() {
        let config = NotifierConfig::default()
            .attempts(3)
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
            .request_timeout(Duration::from_secs(5));

        // 503 every time: three attempts, two retries, one failure.
        let metrics = NotifyMetrics::default();
        let notices = spawn(config.clone(), metrics.clone()).unwrap();
        let (url, count) = forge(503).await;
        notices.offer(to(&url));
        eventually("the delivery to fail", || delivered(&metrics, "failed") == 1).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(metrics.retries.get(), 2);

        // Nobody listening: likewise, and nothing else is held up.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        notices.offer(to(&closed));
        eventually("the second delivery to fail", || {
            delivered(&metrics, "failed") == 2
        })
        .await;
        assert_eq!(metrics.retries.get(), 4);

        // 401 (a bad token): refused at once, not retried.
        let (url, count) = forge(401).await;
        notices.offer(to(&url));
        eventually("the refusal", || delivered(&metrics, "failed") == 3).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(metrics.retries.get(), 4);

        // 201: delivered.
        let (url, _) = forge(201).await;
        notices.offer(to(&url));
        eventually("the delivery", || delivered(&metrics, "delivered") == 1).await;

        // As /metrics shows them.
        let mut registry = Registry::default();
        metrics.register(registry.sub_registry_with_prefix("valkyrie"));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "valkyrie_notify_deliveries_requests_total{target=\"github\",outcome=\"failed\"} 3",
            "valkyrie_notify_deliveries_requests_total{target=\"github\",outcome=\"delivered\"} 1",
            "valkyrie_notify_retries_attempts_total 4",
            "valkyrie_notify_dropped_notices_total 0",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
