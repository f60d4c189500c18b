//! What a job knows of what started it: the trigger's variables and the
//! commit to check out (the `trigger` field of a JobSpec).
//!
//! A job of a run started from a push, a merge request or a project's
//! trigger carries a [`TriggerSpec`]; a job submitted on its own has none.

use serde::{Deserialize, Serialize};

use super::wire::{Reader, Writer};
use crate::error::DecodeError;

/// The trigger's context, given to the job.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSpec {
    /// Variables set for every step before the job's own `env` (which may
    /// override them), taken literally (never `$`-expanded): the
    /// `VALKYRIE_COMMIT_SHA`, `VALKYRIE_BRANCH`, … of the trigger and the
    /// variables it was given.
    pub variables: Vec<(String, String)>,
    /// The commit the agent checks out into the workspace before the first
    /// step; `None` leaves the workspace empty (`checkout: false`).
    pub checkout: Option<CheckoutSpec>,
}

impl std::fmt::Debug for TriggerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerSpec")
            .field("variables", &self.variables)
            .field("checkout", &self.checkout)
            .finish()
    }
}

impl TriggerSpec {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            variables: r.pairs("trigger.variables")?,
            checkout: r.option("trigger.checkout", CheckoutSpec::read)?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.pairs(&self.variables);
        w.option(&self.checkout, |w, c| c.write(w));
    }
}

/// A commit of a git repository, to check out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutSpec {
    /// Clone URL (`https://…`, `git://…`, `ssh://…` or a path); never holds
    /// credentials.
    pub repository: String,
    /// The commit, 40 (or 64) hex digits.
    pub sha: String,
    /// The ref it was pushed to (`refs/heads/main`, `refs/pull/7/head`), or
    /// empty: fetched first, so a server that refuses fetches by sha works.
    pub git_ref: String,
    /// History to fetch: 0 is all of it, 1 (the default in pipelines) the
    /// commit alone.
    pub depth: u32,
    /// An HTTPS token for a private repository, or empty. Sent to the git
    /// server as an `Authorization` header passed in git's environment:
    /// never in a URL, a command line, a log or the job's environment.
    pub token: String,
}

// Hand-written so that the token never reaches a log line.
impl std::fmt::Debug for CheckoutSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutSpec")
            .field("repository", &self.repository)
            .field("sha", &self.sha)
            .field("git_ref", &self.git_ref)
            .field("depth", &self.depth)
            .field("token", &if self.token.is_empty() { "" } else { "***" })
            .finish()
    }
}

impl CheckoutSpec {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            repository: r.string("checkout.repository")?,
            sha: r.string("checkout.sha")?,
            git_ref: r.string("checkout.ref")?,
            depth: r.u32("checkout.depth")?,
            token: r.string("checkout.token")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.repository);
        w.string(&self.sha);
        w.string(&self.git_ref);
        w.u32(self.depth);
        w.string(&self.token);
    }
}
