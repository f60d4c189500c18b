//! Scenario tests and property tests for the scheduler as a whole.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn job(s: &mut Scheduler, id: u64, priority: u8, project: &str, tags: &[&str], at_ms: u64) {
    let required = s.tag_set(tags);
    s.enqueue(QueuedJob {
        id: JobId(id),
        priority,
        project: project.into(),
        required,
        enqueued_at_ms: at_ms,
    })
    .unwrap();
}

fn runner(s: &mut Scheduler, id: u64, tags: &[&str], slots: u32) {
    let tags = s.tag_set(tags);
    s.upsert_runner(RunnerId(id), tags, slots);
}

fn jobs(plan: &[Assignment]) -> Vec<u64> {
    plan.iter().map(|a| a.job.0).collect()
}

/// Runs the single-slot cluster to completion: schedule, finish, repeat.
/// Returns the start order.
fn drain_one_at_a_time(s: &mut Scheduler, now_ms: u64) -> Vec<u64> {
    let mut order = Vec::new();
    loop {
        let plan = s.schedule(now_ms);
        if plan.is_empty() {
            return order;
        }
        for a in plan {
            order.push(a.job.0);
            s.job_finished(a.job).unwrap();
        }
    }
}

#[test]
fn higher_priority_runs_first_under_contention() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &["linux"], 2);
    job(&mut s, 1, 0, "p", &["linux"], 0);
    job(&mut s, 2, 9, "p", &["linux"], 1);
    job(&mut s, 3, 5, "q", &["linux"], 2);
    job(&mut s, 4, 9, "q", &["linux"], 3);
    assert_eq!(jobs(&s.schedule(10)), vec![2, 4]);
    s.job_finished(JobId(2));
    assert_eq!(jobs(&s.schedule(10)), vec![3]);
    s.job_finished(JobId(4));
    assert_eq!(jobs(&s.schedule(10)), vec![1]);
    assert_eq!(s.queue_len(), 0);
}

#[test]
fn fair_share_alternates_projects_on_one_slot() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &[], 1);
    for i in 0..10 {
        job(&mut s, i, 0, "a", &[], i);
    }
    for i in 0..10 {
        job(&mut s, 100 + i, 0, "b", &[], 10 + i);
    }
    let order = drain_one_at_a_time(&mut s, 1_000);
    let projects: String = order.iter().map(|&id| if id < 100 { 'A' } else { 'B' }).collect();
    assert_eq!(projects, "ABABABABABABABABABAB");
    // FIFO inside each project.
    let a: Vec<u64> = order.iter().copied().filter(|&id| id < 100).collect();
    assert_eq!(a, (0..10).collect::<Vec<_>>());
}

#[test]
fn fair_share_uses_running_jobs_over_weight() {
    let mut s = Scheduler::default();
    s.set_project_weight("big", 3);
    for i in 0..10 {
        job(&mut s, i, 0, "big", &[], i);
        job(&mut s, 100 + i, 0, "small", &[], i);
    }
    runner(&mut s, 1, &[], 8);
    let plan = s.schedule(100);
    let big = plan.iter().filter(|a| a.job.0 < 100).count();
    assert_eq!((big, plan.len() - big), (6, 2));
    assert_eq!(s.project_running("big"), 6);
}

#[test]
fn aging_lets_a_low_priority_job_run() {
    // One slot, and a high-priority job arrives every second and takes it.
    fn run(aging_interval_ms: u64) -> Option<u64> {
        let mut s = Scheduler::new(SchedulerConfig::new().aging_interval_ms(aging_interval_ms));
        runner(&mut s, 1, &[], 1);
        job(&mut s, 0, 0, "batch", &[], 0);
        for step in 1..=20u64 {
            let now = step * 1_000;
            job(&mut s, step, 3, "interactive", &[], now);
            for a in s.schedule(now) {
                if a.job == JobId(0) {
                    return Some(now);
                }
                s.job_finished(a.job);
            }
        }
        None
    }
    assert_eq!(run(0), None, "without aging the low-priority job starves");
    // Base 0 + 1 per 1 s: after 3 s it ties a fresh priority-3 job
    // (effective 3 = 3) and wins on fair share, its project having run
    // nothing yet.
    assert_eq!(run(1_000), Some(3_000));
}

#[test]
fn unplaceable_job_does_not_block_the_queue() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &["linux"], 1);
    job(&mut s, 1, 9, "p", &["gpu"], 0);
    job(&mut s, 2, 0, "p", &["linux"], 1);
    assert_eq!(
        s.schedule(10),
        vec![Assignment {
            job: JobId(2),
            runner: RunnerId(1)
        }]
    );
    assert!(s.is_queued(JobId(1)));
}

#[test]
fn generic_job_leaves_the_special_runner_free() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &["linux", "gpu"], 1);
    runner(&mut s, 2, &["linux"], 1);
    job(&mut s, 1, 5, "p", &["linux"], 0);
    job(&mut s, 2, 0, "p", &["gpu"], 1);
    let plan = s.schedule(10);
    assert_eq!(plan.len(), 2);
    assert!(plan.contains(&Assignment {
        job: JobId(1),
        runner: RunnerId(2)
    }));
}

#[test]
fn least_loaded_runner_is_picked() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &[], 4);
    runner(&mut s, 2, &[], 4);
    for i in 0..4 {
        job(&mut s, i, 0, "p", &[], i);
    }
    let plan = s.schedule(10);
    let on_1 = plan.iter().filter(|a| a.runner == RunnerId(1)).count();
    assert_eq!(on_1, 2, "{plan:?}");
}

#[test]
fn draining_runner_gets_no_jobs_and_keeps_its_running_ones() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &[], 2);
    job(&mut s, 1, 0, "p", &[], 0);
    assert_eq!(s.schedule(0).len(), 1);
    assert!(s.set_availability(RunnerId(1), Availability::Draining));
    job(&mut s, 2, 0, "p", &[], 1);
    assert!(s.schedule(1).is_empty());
    assert_eq!(s.runner(RunnerId(1)).unwrap().used, 1);
    assert_eq!(
        s.job_finished(JobId(1)),
        Some(Assignment {
            job: JobId(1),
            runner: RunnerId(1)
        })
    );
    assert_eq!(s.runner(RunnerId(1)).unwrap().used, 0);
}

#[test]
fn finishing_a_job_of_a_removed_runner_does_not_free_a_slot_on_its_successor() {
    let mut s = Scheduler::default();
    runner(&mut s, 1, &[], 1);
    job(&mut s, 1, 0, "p", &[], 0);
    assert_eq!(s.schedule(0).len(), 1);
    s.remove_runner(RunnerId(1));
    runner(&mut s, 1, &[], 1);
    job(&mut s, 2, 0, "p", &[], 1);
    assert_eq!(s.schedule(1).len(), 1);
    s.job_finished(JobId(1));
    assert_eq!(
        s.runner(RunnerId(1)).unwrap().used,
        1,
        "job 2 still holds the slot"
    );
    assert_eq!(s.project_running("p"), 1);
}

#[test]
fn enqueue_refuses_known_ids_and_remove_job_cancels() {
    let mut s = Scheduler::default();
    job(&mut s, 1, 0, "p", &[], 0);
    let again = QueuedJob {
        id: JobId(1),
        priority: 0,
        project: "p".into(),
        required: TagSet::new(),
        enqueued_at_ms: 0,
    };
    assert_eq!(
        s.enqueue(again.clone()),
        Err(EnqueueJobError::AlreadyQueued(JobId(1)))
    );
    runner(&mut s, 7, &[], 1);
    s.schedule(0);
    assert_eq!(
        s.enqueue(again.clone()),
        Err(EnqueueJobError::AlreadyRunning(JobId(1), RunnerId(7)))
    );
    s.job_finished(JobId(1));
    assert_eq!(s.enqueue(again), Ok(()));
    assert!(s.remove_job(JobId(1)));
    assert!(!s.remove_job(JobId(1)));
    assert_eq!(s.queue_len(), 0);
}

#[test]
fn pending_reason_texts() {
    let reason = |s: &Scheduler, id: u64| s.pending_reason(JobId(id), 0).unwrap().to_string();
    let mut s = Scheduler::default();
    job(&mut s, 1, 0, "p", &["gpu"], 0);
    assert_eq!(reason(&s, 1), "no runner is connected");

    runner(&mut s, 1, &["linux"], 1);
    assert_eq!(reason(&s, 1), "no connected runner has tags [gpu]");

    job(&mut s, 2, 0, "p", &["linux", "arm64", "gpu"], 0);
    assert_eq!(
        reason(&s, 2),
        "no connected runner has tags [arm64, gpu]; closest: 1 runner with [linux] but without [arm64, gpu]"
    );
    runner(&mut s, 2, &["arm64"], 1);
    runner(&mut s, 3, &["arm64"], 1);
    assert_eq!(
        reason(&s, 2),
        "no connected runner has tags [gpu]; closest: 2 runners with [arm64] but without [gpu, linux]"
    );

    runner(&mut s, 4, &["gpu"], 1);
    s.set_availability(RunnerId(4), Availability::Draining);
    assert_eq!(reason(&s, 1), "1 eligible runner is draining");
    s.set_availability(RunnerId(4), Availability::Lost);
    assert_eq!(reason(&s, 1), "1 eligible runner is lost");

    // Two linux runners, both full.
    runner(&mut s, 5, &["linux"], 1);
    job(&mut s, 3, 9, "p", &["linux"], 0);
    job(&mut s, 4, 9, "p", &["linux"], 0);
    job(&mut s, 5, 0, "p", &["linux"], 0);
    assert_eq!(s.schedule(0).len(), 2);
    assert_eq!(reason(&s, 5), "2 eligible runners, all slots busy");

    // A free slot, but higher-priority jobs wait in front.
    let mut s = Scheduler::default();
    runner(&mut s, 1, &[], 1);
    job(&mut s, 1, 5, "p", &[], 0);
    job(&mut s, 2, 5, "p", &[], 1);
    job(&mut s, 3, 0, "p", &[], 2);
    assert_eq!(reason(&s, 3), "waiting behind 2 higher-priority jobs");
    assert_eq!(
        reason(&s, 2),
        "waiting behind 1 job of the same priority (fair share)"
    );
    assert_eq!(
        reason(&s, 1),
        "next in line, waiting for the next scheduling pass"
    );
    assert_eq!(s.pending_reason(JobId(99), 0), None);
}

// ----- properties ------------------------------------------------------------

const TAG_NAMES: [&str; 4] = ["linux", "gpu", "arm64", "docker"];

#[derive(Debug, Clone)]
enum Op {
    UpsertRunner { id: u64, tags: u8, slots: u32 },
    RemoveRunner { id: u64 },
    SetAvailability { id: u64, availability: Availability },
    Enqueue { priority: u8, project: u8, tags: u8 },
    Cancel { pick: usize },
    Finish { pick: usize },
    Schedule { advance_ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..6u64, 0..16u8, 0..4u32).prop_map(|(id, tags, slots)| Op::UpsertRunner { id, tags, slots }),
        1 => (0..6u64).prop_map(|id| Op::RemoveRunner { id }),
        1 => (0..6u64, prop_oneof![Just(Availability::Ready), Just(Availability::Draining), Just(Availability::Lost)])
            .prop_map(|(id, availability)| Op::SetAvailability { id, availability }),
        4 => (0..4u8, 0..3u8, 0..16u8).prop_map(|(priority, project, tags)| Op::Enqueue { priority, project, tags }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
        3 => (0..5_000u64).prop_map(|advance_ms| Op::Schedule { advance_ms }),
    ]
}

fn tags_of(s: &mut Scheduler, mask: u8) -> TagSet {
    s.tag_set(
        TAG_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, n)| *n),
    )
}

/// What the test knows independently of the scheduler's internals.
#[derive(Default)]
struct Model {
    queued: BTreeMap<JobId, TagSet>,
    /// Running job -> runner, `None` once the runner was removed.
    running: BTreeMap<JobId, Option<RunnerId>>,
    next_job: u64,
}

fn check(s: &Scheduler, model: &Model, now_ms: u64) -> Result<(), TestCaseError> {
    s.runners.check_invariants();
    s.queue.check_invariants();
    prop_assert_eq!(s.queue_len(), model.queued.len());
    prop_assert_eq!(s.running_len(), model.running.len());
    for r in s.runners.iter() {
        let on_it = model.running.values().filter(|&&at| at == Some(r.id)).count();
        prop_assert_eq!(r.used as usize, on_it, "used slots of {}", r.id);
    }
    for &id in model.queued.keys() {
        prop_assert!(s.is_queued(id));
        prop_assert!(!model.running.contains_key(&id));
        prop_assert!(s.pending_reason(id, now_ms).is_some());
    }
    Ok(())
}

fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = Scheduler::new(SchedulerConfig::new().aging_interval_ms(1_000));
    let mut model = Model::default();
    let mut now_ms = 0;
    for op in ops {
        match op {
            Op::UpsertRunner { id, tags, slots } => {
                let tags = tags_of(&mut s, tags);
                s.upsert_runner(RunnerId(id), tags, slots);
            }
            Op::RemoveRunner { id } => {
                s.remove_runner(RunnerId(id));
                for at in model.running.values_mut().filter(|at| **at == Some(RunnerId(id))) {
                    *at = None;
                }
            }
            Op::SetAvailability { id, availability } => {
                s.set_availability(RunnerId(id), availability);
            }
            Op::Enqueue {
                priority,
                project,
                tags,
            } => {
                let required = tags_of(&mut s, tags);
                let id = JobId(model.next_job);
                model.next_job += 1;
                let project = format!("project-{project}");
                s.enqueue(QueuedJob {
                    id,
                    priority,
                    project,
                    required: required.clone(),
                    enqueued_at_ms: now_ms,
                })
                .unwrap();
                model.queued.insert(id, required);
            }
            Op::Cancel { pick } => {
                if let Some(&id) = model.queued.keys().nth(pick % model.queued.len().max(1)) {
                    prop_assert!(s.remove_job(id));
                    model.queued.remove(&id);
                }
            }
            Op::Finish { pick } => {
                if let Some(&id) = model.running.keys().nth(pick % model.running.len().max(1)) {
                    prop_assert!(s.job_finished(id).is_some());
                    model.running.remove(&id);
                }
            }
            Op::Schedule { advance_ms } => {
                now_ms += advance_ms;
                let before: BTreeMap<RunnerId, RunnerSlot> =
                    s.runners.iter().map(|r| (r.id, r.clone())).collect();
                let plan = s.schedule(now_ms);
                let mut per_runner: BTreeMap<RunnerId, u32> = BTreeMap::new();
                let mut seen = BTreeSet::new();
                for a in &plan {
                    // Assigned at most once: it was queued, not running,
                    // and appears once in the plan.
                    prop_assert!(seen.insert(a.job), "{} twice in one plan", a.job);
                    let required = model.queued.remove(&a.job);
                    prop_assert!(required.is_some(), "{} was not queued", a.job);
                    prop_assert!(!model.running.contains_key(&a.job));
                    // Only to a schedulable runner with every required tag.
                    let r = &before[&a.runner];
                    prop_assert!(r.is_schedulable(), "{} is {:?}", r.id, r.availability);
                    prop_assert!(r.tags.is_superset(&required.unwrap()));
                    *per_runner.entry(a.runner).or_default() += 1;
                    model.running.insert(a.job, Some(a.runner));
                }
                // Never more jobs than slots.
                for (id, n) in per_runner {
                    let r = &before[&id];
                    prop_assert!(
                        r.used + n <= r.slots,
                        "{id}: {} used + {n} new > {} slots",
                        r.used,
                        r.slots
                    );
                }
                // Work conserving: nothing left that some runner could take.
                for (id, required) in &model.queued {
                    let fits = s
                        .runners
                        .iter()
                        .any(|r| r.is_schedulable() && r.free_slots() > 0 && r.tags.is_superset(required));
                    prop_assert!(!fits, "{id} left queued although a runner fits it");
                    let reason = s.pending_reason(*id, now_ms).unwrap();
                    let is_queued_reason = matches!(reason, PendingReason::Queued { .. });
                    prop_assert!(!is_queued_reason, "{}: {}", id, reason);
                }
            }
        }
        check(&s, &model, now_ms)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn safety_invariants_hold_over_random_operations(ops in proptest::collection::vec(op(), 1..80)) {
        run_ops(ops)?;
    }

    #[test]
    fn same_inputs_give_the_same_plan(ops in proptest::collection::vec(op(), 1..40)) {
        // The scheduler is pure: replaying the operations gives identical plans.
        let replay = |ops: &[Op]| {
            let mut s = Scheduler::default();
            let mut next = 0;
            let mut plans = Vec::new();
            let mut running = Vec::new();
            for op in ops {
                match op {
                    Op::UpsertRunner { id, tags, slots } => {
                        let tags = tags_of(&mut s, *tags);
                        s.upsert_runner(RunnerId(*id), tags, *slots);
                    }
                    Op::Enqueue { priority, project, tags } => {
                        let required = tags_of(&mut s, *tags);
                        let _ = s.enqueue(QueuedJob { id: JobId(next), priority: *priority, project: project.to_string(), required, enqueued_at_ms: next });
                        next += 1;
                    }
                    Op::Finish { pick } if !running.is_empty() => {
                        let id: JobId = running.remove(pick % running.len());
                        s.job_finished(id);
                    }
                    Op::Schedule { advance_ms } => {
                        let plan = s.schedule(*advance_ms);
                        running.extend(plan.iter().map(|a| a.job));
                        plans.push(plan);
                    }
                    _ => {}
                }
            }
            plans
        };
        prop_assert_eq!(replay(&ops), replay(&ops));
    }
}
