//! Encryption at rest for the secrets a store holds.
//!
//! What is secret: a job's `secrets` values and checkout token, the
//! pipeline text of runs and stored pipelines (it may carry `secrets:`
//! inline), runner credentials, and a project's webhook secret, token,
//! commit status token and run webhook secret. [`SealedStore`] wraps any
//! [`Store`] and seals those fields
//! before a commit and opens them after a load, so neither the redb file
//! nor a MongoDB document ever holds them in the clear; everything else
//! (states, ids, indexes) stays readable for queries and fencing.
//!
//! A sealed value is `vk-sealed:1:` followed by the base64 of a random
//! 96-bit nonce, the AES-256-GCM ciphertext and its tag (`ring::aead`); the
//! field's name is the associated data, so a value moved to another field
//! does not open. A value without the prefix is one written before
//! encryption existed: it is read as it is and sealed at its next write.
//!
//! The key is 32 random bytes, hex, in a file: `secrets-key` in the data
//! directory (generated on first start, mode 0600), or the file given with
//! `--secrets-key-file` (which must exist: a KMS or secret manager puts it
//! there). The store keeps a sealed check value, so starting with another
//! key is refused at once, before anything is read or written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Change, Loaded, Store, StoreError};

/// Prefix of a sealed value (format version 1).
pub const SEALED_PREFIX: &str = "vk-sealed:1:";

/// Name of the generated key file in the data directory.
pub const KEY_FILE_NAME: &str = "secrets-key";

/// What the check value holds, sealed.
const KEY_CHECK_PLAINTEXT: &[u8] = b"valkyrie secrets key check";

/// Associated data per field, so that a sealed value only opens where it
/// was written.
mod field {
    pub const JOB_SECRET: &[u8] = b"job.secrets";
    pub const RUN_YAML: &[u8] = b"run.yaml";
    pub const PIPELINE_SOURCE: &[u8] = b"pipeline.source";
    pub const RUNNER_CREDENTIAL: &[u8] = b"runner.credential";
    pub const KEY_CHECK: &[u8] = b"meta.key_check";
    pub const JOB_CHECKOUT_TOKEN: &[u8] = b"job.checkout.token";
    pub const PROJECT_WEBHOOK_SECRET: &[u8] = b"project.webhook_secret";
    pub const PROJECT_TOKEN: &[u8] = b"project.token";
    pub const PROJECT_STATUS_TOKEN: &[u8] = b"project.status.token";
    pub const PROJECT_NOTIFY_SECRET: &[u8] = b"project.notify.secret";
}

/// Why the secrets key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadKeyError {
    /// The key file is missing or unreadable.
    #[error("cannot read the secrets key file {path}: {source}; pass an existing key file with --secrets-key-file (or VALKYRIE_SECRETS_KEY_FILE), or leave it unset to use {KEY_FILE_NAME} in the data directory")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("the secrets key file {path} does not hold a key: it must contain 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// A new key could not be written.
    #[error("cannot write a new secrets key to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenSealedError {
    /// Not base64, or too short to hold a nonce and a tag.
    #[error("the sealed value is malformed")]
    Malformed,
    /// The key is not the one it was sealed with, or it was altered.
    #[error("the sealed value does not open with this key (another key sealed it, or it was altered)")]
    WrongKey,
}

/// The key secrets are sealed with.
pub struct SecretsKey {
    key: LessSafeKey,
    rng: SystemRandom,
    /// Where it came from, for messages.
    path: PathBuf,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SecretsKey {
    /// A key from its 32 bytes (`path` only names it in messages).
    pub fn from_bytes(bytes: &[u8; 32], path: impl Into<PathBuf>) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
            path: path.into(),
        }
    }

    /// Reads the key from `path`, which must exist.
    pub fn load(path: &Path) -> Result<Self, LoadKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let malformed = || LoadKeyError::Malformed {
            path: path.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Self::from_bytes(&bytes, path))
    }

    /// Reads `secrets-key` from `data_dir`, or generates it (mode 0600) if
    /// it does not exist. Returns the key and whether it was generated.
    pub fn load_or_generate(data_dir: &Path) -> Result<(Self, bool), LoadKeyError> {
        let path = data_dir.join(KEY_FILE_NAME);
        if path.exists() {
            return Ok((Self::load(&path)?, false));
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the OS random source is available");
        crate::auth::write_private(&path, &hex::encode(bytes)).map_err(|source| LoadKeyError::Write {
            path: path.clone(),
            source,
        })?;
        Ok((Self::from_bytes(&bytes, path), true))
    }

    /// Where the key came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `plaintext` for `field`: the prefix and base64 of nonce,
    /// ciphertext and tag.
    fn seal(&self, field: &[u8], plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the OS random source is available");
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(field),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seals any length a store row can have");
        out.extend_from_slice(tag.as_ref());
        let mut sealed = String::with_capacity(SEALED_PREFIX.len() + out.len() * 4 / 3 + 4);
        sealed.push_str(SEALED_PREFIX);
        base64::engine::general_purpose::STANDARD.encode_string(&out, &mut sealed);
        sealed
    }

    /// Opens a value sealed for `field`; a value without the prefix is
    /// returned as it is (written before encryption existed).
    fn open(&self, field: &[u8], value: &str) -> Result<Vec<u8>, OpenSealedError> {
        let Some(encoded) = value.strip_prefix(SEALED_PREFIX) else {
            return Ok(value.as_bytes().to_vec());
        };
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| OpenSealedError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenSealedError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = bytes[..NONCE_LEN].try_into().expect("checked length");
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(field),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| OpenSealedError::WrongKey)?
            .len();
        bytes.drain(..NONCE_LEN);
        bytes.truncate(plain_len);
        Ok(bytes)
    }

    fn seal_str(&self, field: &[u8], value: &mut String) {
        *value = self.seal(field, value.as_bytes());
    }

    fn open_str(
        &self,
        field: &[u8],
        kind: &'static str,
        id: impl ToString,
        value: &mut String,
    ) -> Result<(), StoreError> {
        let opened = self.open(field, value).map_err(|err| StoreError::Sealed {
            kind,
            id: id.to_string(),
            key: self.path.clone(),
            detail: err,
        })?;
        *value = String::from_utf8(opened).map_err(|_| StoreError::Decode {
            kind,
            id: id.to_string(),
            detail: "a sealed value is not UTF-8".into(),
        })?;
        Ok(())
    }

    /// The stored form of `change`: its secret fields sealed.
    fn seal_change(&self, change: &Change) -> Change {
        let mut change = change.clone();
        match &mut change {
            Change::Job(job) => {
                // The spec is shared with the core's record: the stored
                // copy is made only when there is something to seal.
                let sealed = !job.spec.secrets.is_empty()
                    || job.spec.trigger.as_ref().is_some_and(|t| t.checkout.is_some());
                if sealed {
                    let spec = Arc::make_mut(&mut job.spec);
                    for (_, value) in &mut spec.secrets {
                        self.seal_str(field::JOB_SECRET, value);
                    }
                    if let Some(checkout) = spec.trigger.as_mut().and_then(|t| t.checkout.as_mut()) {
                        self.seal_str(field::JOB_CHECKOUT_TOKEN, &mut checkout.token);
                    }
                }
            }
            Change::Project(project) => {
                self.seal_str(field::PROJECT_WEBHOOK_SECRET, &mut project.webhook_secret);
                self.seal_str(field::PROJECT_TOKEN, &mut project.token);
                if let Some(status) = &mut project.status {
                    self.seal_str(field::PROJECT_STATUS_TOKEN, &mut status.token);
                }
                if let Some(notify) = &mut project.notify {
                    self.seal_str(field::PROJECT_NOTIFY_SECRET, &mut notify.secret);
                }
            }
            Change::Run(run) => self.seal_str(field::RUN_YAML, &mut run.yaml),
            Change::Pipeline(def) => self.seal_str(field::PIPELINE_SOURCE, &mut def.source),
            Change::Runner(runner) => self.seal_str(field::RUNNER_CREDENTIAL, &mut runner.credential),
            _ => {}
        }
        change
    }

    /// Opens every sealed field of what a store loaded.
    fn open_loaded(&self, loaded: &mut Loaded) -> Result<(), StoreError> {
        for job in &mut loaded.jobs {
            let id = job.id.0;
            let spec = Arc::make_mut(&mut job.spec);
            for (_, value) in &mut spec.secrets {
                self.open_str(field::JOB_SECRET, "job", id, value)?;
            }
            if let Some(checkout) = spec.trigger.as_mut().and_then(|t| t.checkout.as_mut()) {
                self.open_str(field::JOB_CHECKOUT_TOKEN, "job", id, &mut checkout.token)?;
            }
        }
        for project in &mut loaded.projects {
            let name = project.name.clone();
            self.open_str(
                field::PROJECT_WEBHOOK_SECRET,
                "project",
                &name,
                &mut project.webhook_secret,
            )?;
            self.open_str(field::PROJECT_TOKEN, "project", &name, &mut project.token)?;
            if let Some(status) = &mut project.status {
                self.open_str(field::PROJECT_STATUS_TOKEN, "project", &name, &mut status.token)?;
            }
            if let Some(notify) = &mut project.notify {
                self.open_str(field::PROJECT_NOTIFY_SECRET, "project", &name, &mut notify.secret)?;
            }
        }
        for run in &mut loaded.runs {
            self.open_str(field::RUN_YAML, "run", run.id, &mut run.yaml)?;
        }
        for def in &mut loaded.pipelines {
            self.open_str(field::PIPELINE_SOURCE, "pipeline", def.id, &mut def.source)?;
        }
        for runner in &mut loaded.runners {
            self.open_str(
                field::RUNNER_CREDENTIAL,
                "runner",
                runner.id,
                &mut runner.credential,
            )?;
        }
        Ok(())
    }
}

/// A store whose secret fields are sealed with a [`SecretsKey`] (see the
/// module doc).
pub struct SealedStore {
    inner: Box<dyn Store>,
    key: SecretsKey,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SealedStore {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Store>, key: SecretsKey) -> Self {
        Self { inner, key }
    }
}

impl Store for SealedStore {
    /// Loads and opens everything; refuses a key other than the one the
    /// store was first written with (checked before any row is opened),
    /// and records the check value on a store that has none.
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut loaded = self.inner.load()?;
        match &loaded.key_check {
            Some(check) => match self.key.open(field::KEY_CHECK, check) {
                Ok(plain) if plain == KEY_CHECK_PLAINTEXT => {}
                _ => {
                    return Err(StoreError::WrongKey {
                        key: self.key.path.clone(),
                    })
                }
            },
            None => {
                let check = self.key.seal(field::KEY_CHECK, KEY_CHECK_PLAINTEXT);
                self.inner.commit(&[Change::KeyCheck(check.clone())])?;
                loaded.key_check = Some(check);
            }
        }
        self.key.open_loaded(&mut loaded)?;
        Ok(loaded)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let sealed: Vec<Change> = changes.iter().map(|c| self.key.seal_change(c)).collect();
        self.inner.commit(&sealed)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.inner.ping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[byte; 32], "test-key")
    }

    #[test]
    fn sealed_values_open_with_their_key_and_field_only() {
        let k = key(1);
        let sealed = k.seal(field::JOB_SECRET, b"hunter2-value");
        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(k.open(field::JOB_SECRET, &sealed).unwrap(), b"hunter2-value");
        assert_eq!(k.open(field::RUN_YAML, &sealed), Err(OpenSealedError::WrongKey));
        assert_eq!(
            key(2).open(field::JOB_SECRET, &sealed),
            Err(OpenSealedError::WrongKey)
        );
        // A fresh nonce each time: the same value never seals the same way.
        assert_ne!(sealed, k.seal(field::JOB_SECRET, b"hunter2-value"));
        // Altered ciphertext does not open.
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(k.open(field::JOB_SECRET, &altered).is_err());
        assert_eq!(
            k.open(field::JOB_SECRET, "vk-sealed:1:!!"),
            Err(OpenSealedError::Malformed)
        );
        // Written before encryption existed: read as it is.
        assert_eq!(k.open(field::JOB_SECRET, "plain").unwrap(), b"plain");
    }

    #[test]
    fn a_projects_status_token_and_run_webhook_secret_are_sealed() {
        use crate::source::status::{NotifyConfig, StatusConfig, StatusForge};
        let k = key(3);
        let project = crate::source::Project {
            name: "app".into(),
            repo: "https://github.com/o/app.git".into(),
            branch: "main".into(),
            file: ".valkyrie.yml".into(),
            webhook_secret: String::new(),
            token: String::new(),
            created_at_ms: 1,
            schedules: Vec::new(),
            status: Some(StatusConfig {
                forge: StatusForge::Github,
                api_url: "https://api.github.com".into(),
                repository: "o/app".into(),
                token: "status-token-value".into(),
            }),
            notify: Some(NotifyConfig {
                url: "https://hooks.example/ci".into(),
                secret: "notify-secret-value".into(),
            }),
        };
        let Change::Project(stored) = k.seal_change(&Change::Project(Box::new(project.clone()))) else {
            panic!("a project change stays one");
        };
        let text = serde_json::to_string(&stored).unwrap();
        assert!(
            !text.contains("status-token-value") && !text.contains("notify-secret-value"),
            "{text}"
        );
        assert!(text.contains("hooks.example"), "the URL is not secret: {text}");
        let mut loaded = Loaded::default();
        loaded.projects.push(*stored);
        k.open_loaded(&mut loaded).unwrap();
        assert_eq!(loaded.projects, vec![project]);
    }

    #[test]
    fn a_generated_key_is_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = SecretsKey::load_or_generate(dir.path()).unwrap();
        assert!(generated);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, generated) = SecretsKey::load_or_generate(dir.path()).unwrap();
        assert!(!generated);
        let sealed = first.seal(field::RUN_YAML, b"text");
        assert_eq!(second.open(field::RUN_YAML, &sealed).unwrap(), b"text");
    }

    #[test]
    fn a_missing_or_malformed_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = SecretsKey::load(&missing).unwrap_err().to_string();
        assert!(
            err.contains("cannot read the secrets key file") && err.contains("nope"),
            "{err}"
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd\n").unwrap();
        let err = SecretsKey::load(&short).unwrap_err().to_string();
        assert!(err.contains("64 hex digits") && err.contains("short"), "{err}");
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(SecretsKey::load(&good).is_ok());
    }
}
