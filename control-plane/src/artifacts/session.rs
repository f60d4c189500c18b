//! The artifact messages of a protocol session, served beside the core
//! (never through it): uploads write chunks to the store as they arrive,
//! fetches read ranges from blob files.
//!
//! Flow control is the requester's: an agent keeps a bounded number of
//! chunks (or fetches) unanswered, so what a transfer holds in memory on
//! either side is that window, not the artifact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use valkyrie::message::{
    Ack, ArtifactChunk, ArtifactCommit, ArtifactData, ArtifactFetch, ArtifactList, CacheLookup, Message,
    RequestFailed,
};
use valkyrie::SessionSender;

use super::cache::CacheIndex;
use super::{ArtifactError, ArtifactStore, Upload};
use crate::core::CoreHandle;
use crate::scheduler::RunnerId;
use valkyrie::message::cache::{key_of_artifact, valid_key, MAX_FALLBACK_KEYS};

/// Uploads one agent session may have open at once.
pub const MAX_OPEN_UPLOADS: usize = 16;

/// Bytes of an ArtifactData frame besides its data: the size, offset and
/// data length, and a 64-character SHA-256 with its length.
const DATA_OVERHEAD: usize = 8 + 8 + 4 + 4 + 64;

/// Answers `correlation` on `sender`, waiting for room in the lane.
async fn answer(sender: &SessionSender, correlation: u64, result: Result<Message, ArtifactError>) {
    let message = match result {
        Ok(message) => message,
        Err(err) => RequestFailed {
            code: err.code(),
            message: err.to_string(),
        }
        .into(),
    };
    if correlation != 0 {
        let _ = sender.reply(correlation, message).await;
    }
}

/// The uploads of one agent session. Those still open when the session
/// ends are discarded: the agent starts them again from offset 0.
#[derive(Debug)]
pub struct AgentUploads {
    store: Arc<ArtifactStore>,
    open: HashMap<(u64, u32, String), Upload>,
    core: CoreHandle,
    runner: RunnerId,
}

impl AgentUploads {
    /// No uploads yet, for the session of `runner`: only the attempts
    /// `core` says it holds may upload.
    pub fn new(store: Arc<ArtifactStore>, core: CoreHandle, runner: RunnerId) -> Self {
        Self {
            store,
            open: HashMap::new(),
            core,
            runner,
        }
    }

    /// The job's project, if this session's runner holds the attempt.
    async fn check_holder(&self, job_id: u64, attempt: u32) -> Result<String, ArtifactError> {
        self.core
            .attempt_project(self.runner, job_id, attempt)
            .await
            .ok_or(ArtifactError::NotHolder { job_id, attempt })
    }

    /// Serves an artifact message, if `message` is one; gives it back otherwise.
    pub async fn serve(
        &mut self,
        sender: &SessionSender,
        correlation: u64,
        message: Message,
    ) -> Option<Message> {
        match message {
            Message::ArtifactChunk(m) => {
                let result = self.chunk(m).await.map(|()| Ack {}.into());
                answer(sender, correlation, result).await;
            }
            Message::ArtifactCommit(m) => {
                // Storing may take a while (an upload to S3): answered from
                // a task, so the session keeps reading heartbeats meanwhile.
                match self.take_for_commit(m).await {
                    Ok(Some(ready)) => {
                        let (store, sender) = (self.store.clone(), sender.clone());
                        tokio::spawn(async move {
                            let result = commit(&store, ready).await.map(|()| Ack {}.into());
                            answer(&sender, correlation, result).await;
                        });
                    }
                    Ok(None) => answer(sender, correlation, Ok(Ack {}.into())).await,
                    Err(err) => answer(sender, correlation, Err(err)).await,
                }
            }
            Message::CacheLookup(m) => {
                let result = self.cache_lookup(m).await.map(Message::from);
                answer(sender, correlation, result).await;
            }
            Message::ArtifactFetch(_) | Message::ListArtifacts(_) => {
                serve_read(&self.store, sender, correlation, message).await;
            }
            other => return Some(other),
        }
        None
    }

    async fn chunk(&mut self, m: ArtifactChunk) -> Result<(), ArtifactError> {
        let key = (m.job_id, m.attempt, m.name);
        if m.offset == 0 {
            self.check_holder(m.job_id, m.attempt).await?;
            if let Some(old) = self.open.remove(&key) {
                old.discard().await;
            }
            if self.open.len() >= MAX_OPEN_UPLOADS {
                return Err(ArtifactError::Invalid(format!(
                    "more than {MAX_OPEN_UPLOADS} uploads open on one connection"
                )));
            }
            let upload = self.store.begin_upload().await?;
            self.open.insert(key.clone(), upload);
        }
        let Some(upload) = self.open.get_mut(&key) else {
            return Err(ArtifactError::Invalid(format!(
                "no upload of `{}` for job {} is open; start again at offset 0",
                key.2, key.0
            )));
        };
        if let Err(err) = upload.write(m.offset, &m.data).await {
            if let Some(upload) = self.open.remove(&key) {
                upload.discard().await;
            }
            return Err(err);
        }
        Ok(())
    }

    /// The cache entry to restore, in the job's project (a miss without
    /// a cache index).
    async fn cache_lookup(&self, m: CacheLookup) -> Result<valkyrie::message::CacheEntry, ArtifactError> {
        let project = self.check_holder(m.job_id, m.attempt).await?;
        if m.keys.is_empty() || m.keys.len() > 1 + MAX_FALLBACK_KEYS || !m.keys.iter().all(|k| valid_key(k)) {
            return Err(ArtifactError::Invalid(format!(
                "a cache lookup takes 1 to {} sanitised keys",
                1 + MAX_FALLBACK_KEYS
            )));
        }
        match self.core.cache() {
            Some(index) => index.lookup(&project, &m.keys, m.restore),
            None => Ok(super::cache::miss()),
        }
    }

    /// The finished upload a commit names, after checking the holder, with
    /// the cache entry it saves; `None` when it saves a cache key that
    /// already exists (entries are immutable: the first save stays).
    async fn take_for_commit(&mut self, m: ArtifactCommit) -> Result<Option<Commit>, ArtifactError> {
        let project = self.check_holder(m.job_id, m.attempt).await?;
        let cache = key_of_artifact(&m.name)
            .map(str::to_owned)
            .zip(self.core.cache().cloned());
        if let Some((cache_key, index)) = &cache {
            if index.contains(&project, cache_key) {
                if let Some(upload) = self.open.remove(&(m.job_id, m.attempt, m.name.clone())) {
                    upload.discard().await;
                }
                return Ok(None);
            }
        }
        let key = (m.job_id, m.attempt, m.name.clone());
        let upload = match self.open.remove(&key) {
            Some(upload) => upload,
            // An empty artifact has no chunk.
            None if m.size == 0 => self.store.begin_upload().await?,
            None => {
                return Err(ArtifactError::Invalid(format!(
                    "no upload of `{}` for job {} is open",
                    key.2, key.0
                )))
            }
        };
        Ok(Some(Commit {
            upload,
            cache: cache.map(|(key, index)| (project, key, index)),
            m,
        }))
    }

    /// Discards the uploads left open.
    pub async fn close(self) {
        for (_, upload) in self.open {
            upload.discard().await;
        }
    }
}

/// A commit ready to store: the upload, what the agent said, and the
/// cache entry it saves (project, key, index), if it is a cache.
struct Commit {
    upload: Upload,
    m: ArtifactCommit,
    cache: Option<(String, String, Arc<CacheIndex>)>,
}

/// Stores a finished upload as the commit says, and records the cache
/// entry it saves.
async fn commit(store: &Arc<ArtifactStore>, commit: Commit) -> Result<(), ArtifactError> {
    let Commit { upload, m, cache } = commit;
    let info = store
        .commit(
            upload,
            m.job_id,
            &m.name,
            m.size,
            &m.sha256,
            Duration::from_millis(m.expire_in_ms),
        )
        .await?;
    match cache {
        None => tracing::info!(job_id = m.job_id, name = %m.name, size = m.size, "artifact stored"),
        Some((project, key, index)) => match index.record(&project, &key, m.job_id, &info).await? {
            super::cache::Recorded::Saved => {
                tracing::info!(job_id = m.job_id, %project, %key, size = m.size, "cache saved")
            }
            // Another job saved the key between this one's lookup and its
            // commit; the first save stays (entries are immutable).
            super::cache::Recorded::Exists => tracing::info!(
                job_id = m.job_id,
                %project,
                %key,
                "cache not saved: another job saved that key first"
            ),
        },
    }
    Ok(())
}

/// Serves ArtifactFetch and ListArtifacts (agents and clients alike).
/// `max_payload` is the peer's frame limit.
pub async fn serve_read(store: &ArtifactStore, sender: &SessionSender, correlation: u64, message: Message) {
    let result = match message {
        Message::ArtifactFetch(m) => fetch(store, m).await,
        Message::ListArtifacts(m) => store
            .list(m.job_id)
            .map(|artifacts| ArtifactList { artifacts }.into()),
        _ => return,
    };
    answer(sender, correlation, result).await;
}

/// The largest range one ArtifactData carries: what fits a 1 MiB frame,
/// the protocol's default limit (a peer announcing less asks for less).
pub const MAX_FETCH_BYTES: usize = (1 << 20) - DATA_OVERHEAD;

async fn fetch(store: &ArtifactStore, m: ArtifactFetch) -> Result<Message, ArtifactError> {
    let max = (m.max_bytes as usize).min(MAX_FETCH_BYTES);
    let (info, data) = store.read_range(m.job_id, &m.name, m.offset, max).await?;
    Ok(ArtifactData {
        size: info.size,
        sha256: info.sha256,
        offset: m.offset,
        data,
    }
    .into())
}
