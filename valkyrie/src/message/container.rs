//! What a job asks of a container runner: its image, service containers
//! and resource limits (the `container` field of a JobSpec).
//!
//! A job with a container runs only on runners with the Docker executor;
//! they advertise [`DOCKER_EXECUTOR_TAG`], and the control plane adds it to
//! such a job's required tags ([`JobSpec::required_tags`](super::JobSpec::required_tags)).

use serde::{Deserialize, Serialize};

use super::wire::{Reader, Writer};
use crate::error::DecodeError;

/// The tag a runner with the Docker executor advertises, and that a job
/// with an `image:` implicitly requires. Tags starting with `executor:` are
/// reserved for executors: an agent refuses them in `--tags`.
pub const DOCKER_EXECUTOR_TAG: &str = "executor:docker";

/// Prefix of the tags reserved for executors.
pub const EXECUTOR_TAG_PREFIX: &str = "executor:";

/// When the runner pulls the job's images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PullPolicy {
    /// Pull only when the runner does not have the image (the default).
    #[default]
    IfNotPresent = 0,
    /// Pull before every job, so a moved tag is picked up.
    Always = 1,
    /// Never pull: the image must already be on the runner.
    Never = 2,
}

impl PullPolicy {
    /// The spelling used in pipeline files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IfNotPresent => "if-not-present",
            Self::Always => "always",
            Self::Never => "never",
        }
    }

    /// Parses the pipeline-file spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "if-not-present" => Some(Self::IfNotPresent),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }

    pub(crate) fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match r.u8(field)? {
            0 => Ok(Self::IfNotPresent),
            1 => Ok(Self::Always),
            2 => Ok(Self::Never),
            other => Err(r.invalid(field, other.into())),
        }
    }
}

/// A service container started next to the job's, on the job's network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Image, `name[:tag]`.
    pub image: String,
    /// Host name the job reaches it by; never empty (the pipeline parser
    /// derives one from the image when none is written).
    pub alias: String,
    /// Environment of the service.
    pub env: Vec<(String, String)>,
    /// Command (arguments to the image's entrypoint); empty means the
    /// image's own.
    pub command: Vec<String>,
}

impl ServiceSpec {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            image: r.string("service.image")?,
            alias: r.string("service.alias")?,
            env: r.pairs("service.env")?,
            command: r.strings("service.command")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.image);
        w.string(&self.alias);
        w.pairs(&self.env);
        w.strings(&self.command);
    }
}

/// The container a job's steps run in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Image, `name[:tag]` or `name@digest`.
    pub image: String,
    /// Replaces the image's entrypoint when set (an empty list clears it).
    pub entrypoint: Option<Vec<String>>,
    /// When to pull the images.
    pub pull_policy: PullPolicy,
    /// Service containers, started before the first step.
    pub services: Vec<ServiceSpec>,
    /// CPU limit in thousandths of a CPU; 0 means no limit.
    pub cpus_milli: u32,
    /// Memory limit in bytes; 0 means no limit.
    pub memory_bytes: u64,
}

impl ContainerSpec {
    /// A container of `image` with the defaults: its own entrypoint, pulled
    /// if not present, no services, no limits.
    pub fn image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            entrypoint: None,
            pull_policy: PullPolicy::IfNotPresent,
            services: Vec::new(),
            cpus_milli: 0,
            memory_bytes: 0,
        }
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            image: r.string("container.image")?,
            entrypoint: r.option("container.entrypoint", |r| r.strings("container.entrypoint"))?,
            pull_policy: PullPolicy::read(r, "container.pull_policy")?,
            // A service takes at least 16 bytes: image, alias, env, command (4 each).
            services: r.list("container.services", 16, ServiceSpec::read)?,
            cpus_milli: r.u32("container.cpus_milli")?,
            memory_bytes: r.u64("container.memory_bytes")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.image);
        w.option(&self.entrypoint, |w, e| w.strings(e));
        w.u8(self.pull_policy as u8);
        w.list(&self.services, |w, s| s.write(w));
        w.u32(self.cpus_milli);
        w.u64(self.memory_bytes);
    }
}
