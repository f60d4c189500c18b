//! Why a job is still waiting, in words a person can act on.
//!
//! Reasons are computed on demand (a user opens the job page, the CLI asks)
//! by [`Scheduler::pending_reason`](super::Scheduler::pending_reason),
//! never during a scheduling pass: a pass must stay cheap however many
//! jobs wait, and explaining a job costs a scan of the runners and queue.

use std::fmt;

use super::queue::{Entry, JobQueue};
use super::runners::{Availability, RunnerIndex};
use super::tags::{TagInterner, TagSet};

/// Why a queued job has not been assigned to a runner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PendingReason {
    /// No runner is connected at all.
    NoRunners,
    /// No connected runner has every required tag.
    NoMatchingRunner {
        /// Required tags no connected runner has at all, sorted.
        missing_everywhere: Vec<String>,
        /// The closest kind of runner, when one has some of the tags.
        closest: Option<PartialMatch>,
    },
    /// Runners with the tags exist but none takes new jobs.
    EligibleUnavailable {
        /// Eligible runners that are draining.
        draining: usize,
        /// Eligible runners that missed their heartbeats.
        lost: usize,
    },
    /// Every eligible runner that takes jobs has all its slots in use.
    AllSlotsBusy {
        /// Eligible runners taking jobs (all full).
        busy: usize,
        /// Eligible runners not taking jobs (draining or lost).
        unavailable: usize,
    },
    /// A runner could take it; other jobs go first.
    Queued {
        /// Queued jobs with a higher effective priority.
        behind_higher_priority: usize,
        /// Queued jobs of the same effective priority ranked ahead of it
        /// by fair share or age.
        behind_same_priority: usize,
    },
}

/// The runners that come closest to a job's requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialMatch {
    /// How many runners have this tag set.
    pub runners: usize,
    /// Required tags they have, sorted.
    pub have: Vec<String>,
    /// Required tags they lack, sorted.
    pub lack: Vec<String>,
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRunners => write!(f, "no runner is connected"),
            Self::NoMatchingRunner {
                missing_everywhere,
                closest,
            } => {
                let docker = valkyrie::message::DOCKER_EXECUTOR_TAG;
                let others: Vec<&str> = missing_everywhere
                    .iter()
                    .map(String::as_str)
                    .filter(|t| *t != docker)
                    .collect();
                if others.len() < missing_everywhere.len() {
                    // The implicit tag of `image:` jobs: say what it means.
                    write!(
                        f,
                        "no connected runner has the Docker executor, which the job's `image:` needs \
                         (start one with `valkyrie-agent --executor docker`)"
                    )?;
                    if !others.is_empty() {
                        write!(f, "; no connected runner has tags [{}]", others.join(", "))?;
                    }
                } else if missing_everywhere.is_empty() {
                    write!(f, "no connected runner has all the required tags")?;
                } else {
                    write!(
                        f,
                        "no connected runner has tags [{}]",
                        missing_everywhere.join(", ")
                    )?;
                }
                if let Some(c) = closest {
                    write!(
                        f,
                        "; closest: {} {} with [{}] but without [{}]",
                        c.runners,
                        plural(c.runners, "runner", "runners"),
                        c.have.join(", "),
                        c.lack.join(", ")
                    )?;
                }
                Ok(())
            }
            Self::EligibleUnavailable { draining, lost } => {
                let n = draining + lost;
                write!(f, "{n} eligible {} ", plural(n, "runner", "runners"))?;
                match (draining, lost) {
                    (_, 0) => write!(f, "{}", plural(n, "is draining", "are draining")),
                    (0, _) => write!(f, "{}", plural(n, "is lost", "are lost")),
                    _ => write!(f, "not taking jobs ({draining} draining, {lost} lost)"),
                }
            }
            Self::AllSlotsBusy { busy, unavailable } => {
                write!(
                    f,
                    "{busy} eligible {}, all slots busy",
                    plural(*busy, "runner", "runners")
                )?;
                if *unavailable > 0 {
                    write!(f, " ({unavailable} more not taking jobs)")?;
                }
                Ok(())
            }
            Self::Queued {
                behind_higher_priority,
                behind_same_priority,
            } => match (behind_higher_priority, behind_same_priority) {
                (0, 0) => write!(f, "next in line, waiting for the next scheduling pass"),
                (h, 0) => write!(
                    f,
                    "waiting behind {h} higher-priority {}",
                    plural(*h, "job", "jobs")
                ),
                (0, s) => write!(
                    f,
                    "waiting behind {s} {} of the same priority (fair share)",
                    plural(*s, "job", "jobs")
                ),
                (h, s) => write!(
                    f,
                    "waiting behind {h} higher-priority {} and {s} of the same priority",
                    plural(*h, "job", "jobs")
                ),
            },
        }
    }
}

/// Explains why `entry` waits. `O(groups × members + queued jobs)`.
pub(crate) fn explain(
    entry: &Entry,
    queue: &JobQueue,
    runners: &RunnerIndex,
    tags: &TagInterner,
    now_ms: u64,
) -> PendingReason {
    let required = &entry.job.required;
    if runners.len() == 0 {
        // A container job says which kind of runner it waits for.
        let docker = valkyrie::message::DOCKER_EXECUTOR_TAG;
        if tags.lookup(docker).is_some_and(|id| required.contains(id)) {
            return PendingReason::NoMatchingRunner {
                missing_everywhere: vec![docker.to_owned()],
                closest: None,
            };
        }
        return PendingReason::NoRunners;
    }
    let eligible: Vec<_> = runners
        .groups()
        .iter()
        .filter(|g| g.tags.is_superset(required))
        .collect();
    if eligible.is_empty() {
        return no_match(required, runners, tags);
    }

    let (mut ready_busy, mut draining, mut lost, mut ready_free) = (0, 0, 0, 0);
    for id in eligible.iter().flat_map(|g| g.members.iter()) {
        let runner = runners.get(*id).expect("group members are indexed");
        match runner.availability {
            Availability::Ready if runner.free_slots() > 0 => ready_free += 1,
            Availability::Ready => ready_busy += 1,
            Availability::Draining => draining += 1,
            Availability::Lost => lost += 1,
        }
    }
    if ready_free + ready_busy == 0 {
        return PendingReason::EligibleUnavailable { draining, lost };
    }
    if ready_free == 0 {
        return PendingReason::AllSlotsBusy {
            busy: ready_busy,
            unavailable: draining + lost,
        };
    }

    let mine = queue.effective_priority(&entry.job, now_ms);
    let (mut higher, mut same) = (0, 0);
    for other in queue.iter().filter(|o| o.job.id != entry.job.id) {
        let theirs = queue.effective_priority(&other.job, now_ms);
        if theirs > mine {
            higher += 1;
        } else if theirs == mine && queue.is_ahead(other, entry, now_ms) {
            same += 1;
        }
    }
    PendingReason::Queued {
        behind_higher_priority: higher,
        behind_same_priority: same,
    }
}

/// No runner kind covers `required`: name what is missing and the closest kind.
fn no_match(required: &TagSet, runners: &RunnerIndex, tags: &TagInterner) -> PendingReason {
    let mut anywhere = TagSet::new();
    for group in runners.groups() {
        for tag in group.tags.intersection(required).iter() {
            anywhere.insert(tag);
        }
    }
    let missing_everywhere = tags.names(&required.difference(&anywhere));
    // Closest: most required tags covered, then most runners.
    let closest = runners
        .groups()
        .iter()
        .map(|g| (g.tags.intersection(required), g))
        .filter(|(have, _)| !have.is_empty())
        .max_by_key(|(have, g)| (have.len(), g.members.len()))
        .map(|(have, g)| PartialMatch {
            runners: g.members.len(),
            have: tags.names(&have),
            lack: tags.names(&required.difference(&g.tags)),
        });
    PendingReason::NoMatchingRunner {
        missing_everywhere,
        closest,
    }
}

#[cfg(test)]
mod docker_tests {
    use valkyrie::message::DOCKER_EXECUTOR_TAG;

    use crate::scheduler::{JobId, QueuedJob, RunnerId, Scheduler};

    #[test]
    fn a_container_job_without_a_docker_runner_says_so() {
        let mut s = Scheduler::default();
        let mut shell = None;
        for (id, tags) in [
            (1, vec![DOCKER_EXECUTOR_TAG]),
            (2, vec![DOCKER_EXECUTOR_TAG, "gpu"]),
        ] {
            let required = s.tag_set(tags);
            let job = QueuedJob {
                id: JobId(id),
                priority: 0,
                project: "p".into(),
                required,
                enqueued_at_ms: 0,
            };
            s.enqueue(job).unwrap();
            if shell.is_none() {
                // No runner at all yet: the reason still names the executor.
                let reason = s.pending_reason(JobId(1), 0).unwrap().to_string();
                assert!(
                    reason.starts_with("no connected runner has the Docker executor"),
                    "{reason}"
                );
                shell = Some(s.tag_set(["linux"]));
                s.upsert_runner(RunnerId(1), shell.clone().unwrap(), 4);
            }
        }
        assert!(s.schedule(0).is_empty(), "a shell runner took a container job");
        let reason = |id| s.pending_reason(JobId(id), 0).unwrap().to_string();
        assert_eq!(
            reason(1),
            "no connected runner has the Docker executor, which the job's `image:` needs \
             (start one with `valkyrie-agent --executor docker`)"
        );
        assert!(
            reason(2).ends_with("; no connected runner has tags [gpu]"),
            "{}",
            reason(2)
        );
        let docker = s.tag_set([DOCKER_EXECUTOR_TAG]);
        s.upsert_runner(RunnerId(2), docker, 4);
        let plan = s.schedule(0);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].job, plan[0].runner), (JobId(1), RunnerId(2)));
    }
}
