//! Where runs come from when they come from a repository: projects (a git
//! repository with its pipeline file and webhook secret), the trigger
//! context a run carries (commit, ref, event, variables), the forges'
//! webhook payloads, and the bare mirror the server reads pipeline files
//! from.
//!
//! ```text
//!  forge --POST /api/webhooks/{github,gitlab}/{project}--> rest::webhooks
//!     verify signature (401 and nothing else otherwise)
//!     parse event (push, pull_request / Merge Request Hook; others 202)
//!     delivery id seen before?  --yes--> 200, the run it started
//!     mirror: fetch the ref, `git show SHA:FILE`, validate
//!     core: record the delivery and start the run, in one turn
//!  agent: check out SHA into the workspace, then run the steps
//!  core: run started / ended --after commit--> notifier (bounded queue)
//!     --> forge commit status (pending, then success/failure/error)
//!     --> generic webhook on run end (JSON, HMAC-SHA256 signed)
//! ```

pub mod mirror;
pub mod notifier;
pub mod project;
pub mod requests;
pub mod schedule;
pub mod start;
pub mod status;
pub mod webhook;

pub use project::{check_variables, Project, Trigger};
pub use schedule::Schedule;
pub use start::{start_run, StartError};
