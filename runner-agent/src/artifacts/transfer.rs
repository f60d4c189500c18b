//! Moving artifacts over the session: uploads (ArtifactChunk, then
//! ArtifactCommit) and downloads (ArtifactFetch), each with at most
//! [`WINDOW`] requests unanswered. A dropped connection is waited out: the
//! agent reconnects by itself, and the transfer goes on over the new
//! session (an upload from its start, as the server dropped the partial
//! one; a download from the first byte not yet written).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use valkyrie::message::{ArtifactChunk, ArtifactCommit, ArtifactFetch, ListArtifacts, Message};
use valkyrie::transport::{PendingReply, RequestError};
use valkyrie::SessionSender;

/// Requests a transfer keeps unanswered: the memory it holds is this many
/// chunks, on each side.
pub const WINDOW: usize = 8;
/// Largest chunk sent or asked for.
pub const MAX_CHUNK_BYTES: usize = 512 << 10;
/// Frame bytes besides a chunk's data (ids, offsets, the name).
const CHUNK_OVERHEAD: usize = 512;
/// Times a transfer starts again after losing its connection.
const MAX_TRIES: u32 = 5;
/// How long a transfer waits for the agent to be connected again.
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// The agent's current session, as transfers see it: `None` while it is
/// disconnected. Carries the server's frame limit.
#[derive(Clone, Debug)]
pub struct ArtifactLink {
    rx: watch::Receiver<Option<(SessionSender, u32)>>,
}

impl ArtifactLink {
    /// A link and the handle that publishes each new session.
    pub fn new() -> (watch::Sender<Option<(SessionSender, u32)>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self { rx })
    }

    /// A link that never connects (transfers fail at once): for jobs that
    /// run without a server, in tests.
    pub fn none() -> Self {
        let (tx, rx) = watch::channel(None);
        drop(tx);
        Self { rx }
    }

    /// The session to use, waiting up to [`RECONNECT_WAIT`] for one.
    async fn session(&mut self) -> Result<(SessionSender, usize), TransferError> {
        let wait = self
            .rx
            .wait_for(|s| s.as_ref().is_some_and(|(s, _)| !s.is_closed()));
        match tokio::time::timeout(RECONNECT_WAIT, wait).await {
            Ok(Ok(current)) => {
                let (sender, max_frame) = current.clone().expect("waited for a session");
                let chunk = (max_frame as usize)
                    .saturating_sub(CHUNK_OVERHEAD)
                    .clamp(1024, MAX_CHUNK_BYTES);
                Ok((sender, chunk))
            }
            Ok(Err(_)) => Err(TransferError::Disconnected),
            Err(_) => Err(TransferError::Disconnected),
        }
    }
}

impl ArtifactLink {
    /// Sends `message`, a request, over the current session and returns
    /// its answer; sent again over the next session if the connection
    /// drops first (so it must be safe to repeat, as lookups are).
    pub async fn request(&mut self, message: impl Into<Message>) -> Result<Message, TransferError> {
        let message = message.into();
        for _ in 0..MAX_TRIES {
            let (sender, _) = self.session().await?;
            match sender.request(message.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(err) => match classify(err) {
                    Failure::Fatal(err) => return Err(err),
                    Failure::Retry => continue,
                },
            }
        }
        Err(TransferError::Disconnected)
    }
}

/// Why a transfer failed. The message goes to the job's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The server refused it (too large, bad checksum, disk full, …).
    #[error("the server refused it: {0}")]
    Refused(String),
    /// No connection to the server for too long, or too many times.
    #[error("the connection to the server was lost and not regained")]
    Disconnected,
    /// What arrived does not match its checksum.
    #[error("{0}")]
    Corrupt(String),
    /// Reading or writing the local file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a failed request means: start again over a new connection, or stop.
enum Failure {
    Retry,
    Fatal(TransferError),
}

fn classify(err: RequestError) -> Failure {
    match err {
        RequestError::Failed { message, .. } => Failure::Fatal(TransferError::Refused(message)),
        _ => Failure::Retry,
    }
}

/// Queues a request in order behind those queued before it.
async fn send(sender: &SessionSender, message: impl Into<Message>) -> Result<PendingReply, Failure> {
    sender.request_queued(message).await.map_err(classify)
}

async fn settle(pending: PendingReply) -> Result<Message, Failure> {
    pending.answer().await.map_err(classify)
}

/// An upload to send.
#[derive(Debug, Clone)]
pub struct UploadSpec<'a> {
    /// Job id.
    pub job_id: u64,
    /// Attempt.
    pub attempt: u32,
    /// Artifact name.
    pub name: &'a str,
    /// The file.
    pub path: &'a Path,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: &'a str,
    /// Expiry, milliseconds (0: the server's default).
    pub expire_in_ms: u64,
}

/// Uploads a file as an artifact; returns once the server has stored it.
pub async fn upload(link: &mut ArtifactLink, spec: UploadSpec<'_>) -> Result<(), TransferError> {
    for _ in 0..MAX_TRIES {
        let (sender, chunk) = link.session().await?;
        match upload_once(&sender, chunk, &spec).await {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Retry) => {
                tracing::warn!(
                    job_id = spec.job_id,
                    "connection lost during an artifact upload; starting it again"
                );
            }
        }
    }
    Err(TransferError::Disconnected)
}

async fn upload_once(sender: &SessionSender, chunk: usize, spec: &UploadSpec<'_>) -> Result<(), Failure> {
    let mut file = tokio::fs::File::open(spec.path)
        .await
        .map_err(|e| Failure::Fatal(e.into()))?;
    let mut window: VecDeque<PendingReply> = VecDeque::with_capacity(WINDOW);
    let mut offset = 0u64;
    while offset < spec.size {
        if window.len() >= WINDOW {
            settle(window.pop_front().expect("window not empty")).await?;
        }
        let want = (spec.size - offset).min(chunk as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        file.read_exact(&mut buf)
            .await
            .map_err(|e| Failure::Fatal(e.into()))?;
        window.push_back(
            send(
                sender,
                ArtifactChunk {
                    job_id: spec.job_id,
                    attempt: spec.attempt,
                    name: spec.name.to_owned(),
                    offset,
                    data: buf.freeze(),
                },
            )
            .await?,
        );
        offset += want as u64;
    }
    for pending in window {
        settle(pending).await?;
    }
    let commit = ArtifactCommit {
        job_id: spec.job_id,
        attempt: spec.attempt,
        name: spec.name.to_owned(),
        size: spec.size,
        sha256: spec.sha256.to_owned(),
        expire_in_ms: spec.expire_in_ms,
    };
    settle(send(sender, commit).await?).await.map(|_| ())
}

/// Downloads artifact `name` of job `job_id` into the file `dest`, checking
/// its SHA-256. Returns its size, or `None` when the job has no such
/// artifact (it uploaded nothing).
pub async fn download(
    link: &mut ArtifactLink,
    job_id: u64,
    name: &str,
    dest: &Path,
) -> Result<Option<u64>, TransferError> {
    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = Context::new(&SHA256);
    let mut written = 0u64;
    let mut expected: Option<(u64, String)> = None;
    for _ in 0..MAX_TRIES {
        let (sender, chunk) = link.session().await?;
        if expected.is_none() {
            match sender.request(ListArtifacts { job_id }).await {
                Ok(Message::ArtifactList(list)) => {
                    match list.artifacts.into_iter().find(|a| a.name == name) {
                        Some(a) => expected = Some((a.size, a.sha256)),
                        None => return Ok(None),
                    }
                }
                Ok(other) => {
                    return Err(TransferError::Refused(format!(
                        "unexpected answer {}",
                        other.kind()
                    )))
                }
                Err(err) => match classify(err) {
                    Failure::Fatal(err) => return Err(err),
                    Failure::Retry => continue,
                },
            }
        }
        let (size, _) = expected.clone().expect("listed");
        match download_once(
            &sender,
            chunk,
            job_id,
            name,
            size,
            &mut written,
            &mut hasher,
            &mut file,
        )
        .await
        {
            Ok(()) => break,
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Retry) => {
                tracing::warn!(
                    job_id,
                    written,
                    "connection lost during an artifact download; resuming"
                );
            }
        }
    }
    let (size, sha256) = expected.ok_or(TransferError::Disconnected)?;
    if written != size {
        return Err(TransferError::Disconnected);
    }
    file.flush().await?;
    let actual = hex::encode(hasher.finish().as_ref());
    if actual != sha256 {
        return Err(TransferError::Corrupt(format!(
            "artifact `{name}` of job {job_id} arrived with SHA-256 {actual}, expected {sha256}"
        )));
    }
    Ok(Some(size))
}

#[allow(clippy::too_many_arguments)]
async fn download_once(
    sender: &SessionSender,
    chunk: usize,
    job_id: u64,
    name: &str,
    size: u64,
    written: &mut u64,
    hasher: &mut Context,
    file: &mut tokio::fs::File,
) -> Result<(), Failure> {
    let mut window: VecDeque<PendingReply> = VecDeque::with_capacity(WINDOW);
    let mut asked = *written;
    while *written < size {
        while window.len() < WINDOW && asked < size {
            let want = (size - asked).min(chunk as u64);
            window.push_back(
                send(
                    sender,
                    ArtifactFetch {
                        job_id,
                        name: name.to_owned(),
                        offset: asked,
                        max_bytes: want as u32,
                    },
                )
                .await?,
            );
            asked += want;
        }
        let Some(pending) = window.pop_front() else { break };
        let data = match settle(pending).await? {
            Message::ArtifactData(d) => d,
            other => {
                return Err(Failure::Fatal(TransferError::Refused(format!(
                    "unexpected answer {}",
                    other.kind()
                ))))
            }
        };
        if data.offset != *written || data.data.is_empty() || data.size != size {
            return Err(Failure::Fatal(TransferError::Corrupt(format!(
                "artifact `{name}` of job {job_id} changed or arrived out of order"
            ))));
        }
        file.write_all(&data.data)
            .await
            .map_err(|e| Failure::Fatal(e.into()))?;
        hasher.update(&data.data);
        *written += data.data.len() as u64;
    }
    Ok(())
}
