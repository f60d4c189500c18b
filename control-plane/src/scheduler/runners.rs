//! The runner index: runners grouped by their distinct tag set.
//!
//! A CI fleet has many runners but few *kinds* of runner (all the
//! `linux,docker` boxes look alike). Grouping runners by their exact tag
//! set means feasibility ("does this runner have every tag the job
//! needs?") is checked once per group instead of once per runner, and
//! inside a group the least loaded runner is the first element of an
//! ordered set, so picking one is `O(log n)`.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use foldhash::HashMap;

use super::ids::RunnerId;
use super::tags::TagSet;

/// Whether a runner may receive new jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Availability {
    /// Connected and accepting jobs.
    Ready,
    /// Finishing its running jobs, takes no new ones (operator drain or
    /// agent shutdown).
    Draining,
    /// Missed its heartbeats; kept in the index so its running jobs are
    /// still accounted for until it comes back or is removed.
    Lost,
}

/// The scheduler's view of one runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerSlot {
    /// Which runner.
    pub id: RunnerId,
    /// The tags it advertises.
    pub tags: TagSet,
    /// How many jobs it runs at once.
    pub slots: u32,
    /// How many of those slots hold a job. May exceed `slots` for a while
    /// after a runner re-registers with fewer slots.
    pub used: u32,
    /// Whether it takes new jobs.
    pub availability: Availability,
}

impl RunnerSlot {
    /// Slots that can take a job now (0 when over-committed).
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.used)
    }

    /// Whether new jobs may be placed on it.
    pub fn is_schedulable(&self) -> bool {
        self.availability == Availability::Ready
    }

    /// Free slots that count for placement: none unless schedulable.
    fn placeable_slots(&self) -> u32 {
        if self.is_schedulable() {
            self.free_slots()
        } else {
            0
        }
    }
}

/// Index into [`RunnerIndex::groups`]. Stable only while no group is added
/// or removed, i.e. within one scheduling pass.
pub(crate) type GroupIdx = usize;

/// All runners sharing one exact tag set.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) tags: TagSet,
    /// Every runner of the group, whatever its availability.
    pub(crate) members: BTreeSet<RunnerId>,
    /// Schedulable runners with a free slot, most free slots first, then
    /// lowest id (deterministic). Invariant: `(Reverse(r.free_slots()),
    /// r.id)` is here iff `r` is a member, schedulable and has a free slot.
    free: BTreeSet<(Reverse<u32>, RunnerId)>,
}

impl Group {
    /// The runner a job placed in this group would go to, with its free slots.
    pub(crate) fn best(&self) -> Option<(RunnerId, u32)> {
        self.free.first().map(|&(Reverse(free), id)| (id, free))
    }
}

/// Runners by id and by tag set.
#[derive(Debug, Default)]
pub(crate) struct RunnerIndex {
    runners: HashMap<RunnerId, RunnerSlot>,
    /// A `Vec` rather than iterating the map so that passes visit groups in
    /// a deterministic order (the scheduler must give the same plan for the
    /// same inputs, or tests and replays cannot rely on it).
    groups: Vec<Group>,
    group_of: HashMap<TagSet, GroupIdx>,
    /// Invariant: the sum of `placeable_slots()` over all runners. Zero
    /// means no job can be placed, which ends a pass early.
    total_free: u64,
}

impl RunnerIndex {
    pub(crate) fn get(&self, id: RunnerId) -> Option<&RunnerSlot> {
        self.runners.get(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.runners.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &RunnerSlot> {
        self.runners.values()
    }

    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub(crate) fn total_free(&self) -> u64 {
        self.total_free
    }

    /// Adds a runner, or updates the tags and slot count of a known one
    /// while keeping its `used` count and availability (a re-registration
    /// does not stop the jobs it runs).
    pub(crate) fn upsert(&mut self, id: RunnerId, tags: TagSet, slots: u32) {
        if let Some(mut runner) = self.remove(id) {
            runner.tags = tags;
            runner.slots = slots;
            self.insert(runner);
        } else {
            self.insert(RunnerSlot {
                id,
                tags,
                slots,
                used: 0,
                availability: Availability::Ready,
            });
        }
    }

    /// Removes a runner and returns its last state.
    pub(crate) fn remove(&mut self, id: RunnerId) -> Option<RunnerSlot> {
        let runner = self.runners.remove(&id)?;
        let gi = self.group_of[&runner.tags];
        self.detach(gi, &runner);
        let group = &mut self.groups[gi];
        group.members.remove(&id);
        if group.members.is_empty() {
            // Keep `group_of` pointing at the right slots after swap_remove.
            self.group_of.remove(&runner.tags);
            self.groups.swap_remove(gi);
            if let Some(moved) = self.groups.get(gi) {
                self.group_of.insert(moved.tags.clone(), gi);
            }
        }
        Some(runner)
    }

    /// Changes availability; false when the runner is unknown.
    pub(crate) fn set_availability(&mut self, id: RunnerId, availability: Availability) -> bool {
        self.update(id, |r| r.availability = availability)
    }

    /// Marks one more slot used; false when the runner is unknown.
    pub(crate) fn take_slot(&mut self, id: RunnerId) -> bool {
        self.update(id, |r| r.used = r.used.saturating_add(1))
    }

    /// Marks one slot free again; false when the runner is unknown.
    pub(crate) fn release_slot(&mut self, id: RunnerId) -> bool {
        self.update(id, |r| r.used = r.used.saturating_sub(1))
    }

    /// Groups whose tags cover `required`: the feasibility check, once per
    /// distinct runner kind.
    pub(crate) fn eligible_groups(&self, required: &TagSet) -> Vec<GroupIdx> {
        (0..self.groups.len())
            .filter(|&gi| self.groups[gi].tags.is_superset(required))
            .collect()
    }

    /// The runner to place a job on among `groups`, or `None` if all are full.
    ///
    /// Prefers the group with the fewest tags, so that generic jobs do not
    /// fill the specialised (`gpu`) runners that other jobs need; then the
    /// runner with the most free slots (spread load), then the lowest id.
    pub(crate) fn pick(&self, groups: &[GroupIdx]) -> Option<RunnerId> {
        groups
            .iter()
            .filter_map(|&gi| {
                let group = &self.groups[gi];
                group
                    .best()
                    .map(|(id, free)| (group.tags.len(), Reverse(free), id))
            })
            .min()
            .map(|(_, _, id)| id)
    }

    /// Applies `change` to a runner while keeping the group and
    /// `total_free` invariants: its old contribution is taken out first
    /// and the new one put back after.
    fn update(&mut self, id: RunnerId, change: impl FnOnce(&mut RunnerSlot)) -> bool {
        let Some(runner) = self.runners.get(&id) else {
            return false;
        };
        let gi = self.group_of[&runner.tags];
        let before = runner.clone();
        self.detach(gi, &before);
        let runner = self.runners.get_mut(&id).expect("checked above");
        change(runner);
        debug_assert_eq!(runner.tags, before.tags, "tag changes go through upsert");
        let after = runner.clone();
        self.attach(gi, &after);
        true
    }

    fn insert(&mut self, runner: RunnerSlot) {
        let gi = match self.group_of.get(&runner.tags) {
            Some(&gi) => gi,
            None => {
                self.groups.push(Group {
                    tags: runner.tags.clone(),
                    members: BTreeSet::new(),
                    free: BTreeSet::new(),
                });
                self.group_of.insert(runner.tags.clone(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        self.groups[gi].members.insert(runner.id);
        self.attach(gi, &runner);
        self.runners.insert(runner.id, runner);
    }

    fn attach(&mut self, gi: GroupIdx, runner: &RunnerSlot) {
        let free = runner.placeable_slots();
        if free > 0 {
            self.groups[gi].free.insert((Reverse(free), runner.id));
            self.total_free += u64::from(free);
        }
    }

    fn detach(&mut self, gi: GroupIdx, runner: &RunnerSlot) {
        let free = runner.placeable_slots();
        if free > 0 {
            let removed = self.groups[gi].free.remove(&(Reverse(free), runner.id));
            debug_assert!(removed, "free set out of sync for {}", runner.id);
            self.total_free -= u64::from(free);
        }
    }

    /// Recomputes every derived structure from `runners` and compares.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut total = 0u64;
        assert_eq!(self.groups.len(), self.group_of.len());
        for (gi, group) in self.groups.iter().enumerate() {
            assert_eq!(self.group_of[&group.tags], gi);
            assert!(!group.members.is_empty(), "empty groups are dropped");
            let mut expected = BTreeSet::new();
            for id in &group.members {
                let r = &self.runners[id];
                assert_eq!(r.tags, group.tags);
                if r.placeable_slots() > 0 {
                    expected.insert((Reverse(r.placeable_slots()), r.id));
                    total += u64::from(r.placeable_slots());
                }
            }
            assert_eq!(group.free, expected);
        }
        let members: usize = self.groups.iter().map(|g| g.members.len()).sum();
        assert_eq!(members, self.runners.len());
        assert_eq!(total, self.total_free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tags::TagInterner;

    #[test]
    fn same_tags_share_a_group_and_least_loaded_wins() {
        let mut tags = TagInterner::new();
        let linux = tags.set(["linux"]);
        let mut index = RunnerIndex::default();
        index.upsert(RunnerId(1), linux.clone(), 2);
        index.upsert(RunnerId(2), linux.clone(), 2);
        assert_eq!(index.groups().len(), 1);
        assert!(index.take_slot(RunnerId(1)));
        let groups = index.eligible_groups(&linux);
        assert_eq!(index.pick(&groups), Some(RunnerId(2)));
        assert_eq!(index.total_free(), 3);
        index.check_invariants();
    }

    #[test]
    fn generic_jobs_prefer_the_least_specialised_group() {
        let mut tags = TagInterner::new();
        let mut index = RunnerIndex::default();
        index.upsert(RunnerId(1), tags.set(["linux", "gpu"]), 4);
        index.upsert(RunnerId(2), tags.set(["linux"]), 1);
        let groups = index.eligible_groups(&tags.set(["linux"]));
        assert_eq!(index.pick(&groups), Some(RunnerId(2)));
    }

    #[test]
    fn upsert_keeps_used_and_moves_group() {
        let mut tags = TagInterner::new();
        let mut index = RunnerIndex::default();
        index.upsert(RunnerId(1), tags.set(["a"]), 2);
        index.upsert(RunnerId(2), tags.set(["b"]), 2);
        index.take_slot(RunnerId(1));
        index.set_availability(RunnerId(1), Availability::Draining);
        index.upsert(RunnerId(1), tags.set(["b"]), 1);
        let r = index.get(RunnerId(1)).unwrap();
        assert_eq!((r.used, r.availability), (1, Availability::Draining));
        assert_eq!(index.groups().len(), 1, "group [a] emptied and dropped");
        index.check_invariants();
        index.remove(RunnerId(2));
        index.remove(RunnerId(1));
        assert!(index.groups().is_empty());
        index.check_invariants();
    }
}
