//! The job queue: priority, aging and weighted fair share.
//!
//! Jobs wait in *lanes*, one per `(project, base priority)`. Inside a
//! lane the order is FIFO, and FIFO order is also best-first: jobs of a
//! lane share a base priority, and the older a job, the more it has aged.
//! So the best job overall is always the head of some lane, and a pass
//! only compares lane heads, in a heap.
//!
//! A lane head is ranked by, in order:
//! 1. effective priority, higher first: the base priority plus one for
//!    every `aging_interval_ms` the job has waited (no starvation);
//! 2. the project's running jobs divided by its weight, lower first (the
//!    project using the least of its share of the fleet goes first);
//! 3. the project's *virtual time*, lower first: service received so far
//!    divided by weight. It breaks ties when running counts are equal, e.g.
//!    with a single slot, so projects alternate instead of the oldest job
//!    winning every time;
//! 4. the job's age, older first, then arrival order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::ops::Bound;

use foldhash::{HashMap, HashMapExt};

use super::ids::JobId;
use super::tags::TagSet;

/// A job waiting to be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    /// Which job.
    pub id: JobId,
    /// Base priority; higher runs first.
    pub priority: u8,
    /// The project it belongs to, for fair share.
    pub project: String,
    /// Tags a runner must have (all of them) to run it.
    pub required: TagSet,
    /// When it entered the queue, in the caller's millisecond clock; drives
    /// aging and FIFO order.
    pub enqueued_at_ms: u64,
}

/// Virtual time charged for one job to a project of weight 1. Divisible by
/// 1..=16 so that common weights charge exact amounts.
const VTIME_PER_JOB: u64 = 720_720;

/// Dense index of a project in [`JobQueue::projects`].
pub(crate) type ProjectIdx = u32;

/// Fair-share state of one project.
#[derive(Debug)]
pub(crate) struct Project {
    pub(crate) name: String,
    pub(crate) weight: u32,
    /// Jobs assigned and not yet finished.
    pub(crate) running: u64,
    /// Jobs in the queue.
    pub(crate) queued: u64,
    /// Weighted service received; see the module doc.
    vtime: u64,
}

impl Project {
    fn is_idle(&self) -> bool {
        self.running == 0 && self.queued == 0
    }
}

/// A job in the queue with its bookkeeping.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) job: QueuedJob,
    pub(crate) project: ProjectIdx,
    seq: u64,
}

impl Entry {
    fn lane(&self) -> LaneKey {
        (self.project, self.job.priority)
    }
    fn position(&self) -> LanePos {
        (self.job.enqueued_at_ms, self.seq, self.job.id)
    }
}

type LaneKey = (ProjectIdx, u8);
/// Order inside a lane: enqueue time, then arrival sequence (unique).
type LanePos = (u64, u64, JobId);

/// Queued jobs, lanes and per-project fair-share accounting.
#[derive(Debug)]
pub(crate) struct JobQueue {
    jobs: HashMap<JobId, Entry>,
    /// Invariant: every queued job is in exactly the lane of its project
    /// and priority, and no lane is empty.
    lanes: BTreeMap<LaneKey, BTreeSet<LanePos>>,
    pub(crate) projects: Vec<Project>,
    project_idx: HashMap<String, ProjectIdx>,
    next_seq: u64,
    /// The virtual time of the last job served; a project waking up from
    /// idle starts here so that it cannot claim credit for the time it had
    /// nothing to run (start-time fair queuing).
    system_vtime: u64,
    aging_interval_ms: u64,
}

impl JobQueue {
    pub(crate) fn new(aging_interval_ms: u64) -> Self {
        Self {
            jobs: HashMap::new(),
            lanes: BTreeMap::new(),
            projects: Vec::new(),
            project_idx: HashMap::new(),
            next_seq: 0,
            system_vtime: 0,
            aging_interval_ms,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn get(&self, id: JobId) -> Option<&Entry> {
        self.jobs.get(&id)
    }

    pub(crate) fn contains(&self, id: JobId) -> bool {
        self.jobs.contains_key(&id)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.jobs.values()
    }

    /// Base priority plus aging. `aging_interval_ms == 0` disables aging.
    pub(crate) fn effective_priority(&self, job: &QueuedJob, now_ms: u64) -> u64 {
        let aged = now_ms
            .saturating_sub(job.enqueued_at_ms)
            .checked_div(self.aging_interval_ms)
            .unwrap_or(0);
        u64::from(job.priority).saturating_add(aged)
    }

    pub(crate) fn project(&mut self, name: &str) -> ProjectIdx {
        if let Some(&idx) = self.project_idx.get(name) {
            return idx;
        }
        let idx = ProjectIdx::try_from(self.projects.len()).expect("more than u32::MAX projects");
        self.projects.push(Project {
            name: name.to_owned(),
            weight: 1,
            running: 0,
            queued: 0,
            vtime: 0,
        });
        self.project_idx.insert(name.to_owned(), idx);
        idx
    }

    /// Sets a project's share; 0 is taken as 1 (a project cannot opt out
    /// of running entirely through its weight).
    pub(crate) fn set_weight(&mut self, name: &str, weight: u32) {
        let idx = self.project(name);
        self.projects[idx as usize].weight = weight.max(1);
    }

    /// Adds a job; the caller has checked the id is not already known.
    pub(crate) fn push(&mut self, job: QueuedJob) {
        let project = self.project(&job.project);
        let p = &mut self.projects[project as usize];
        if p.is_idle() {
            p.vtime = p.vtime.max(self.system_vtime);
        }
        p.queued += 1;
        let entry = Entry {
            job,
            project,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.lanes
            .entry(entry.lane())
            .or_default()
            .insert(entry.position());
        self.jobs.insert(entry.job.id, entry);
    }

    /// Takes a job out of the queue (cancelled or assigned).
    pub(crate) fn remove(&mut self, id: JobId) -> Option<Entry> {
        let entry = self.jobs.remove(&id)?;
        let lane_key = entry.lane();
        let lane = self.lanes.get_mut(&lane_key).expect("queued job has a lane");
        let removed = lane.remove(&entry.position());
        debug_assert!(removed);
        if lane.is_empty() {
            self.lanes.remove(&lane_key);
        }
        self.projects[entry.project as usize].queued -= 1;
        Some(entry)
    }

    /// Charges an assignment to a project: one more running job and one
    /// job's worth of virtual time.
    pub(crate) fn charge(&mut self, project: ProjectIdx) {
        let p = &mut self.projects[project as usize];
        self.system_vtime = self.system_vtime.max(p.vtime);
        p.running += 1;
        p.vtime = p
            .vtime
            .saturating_add((VTIME_PER_JOB / u64::from(p.weight)).max(1));
    }

    /// A job of `project` stopped running.
    pub(crate) fn discharge(&mut self, project: ProjectIdx) {
        let p = &mut self.projects[project as usize];
        p.running = p.running.saturating_sub(1);
    }

    /// The ranking key of the job at `pos` in `lane`, with the project's
    /// fair-share state as it is now.
    fn rank(&self, lane: LaneKey, pos: LanePos, now_ms: u64) -> Rank {
        let job = &self.jobs[&pos.2].job;
        let p = &self.projects[lane.0 as usize];
        Rank {
            priority: self.effective_priority(job, now_ms),
            running: p.running,
            weight: u64::from(p.weight),
            vtime: p.vtime,
            enqueued_at_ms: pos.0,
            seq: pos.1,
            lane,
            job: pos.2,
        }
    }

    /// Whether `a` is ranked ahead of `b` (see the module doc), both
    /// queued jobs.
    pub(crate) fn is_ahead(&self, a: &Entry, b: &Entry, now_ms: u64) -> bool {
        self.rank(a.lane(), a.position(), now_ms) > self.rank(b.lane(), b.position(), now_ms)
    }

    /// Starts a pass over the queue in rank order at `now_ms`.
    pub(crate) fn pass(&self, now_ms: u64) -> Pass {
        let heap = self
            .lanes
            .iter()
            .filter_map(|(&lane, jobs)| jobs.first().map(|&pos| self.rank(lane, pos, now_ms)))
            .collect();
        Pass { heap, now_ms }
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let in_lanes: usize = self.lanes.values().map(BTreeSet::len).sum();
        assert_eq!(in_lanes, self.jobs.len());
        for (key, lane) in &self.lanes {
            assert!(!lane.is_empty());
            for pos in lane {
                assert_eq!(self.jobs[&pos.2].lane(), *key);
            }
        }
        for (idx, p) in self.projects.iter().enumerate() {
            let queued = self.jobs.values().filter(|e| e.project as usize == idx).count();
            assert_eq!(p.queued as usize, queued, "queued count of {}", p.name);
        }
    }
}

/// A lane head's position in the ranking; `Ord` puts the best last (max-heap).
#[derive(Debug, Clone, Copy)]
struct Rank {
    priority: u64,
    running: u64,
    weight: u64,
    vtime: u64,
    enqueued_at_ms: u64,
    seq: u64,
    lane: LaneKey,
    job: JobId,
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        // running/weight compared exactly by cross-multiplying (u64 * u32
        // range cannot overflow u128). Lower usage is better, so reversed.
        let usage = |r: &Rank, o: &Rank| u128::from(r.running) * u128::from(o.weight);
        self.priority
            .cmp(&other.priority)
            .then_with(|| usage(other, self).cmp(&usage(self, other)))
            .then_with(|| other.vtime.cmp(&self.vtime))
            .then_with(|| other.enqueued_at_ms.cmp(&self.enqueued_at_ms))
            // seq is unique per queued job, so this is a total order.
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Rank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Rank {}

/// One walk over the queue in rank order, visiting every job at most once.
///
/// The heap holds one candidate per lane. Between two `next` calls the
/// scheduler may assign the previous candidate, which raises its project's
/// running count and virtual time: the ranks of that project's other lanes
/// in the heap are then stale. Ranks only ever get *worse* during a pass
/// (nothing finishes while the scheduler runs), so a stale entry is fixed
/// lazily: when it reaches the top its rank is recomputed, and if it got
/// worse it goes back into the heap instead of being served.
pub(crate) struct Pass {
    heap: BinaryHeap<Rank>,
    now_ms: u64,
}

impl Pass {
    /// The best job not yet visited in this pass. The caller must follow
    /// with [`Pass::advance`] for it, whether it was placed or skipped.
    pub(crate) fn next(&mut self, queue: &JobQueue) -> Option<JobId> {
        while let Some(top) = self.heap.pop() {
            let fresh = queue.rank(top.lane, (top.enqueued_at_ms, top.seq, top.job), self.now_ms);
            if fresh < top {
                self.heap.push(fresh);
                continue;
            }
            // Put it back until `advance`, so the lane keeps its place.
            self.heap.push(fresh);
            return Some(fresh.job);
        }
        None
    }

    /// Moves the lane of the job last returned by `next` on to its next
    /// job. Call after the job was removed from the queue or skipped.
    pub(crate) fn advance(&mut self, queue: &JobQueue) {
        let Some(top) = self.heap.pop() else { return };
        let after = (top.enqueued_at_ms, top.seq, top.job);
        let next = queue.lanes.get(&top.lane).and_then(|lane| {
            lane.range((Bound::Excluded(after), Bound::Unbounded))
                .next()
                .copied()
        });
        if let Some(pos) = next {
            self.heap.push(queue.rank(top.lane, pos, self.now_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, priority: u8, project: &str, at: u64) -> QueuedJob {
        QueuedJob {
            id: JobId(id),
            priority,
            project: project.into(),
            required: TagSet::new(),
            enqueued_at_ms: at,
        }
    }

    /// Drains the queue in rank order, charging each job as if assigned.
    fn order(queue: &mut JobQueue, now_ms: u64) -> Vec<u64> {
        let mut pass = queue.pass(now_ms);
        let mut out = Vec::new();
        while let Some(id) = pass.next(queue) {
            let entry = queue.remove(id).unwrap();
            queue.charge(entry.project);
            pass.advance(queue);
            out.push(id.0);
        }
        queue.check_invariants();
        out
    }

    #[test]
    fn priority_then_fifo() {
        let mut q = JobQueue::new(0);
        q.push(job(1, 1, "p", 0));
        q.push(job(2, 5, "p", 1));
        q.push(job(3, 1, "p", 2));
        q.push(job(4, 5, "p", 3));
        assert_eq!(order(&mut q, 10), vec![2, 4, 1, 3]);
    }

    #[test]
    fn weights_split_a_pass() {
        let mut q = JobQueue::new(0);
        q.set_weight("big", 2);
        for i in 0..6 {
            q.push(job(i, 0, "big", i));
            q.push(job(100 + i, 0, "small", i));
        }
        // big may run twice as many jobs as small at any time.
        let first_six = &order(&mut q, 100)[..6];
        let big = first_six.iter().filter(|&&id| id < 100).count();
        assert_eq!(big, 4, "{first_six:?}");
    }

    #[test]
    fn idle_project_does_not_bank_credit() {
        let mut q = JobQueue::new(0);
        // a runs 5 jobs alone; its virtual time grows.
        for i in 0..5 {
            q.push(job(i, 0, "a", i));
        }
        let _ = order(&mut q, 10);
        for _ in 0..5 {
            q.discharge(0);
        }
        // b wakes up; it must not get 5 jobs in a row before a gets one.
        for i in 0..4 {
            q.push(job(10 + i, 0, "a", 20 + i));
            q.push(job(20 + i, 0, "b", 20 + i));
        }
        let mut pass = q.pass(30);
        let mut served = Vec::new();
        for _ in 0..4 {
            let id = pass.next(&q).unwrap();
            let e = q.remove(id).unwrap();
            q.charge(e.project);
            q.discharge(e.project); // one slot: it finishes before the next
            pass = q.pass(30);
            served.push(id.0);
        }
        assert!(served[..3].iter().any(|&id| id < 20), "a starved: {served:?}");
    }
}
