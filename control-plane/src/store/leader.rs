//! One leader among the control planes that share a MongoDB store.
//!
//! Every server pointed at the same database joins one group. The leader
//! holds a **lease**: the document `{_id: "leader"}` of the `meta`
//! collection, with the holder's id, an **epoch** (raised by each
//! takeover), a renewal counter `seq`, the lease's time to live and the
//! holder's advertised URIs. Every change to it is a conditional `update`
//! (compare-and-set on `epoch` and `seq`), atomic on one document.
//!
//! * **Renewal.** The leader bumps `seq` every `renew_every`, on the
//!   condition that the epoch is still its own. A renewal sent at `t` lets
//!   it write until `t + ttl - margin` by its own monotonic clock (its
//!   [`Fence`] deadline). A refused renewal (a newer epoch exists), or a
//!   deadline that passes while the store does not answer, ends the
//!   process: it cannot know that it still leads (the pattern of
//!   Kubernetes' leader election; a supervisor starts it again, as a
//!   standby).
//! * **Takeover.** A standby reads the lease every `poll`; once it has
//!   seen the same `(epoch, seq)` for a whole `ttl` by its own clock, the
//!   leader has stopped writing (its deadline was earlier), and the
//!   standby swaps in itself with `epoch + 1`, conditional on that same
//!   `(epoch, seq)`: of several standbys exactly one wins.
//! * **Fencing.** The new leader stamps every stored document with its
//!   epoch ([`Election::claim`]) before it loads them, and every write it
//!   makes carries the condition `epoch <= its epoch`. A deposed leader
//!   that wakes up (a paused process, a partition) finds its deadline past
//!   and writes nothing; a write it had already sent when paused matches
//!   no stamped document, is refused as a duplicate key, and the store
//!   stops the process.
//! * A server restarted with the same data directory (which it locks) is
//!   the holder's own earlier life: it takes over at once.
//! * **Membership.** Every server, leader or standby, reports itself in the
//!   `members` collection every `renew_every` ([`Election::report`]); with
//!   the lease, that is the group `vk servers` shows
//!   ([`Election::members`]). It is advice for people, not fenced state:
//!   no decision reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::sync::Database;
use serde::Serialize;
use valkyrie::message::{ServerInfo, ServerRole};

use super::StoreError;
use crate::core::now_ms;

/// The collection of the lease (and the id counters).
const META: &str = "meta";
/// The lease document's `_id`.
const LEASE_ID: &str = "leader";
/// One document per server of the group (not fenced: see the module doc).
const MEMBERS: &str = "members";
/// The collections whose documents carry the writer's epoch.
pub(super) const FENCED: &[&str] = &[
    "jobs",
    "runs",
    "runners",
    "pipelines",
    "audit",
    "meta",
    super::mongo::ARTIFACTS,
    super::mongo::CACHE_ENTRIES,
    super::mongo::PROJECTS,
    super::mongo::DELIVERIES,
];

/// How an election behaves.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// This server's id (stable across restarts of one data directory).
    pub server_id: String,
    /// URIs where peers reach this server (shown to peers by standbys).
    pub advertise: Vec<String>,
    /// This server's REST URL (standbys redirect REST requests there).
    pub advertise_http: Option<String>,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often the leader renews it.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// The part of the lease the leader does not use, for writes in flight.
    fn margin(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(100))
    }

    /// How often a standby reads the lease.
    fn poll(&self) -> Duration {
        (self.renew_every / 2).max(Duration::from_millis(50))
    }
}

/// The current leader, as a standby sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderInfo {
    /// The leader's server id.
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its advertised URIs.
    pub advertise: Vec<String>,
    /// Its advertised REST URL, if it serves HTTP.
    pub advertise_http: Option<String>,
    /// Its lease's time to live (ms).
    pub ttl_ms: u64,
    /// When it last renewed, by its clock (ms since the Unix epoch).
    pub renewed_at_ms: u64,
}

/// The leader's right to write: its epoch and the instant until which its
/// lease certainly holds. The store checks it before and after each write.
#[derive(Debug)]
pub struct Fence {
    epoch: u64,
    base: Instant,
    /// Nanoseconds after `base`.
    deadline_ns: AtomicU64,
}

impl Fence {
    fn new(epoch: u64, deadline: Instant) -> Self {
        let base = Instant::now();
        let fence = Self {
            epoch,
            base,
            deadline_ns: AtomicU64::new(0),
        };
        fence.extend(deadline);
        fence
    }

    /// The epoch every write is stamped with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn extend(&self, deadline: Instant) {
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        self.deadline_ns
            .fetch_max(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::AcqRel);
    }

    /// Whether the lease still holds now.
    pub fn check(&self) -> Result<(), StoreError> {
        let deadline = self.base + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire));
        if Instant::now() < deadline {
            Ok(())
        } else {
            Err(StoreError::Deposed {
                epoch: self.epoch,
                detail: "the lease ran out before it could be renewed".into(),
            })
        }
    }
}

/// The election of one server.
#[derive(Clone)]
pub struct Election {
    db: Database,
    config: LeaseConfig,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election").field("config", &self.config).finish()
    }
}

fn int(doc: &Document, key: &str) -> u64 {
    doc.get(key)
        .and_then(super::mongo::as_i64)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

fn info_of(doc: &Document) -> LeaderInfo {
    LeaderInfo {
        holder: doc.get_str("holder").unwrap_or_default().to_owned(),
        epoch: int(doc, "epoch"),
        advertise: doc
            .get_array("advertise")
            .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        advertise_http: doc.get_str("advertise_http").ok().map(str::to_owned),
        ttl_ms: int(doc, "ttl_ms"),
        renewed_at_ms: int(doc, "renewed_at_ms"),
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Election {
    pub(super) fn new(db: Database, config: LeaseConfig) -> Self {
        Self { db, config }
    }

    fn io(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            what: what.to_owned(),
            detail: err.to_string(),
        }
    }

    /// The lease document, if any.
    fn read(&self) -> Result<Option<Document>, StoreError> {
        self.db
            .collection::<Document>(META)
            .find_one(doc! { "_id": LEASE_ID })
            .run()
            .map_err(|e| self.io("cannot read the leader lease", e))
    }

    /// Runs a one-statement `update` and returns how many documents matched.
    fn update_one(&self, filter: Document, update: Document) -> Result<u64, StoreError> {
        let reply = self
            .db
            .run_command(doc! {
                "update": META,
                "updates": [ { "q": filter, "u": update } ],
                "writeConcern": { "w": "majority", "j": true },
            })
            .run()
            .map_err(|e| self.io("cannot write the leader lease", e))?;
        Ok(int(&reply, "n"))
    }

    fn holder_fields(&self, epoch: u64) -> Document {
        let mut fields = doc! {
            "holder": &self.config.server_id,
            "epoch": i64_of(epoch),
            "seq": 0_i64,
            "ttl_ms": i64_of(u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX)),
            "renewed_at_ms": i64_of(now_ms()),
            "advertise": self.config.advertise.clone(),
        };
        // `$set` of the whole holder: a leader without HTTP must not keep
        // its predecessor's URL.
        fields.insert(
            "advertise_http",
            self.config
                .advertise_http
                .clone()
                .map_or(mongodb::bson::Bson::Null, mongodb::bson::Bson::String),
        );
        fields
    }

    /// Reports this server in the group's `members` collection: its URIs,
    /// the epoch it last saw and when (its clock). Called every
    /// `renew_every` by every server; not fenced (advice for people).
    pub fn report(&self, epoch_seen: u64) -> Result<(), StoreError> {
        let mut fields = doc! {
            "advertise": self.config.advertise.clone(),
            "seen_at_ms": i64_of(now_ms()),
            "epoch_seen": i64_of(epoch_seen),
        };
        if let Some(url) = &self.config.advertise_http {
            fields.insert("advertise_http", url);
        }
        self.db
            .run_command(doc! {
                "update": MEMBERS,
                "updates": [ {
                    "q": { "_id": &self.config.server_id },
                    "u": { "$set": fields },
                    "upsert": true,
                } ],
            })
            .run()
            .map_err(|e| self.io("cannot report this server in `members`", e))?;
        Ok(())
    }

    /// Every server of the group as the store knows it, leader first: the
    /// lease's holder leads until its lease runs out; a server that has not
    /// reported for two lease lifetimes is silent.
    pub fn members(&self) -> Result<Vec<ServerInfo>, StoreError> {
        let lease = self.read()?.map(|d| info_of(&d));
        let docs: Vec<Document> = self
            .db
            .collection::<Document>(MEMBERS)
            .find(doc! {})
            .run()
            .and_then(|cursor| cursor.collect())
            .map_err(|e| self.io("cannot read `members`", e))?;
        let now = now_ms();
        let ttl_ms = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut servers: Vec<ServerInfo> = docs
            .iter()
            .map(|d| {
                let server_id = d.get_str("_id").unwrap_or_default().to_owned();
                let seen_at_ms = int(d, "seen_at_ms");
                let leads = lease.as_ref().filter(|l| l.holder == server_id);
                let lease_expires_ms = leads.map_or(0, |l| l.renewed_at_ms.saturating_add(l.ttl_ms));
                let role = if leads.is_some() && lease_expires_ms >= now {
                    ServerRole::Leader
                } else if now.saturating_sub(seen_at_ms) <= 2 * ttl_ms {
                    ServerRole::Standby
                } else {
                    ServerRole::Silent
                };
                ServerInfo {
                    role,
                    epoch: leads.map_or_else(|| int(d, "epoch_seen"), |l| l.epoch),
                    lease_expires_ms,
                    seen_at_ms,
                    uris: d
                        .get_array("advertise")
                        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default(),
                    http_url: d.get_str("advertise_http").unwrap_or_default().to_owned(),
                    server_id,
                }
            })
            .collect();
        servers.sort_by(|a, b| {
            (a.role != ServerRole::Leader, &a.server_id).cmp(&(b.role != ServerRole::Leader, &b.server_id))
        });
        Ok(servers)
    }

    /// Tries to create the first lease; `true` if this server now holds it.
    fn create(&self) -> Result<bool, StoreError> {
        let mut lease = self.holder_fields(1);
        lease.insert("_id", LEASE_ID);
        let reply = self
            .db
            .run_command(doc! {
                "insert": META,
                "documents": [lease],
                "writeConcern": { "w": "majority", "j": true },
            })
            .run()
            .map_err(|e| self.io("cannot write the leader lease", e))?;
        Ok(int(&reply, "n") == 1)
    }

    /// Swaps in this server with `epoch + 1` if the lease is still at
    /// `(epoch, seq)`; `true` if it won.
    fn take_over(&self, epoch: u64, seq: u64) -> Result<bool, StoreError> {
        let matched = self.update_one(
            doc! { "_id": LEASE_ID, "epoch": i64_of(epoch), "seq": i64_of(seq) },
            doc! { "$set": self.holder_fields(epoch + 1) },
        )?;
        Ok(matched == 1)
    }

    /// Waits until this server leads; `standby` is told who leads
    /// meanwhile (each time that changes). Returns the fence of the new
    /// epoch. Errors only when the store cannot be reached at all.
    pub fn acquire(&self, mut standby: impl FnMut(&LeaderInfo)) -> Result<Arc<Fence>, StoreError> {
        // (epoch, seq) last seen, and since when (by our clock).
        let mut seen: Option<((u64, u64), Instant)> = None;
        let mut shown: Option<LeaderInfo> = None;
        loop {
            let sent = Instant::now();
            let won = match self.read()? {
                None => self.create()?.then_some(1),
                Some(lease) => {
                    let info = info_of(&lease);
                    let key = (info.epoch, int(&lease, "seq"));
                    let own = info.holder == self.config.server_id;
                    let ttl = Duration::from_millis(info.ttl_ms);
                    let expired = match seen {
                        Some((k, since)) if k == key => since.elapsed() >= ttl,
                        _ => {
                            seen = Some((key, Instant::now()));
                            false
                        }
                    };
                    if own || expired {
                        self.take_over(key.0, key.1)?.then_some(info.epoch + 1)
                    } else {
                        // Told once per leader, not once per renewal.
                        let changed = shown.as_ref().is_none_or(|s| {
                            (&s.holder, s.epoch, &s.advertise, &s.advertise_http)
                                != (&info.holder, info.epoch, &info.advertise, &info.advertise_http)
                        });
                        if changed {
                            standby(&info);
                            shown = Some(info);
                        }
                        None
                    }
                }
            };
            if let Some(epoch) = won {
                let deadline = sent + self.config.ttl - self.config.margin();
                return Ok(Arc::new(Fence::new(epoch, deadline)));
            }
            std::thread::sleep(self.config.poll());
        }
    }

    /// Stamps every stored document with the new epoch, so that no write of
    /// an earlier leader can replace or delete it any more.
    pub fn claim(&self, fence: &Fence) -> Result<(), StoreError> {
        fence.check()?;
        for collection in FENCED {
            let reply = self
                .db
                .run_command(doc! {
                    "update": *collection,
                    "updates": [ {
                        "q": { "_id": { "$ne": LEASE_ID } },
                        "u": { "$max": { "epoch": i64_of(fence.epoch) } },
                        "multi": true,
                    } ],
                    "writeConcern": { "w": "majority", "j": true },
                })
                .run()
                .map_err(|e| self.io(&format!("cannot claim `{collection}` for the new epoch"), e))?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                return Err(self.io(
                    &format!("cannot claim `{collection}` for the new epoch"),
                    format!("{errors:?}"),
                ));
            }
        }
        if fence.check().is_err() {
            // The claim outlasted the lease while a renewal was on its way
            // (a slow store). One renewal now settles it: it matches only
            // if no other server has taken a newer epoch, and the claim
            // itself only ever raised epochs, so nothing was lost.
            if self.renew(fence)? != 1 {
                return Err(StoreError::Deposed {
                    epoch: fence.epoch,
                    detail: "another server took the lease while this one claimed the store".into(),
                });
            }
        }
        fence.check()
    }

    /// Renews the lease once (compare-and-set on this server's epoch) and,
    /// when it matched, extends `fence` from the time it was sent. Returns
    /// how many lease documents matched: 1, or 0 when another server leads.
    fn renew(&self, fence: &Fence) -> Result<u64, StoreError> {
        let sent = Instant::now();
        let matched = self.update_one(
            doc! {
                "_id": LEASE_ID,
                "epoch": i64_of(fence.epoch),
                "holder": &self.config.server_id,
            },
            doc! {
                "$inc": { "seq": 1_i64 },
                "$set": { "renewed_at_ms": i64_of(now_ms()) },
            },
        )?;
        if matched == 1 {
            fence.extend(sent + self.config.ttl - self.config.margin());
        }
        Ok(matched)
    }

    /// Renews the lease every `renew_every` on a thread of its own, for as
    /// long as the process lives. When this server is no longer sure to
    /// lead, `deposed` is called with the reason (the server exits there).
    pub fn keep(self, fence: Arc<Fence>, deposed: impl FnOnce(StoreError) + Send + 'static) {
        std::thread::Builder::new()
            .name("valkyrie-lease".into())
            .spawn(move || {
                let reason = loop {
                    std::thread::sleep(self.config.renew_every);
                    match self.renew(&fence) {
                        Ok(1) => {}
                        Ok(_) => {
                            let leader = self.read().ok().flatten().map(|d| info_of(&d));
                            break StoreError::Deposed {
                                epoch: fence.epoch,
                                detail: match leader {
                                    Some(l) => format!(
                                        "server {} took over with epoch {} ({})",
                                        l.holder,
                                        l.epoch,
                                        l.advertise.join(", ")
                                    ),
                                    None => "the lease is gone".into(),
                                },
                            };
                        }
                        Err(err) => {
                            tracing::warn!(%err, "cannot renew the leader lease");
                            if let Err(expired) = fence.check() {
                                break expired;
                            }
                        }
                    }
                };
                deposed(reason);
            })
            .expect("spawn the lease thread");
    }
}
