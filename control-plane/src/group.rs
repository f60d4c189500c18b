//! This server's view of its group of control planes (several servers on
//! one MongoDB store, one of which leads; see `store::leader`), and what a
//! standby serves while it waits to lead:
//!
//! * on the protocol listeners, every authenticated Hello is answered with
//!   a **Redirect** naming the leader's advertised URIs (spec §6.4);
//! * on `--http`, `/healthz` is alive, `/readyz` is not ready (503), and
//!   every other request is redirected (307) to the same path on the
//!   leader's advertised REST URL, or answered 503 naming the leader when
//!   it has none.
//!
//! With the embedded store the group is this one server, leading from the
//! start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use valkyrie::message::{Redirect, ServerInfo, ServerRole};
use valkyrie::transport::Redirector;

use crate::core::now_ms;
use crate::store::leader::LeaderInfo;

/// What one server knows of its group.
#[derive(Debug)]
pub struct Group {
    server_id: String,
    advertise: Mutex<Vec<String>>,
    advertise_http: Option<String>,
    leading: AtomicBool,
    /// The leader, as last seen by this server while a standby.
    leader: Mutex<Option<LeaderInfo>>,
    /// The group as last read from the store (empty: never read).
    servers: Mutex<Vec<ServerInfo>>,
}

impl Group {
    /// A server that waits to lead (a MongoDB store).
    pub fn standby(server_id: String, advertise_http: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            server_id,
            advertise: Mutex::new(Vec::new()),
            advertise_http,
            leading: AtomicBool::new(false),
            leader: Mutex::new(None),
            servers: Mutex::new(Vec::new()),
        })
    }

    /// A server that leads alone from the start (the embedded store).
    pub fn alone(advertise_http: Option<String>) -> Arc<Self> {
        let group = Self::standby("local".into(), advertise_http);
        group.lead();
        group
    }

    /// Where peers reach this server (known once its listeners are bound).
    pub fn set_advertise(&self, uris: Vec<String>) {
        *self.advertise.lock().expect("advertise") = uris;
    }

    /// This server's id in its group.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Where peers reach this server.
    pub fn advertise(&self) -> Vec<String> {
        self.advertise.lock().expect("advertise").clone()
    }

    /// Its REST URL, if any.
    pub fn advertise_http(&self) -> Option<String> {
        self.advertise_http.clone()
    }

    /// This server leads from now on: Hellos are welcomed.
    pub fn lead(&self) {
        *self.leader.lock().expect("leader") = None;
        self.leading.store(true, Ordering::Release);
    }

    /// Whether this server leads.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// A standby saw `leader` in the lease.
    pub fn saw_leader(&self, leader: LeaderInfo) {
        *self.leader.lock().expect("leader") = Some(leader);
    }

    /// This server is taking over: the leader it saw is gone.
    pub fn forget_leader(&self) {
        *self.leader.lock().expect("leader") = None;
    }

    /// The leader a standby last saw.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.leader.lock().expect("leader").clone()
    }

    /// The group as read from the store.
    pub fn set_servers(&self, servers: Vec<ServerInfo>) {
        *self.servers.lock().expect("servers") = servers;
    }

    /// Every server of the group, leader first. Until the store has been
    /// read (and always with the embedded store): this server alone.
    pub fn servers(&self) -> Vec<ServerInfo> {
        let servers = self.servers.lock().expect("servers").clone();
        if !servers.is_empty() {
            return servers;
        }
        vec![ServerInfo {
            server_id: self.server_id.clone(),
            role: if self.is_leading() {
                ServerRole::Leader
            } else {
                ServerRole::Standby
            },
            epoch: 0,
            lease_expires_ms: 0,
            seen_at_ms: now_ms(),
            uris: self.advertise(),
            http_url: self.advertise_http.clone().unwrap_or_default(),
        }]
    }

    /// The Redirect a standby answers a Hello with; `None` once it leads.
    /// Without a known leader (or while this server is taking over) the
    /// Redirect names no URI: the peer tries its other servers or backs off.
    pub fn redirect(&self) -> Option<Redirect> {
        if self.is_leading() {
            return None;
        }
        Some(match self.leader() {
            Some(l) => Redirect {
                leader: l.holder,
                epoch: l.epoch,
                uris: l.advertise,
            },
            None => Redirect {
                leader: String::new(),
                epoch: 0,
                uris: Vec::new(),
            },
        })
    }

    /// [`Group::redirect`] for the listeners.
    pub fn redirector(self: &Arc<Self>) -> Redirector {
        let group = self.clone();
        Arc::new(move |_hello| group.redirect())
    }

    /// What a standby serves on `--http` until it leads.
    pub fn standby_router(self: &Arc<Self>) -> axum::Router {
        use axum::http::Uri;
        use axum::routing::get;
        use axum::Json;

        let ready = self.clone();
        let other = self.clone();
        axum::Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({ "status": "ok", "role": "standby" })) }),
            )
            // Not ready: a load balancer sends traffic to the leader.
            .route(
                "/readyz",
                get(move || {
                    let leader = ready.leader();
                    async move { unavailable(leader) }
                }),
            )
            .fallback(move |uri: Uri| {
                let leader = other.leader();
                async move { redirect_to_leader(leader, &uri) }
            })
    }
}

/// 503 naming the leader (if known), to be tried again in a second.
fn unavailable(leader: Option<LeaderInfo>) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::Json;
    let message = match &leader {
        Some(l) => format!(
            "this server is a standby; server {} leads (epoch {}) at {}",
            l.holder,
            l.epoch,
            l.advertise.join(", ")
        ),
        None => "this server is a standby and has not seen a leader yet".to_owned(),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(serde_json::json!({
            "error": "standby",
            "message": message,
            "role": "standby",
            "leader": leader,
        })),
    )
        .into_response()
}

/// A standby's answer to a REST request: 307 to the same path on the
/// leader's REST URL, or 503 when the leader has none.
fn redirect_to_leader(leader: Option<LeaderInfo>, uri: &axum::http::Uri) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::Json;
    let Some(base) = leader.as_ref().and_then(|l| l.advertise_http.clone()) else {
        return unavailable(leader);
    };
    // 307 keeps the method and the body (a POST stays a POST).
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{}{path}", base.trim_end_matches('/'));
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
        Json(serde_json::json!({
            "error": "standby",
            "message": format!("this server is a standby; the leader serves this at {base}"),
            "role": "standby",
            "leader": leader,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> LeaderInfo {
        LeaderInfo {
            holder: "b".into(),
            epoch: 3,
            advertise: vec!["tcp://b:7700".into()],
            advertise_http: Some("http://b:8080/".into()),
            ttl_ms: 2000,
            renewed_at_ms: 0,
        }
    }

    #[test]
    fn a_standby_redirects_to_the_leader_it_saw_and_stops_once_it_leads() {
        let group = Group::standby("a".into(), None);
        group.set_advertise(vec!["tcp://a:7700".into()]);
        let unknown = group.redirect().expect("a standby redirects");
        assert!(unknown.uris.is_empty(), "no leader seen yet: {unknown:?}");
        group.saw_leader(leader());
        let to = group.redirect().expect("a standby redirects");
        assert_eq!((to.leader.as_str(), to.epoch), ("b", 3));
        assert_eq!(to.uris, ["tcp://b:7700"]);
        group.lead();
        assert_eq!(group.redirect(), None);
        assert_eq!(group.servers()[0].role, ServerRole::Leader);
    }

    #[test]
    fn rest_requests_go_to_the_same_path_on_the_leaders_url() {
        let uri: axum::http::Uri = "/api/runners?limit=5".parse().expect("uri");
        let answer = redirect_to_leader(Some(leader()), &uri);
        assert_eq!(answer.status(), 307);
        assert_eq!(answer.headers()["location"], "http://b:8080/api/runners?limit=5");
        let without_http = LeaderInfo {
            advertise_http: None,
            ..leader()
        };
        assert_eq!(redirect_to_leader(Some(without_http), &uri).status(), 503);
        assert_eq!(redirect_to_leader(None, &uri).status(), 503);
    }
}
