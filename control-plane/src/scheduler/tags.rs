//! Tag interning and tag sets.
//!
//! Runners advertise tags (`linux`, `gpu`, `arm64`) and jobs require them.
//! Matching is the innermost loop of the scheduler, so tags are interned
//! to small integer ids once, at the edge, and a set of tags is a bitset:
//! "does this runner group have every tag the job needs" becomes a few
//! word-wise `AND`s instead of string comparisons.

use std::fmt;

use foldhash::HashMap;

/// A tag interned by a [`TagInterner`]: an index into its name table.
///
/// Ids are only meaningful for the interner that issued them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagId(pub u32);

impl fmt::Display for TagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag#{}", self.0)
    }
}

/// Maps tag names to dense [`TagId`]s and back.
///
/// Ids are handed out in order 0, 1, 2, … and never reused, so a
/// [`TagSet`] stays small (one `u64` word covers the first 64 tags a
/// cluster ever sees).
#[derive(Debug, Default, Clone)]
pub struct TagInterner {
    ids: HashMap<String, TagId>,
    names: Vec<String>,
}

impl TagInterner {
    /// An interner that knows no tags.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `name`, allocating one on first sight.
    pub fn intern(&mut self, name: &str) -> TagId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = TagId(u32::try_from(self.names.len()).expect("more than u32::MAX distinct tags"));
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// The id of `name` if it was ever interned.
    pub fn lookup(&self, name: &str) -> Option<TagId> {
        self.ids.get(name).copied()
    }

    /// The name of `id`, if this interner issued it.
    pub fn name(&self, id: TagId) -> Option<&str> {
        self.names.get(id.0 as usize).map(String::as_str)
    }

    /// Interns every name and returns the set of their ids.
    pub fn set<I, S>(&mut self, names: I) -> TagSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = TagSet::new();
        for name in names {
            set.insert(self.intern(name.as_ref()));
        }
        set
    }

    /// The names of the tags in `set`, sorted, for messages to people.
    pub fn names(&self, set: &TagSet) -> Vec<String> {
        let mut names: Vec<String> = set
            .iter()
            .map(|id| self.name(id).map_or_else(|| id.to_string(), str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// Number of distinct tags interned so far.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no tag was interned yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A set of [`TagId`]s stored as a bitset.
///
/// Invariant: the last word is never zero (trailing zero words are
/// trimmed), so two equal sets have equal representations and the derived
/// `Eq`/`Hash` can key the runner index by tag set.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagSet {
    words: Vec<u64>,
}

impl TagSet {
    /// The empty set (a job with no requirements fits every runner).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tag`; returns whether it was new.
    pub fn insert(&mut self, tag: TagId) -> bool {
        let (word, bit) = Self::position(tag);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let was_set = self.words[word] & bit != 0;
        self.words[word] |= bit;
        !was_set
    }

    /// Removes `tag`; returns whether it was present.
    pub fn remove(&mut self, tag: TagId) -> bool {
        let (word, bit) = Self::position(tag);
        let Some(w) = self.words.get_mut(word) else {
            return false;
        };
        let was_set = *w & bit != 0;
        *w &= !bit;
        self.trim();
        was_set
    }

    /// Whether `tag` is in the set.
    pub fn contains(&self, tag: TagId) -> bool {
        let (word, bit) = Self::position(tag);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Whether every tag of `other` is also in `self`: a runner whose tags
    /// are `self` can run a job that requires `other`.
    pub fn is_superset(&self, other: &TagSet) -> bool {
        // Trimmed: a longer `other` has a set bit beyond our last word.
        if other.words.len() > self.words.len() {
            return false;
        }
        self.words
            .iter()
            .zip(&other.words)
            .all(|(mine, theirs)| theirs & !mine == 0)
    }

    /// The tags of `self` that are not in `other`.
    pub fn difference(&self, other: &TagSet) -> TagSet {
        let mut words: Vec<u64> = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| w & !other.words.get(i).copied().unwrap_or(0))
            .collect();
        while words.last() == Some(&0) {
            words.pop();
        }
        TagSet { words }
    }

    /// The tags in both sets.
    pub fn intersection(&self, other: &TagSet) -> TagSet {
        let mut words: Vec<u64> = self.words.iter().zip(&other.words).map(|(a, b)| a & b).collect();
        while words.last() == Some(&0) {
            words.pop();
        }
        TagSet { words }
    }

    /// Number of tags in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The tags in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = TagId> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64u32)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| TagId(i as u32 * 64 + b))
        })
    }

    fn position(tag: TagId) -> (usize, u64) {
        ((tag.0 / 64) as usize, 1u64 << (tag.0 % 64))
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }
}

impl FromIterator<TagId> for TagSet {
    fn from_iter<T: IntoIterator<Item = TagId>>(iter: T) -> Self {
        let mut set = TagSet::new();
        for tag in iter {
            set.insert(tag);
        }
        set
    }
}

impl fmt::Debug for TagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|t| t.0)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interner_round_trips_names() {
        let mut tags = TagInterner::new();
        let gpu = tags.intern("gpu");
        assert_eq!(tags.intern("gpu"), gpu);
        assert_eq!(tags.lookup("gpu"), Some(gpu));
        assert_eq!(tags.lookup("arm64"), None);
        assert_eq!(tags.name(gpu), Some("gpu"));
        let set = tags.set(["linux", "gpu"]);
        assert_eq!(tags.names(&set), vec!["gpu".to_owned(), "linux".to_owned()]);
    }

    #[test]
    fn removing_high_tag_keeps_representation_canonical() {
        let mut a = TagSet::new();
        a.insert(TagId(1));
        let mut b = a.clone();
        b.insert(TagId(200));
        assert_ne!(a, b);
        b.remove(TagId(200));
        assert_eq!(a, b, "trailing zero words must be trimmed");
    }

    #[test]
    fn superset_across_word_boundaries() {
        let runner: TagSet = [TagId(3), TagId(70)].into_iter().collect();
        let needs_70: TagSet = [TagId(70)].into_iter().collect();
        let needs_130: TagSet = [TagId(130)].into_iter().collect();
        assert!(runner.is_superset(&needs_70));
        assert!(runner.is_superset(&TagSet::new()));
        assert!(!runner.is_superset(&needs_130));
        assert!(!TagSet::new().is_superset(&needs_70));
    }

    fn set_of(ids: &[u8]) -> TagSet {
        ids.iter().map(|&i| TagId(u32::from(i))).collect()
    }

    proptest! {
        #[test]
        fn bitset_agrees_with_btreeset(a in proptest::collection::vec(0u8..200, 0..12),
                                       b in proptest::collection::vec(0u8..200, 0..12)) {
            use std::collections::BTreeSet;
            let (sa, sb) = (set_of(&a), set_of(&b));
            let (ra, rb): (BTreeSet<u8>, BTreeSet<u8>) = (a.iter().copied().collect(), b.iter().copied().collect());
            prop_assert_eq!(sa.is_superset(&sb), ra.is_superset(&rb));
            prop_assert_eq!(sa.len(), ra.len());
            let diff: Vec<u32> = sa.difference(&sb).iter().map(|t| t.0).collect();
            let rdiff: Vec<u32> = ra.difference(&rb).map(|&i| u32::from(i)).collect();
            prop_assert_eq!(diff, rdiff);
            let inter: Vec<u32> = sa.intersection(&sb).iter().map(|t| t.0).collect();
            let rinter: Vec<u32> = ra.intersection(&rb).map(|&i| u32::from(i)).collect();
            prop_assert_eq!(inter, rinter);
            // Canonical form: equal sets built in any order compare equal.
            let mut rev = b.clone();
            rev.reverse();
            prop_assert_eq!(set_of(&rev), sb);
        }
    }
}
