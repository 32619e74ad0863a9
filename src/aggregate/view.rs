//! `ViewState`: the metric states of one view, per (key, bucket) group.
//!
//! Keys are interned: a group names its key by a `u32` index, so the key text
//! is stored once however many buckets it has. Both layers build the same
//! structure; merging two states of one view is the monoid `merge`, group by group.

use super::{MetricState, ViewSpec};
use crate::event::ParsedEvent;
use indexmap::IndexSet;
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::{Deserialize, Serialize};

/// A group: an interned key and a bucket start (epoch milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    /// Index into the view's interned keys.
    pub key: u32,
    /// Start of the bucket.
    pub bucket: i64,
}

/// All groups of one view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewState {
    /// Interned key texts; a key's index never changes while the state lives.
    keys: IndexSet<Box<str>, FxBuildHasher>,
    /// Per group, one state per metric of the spec, in spec order.
    groups: FxHashMap<GroupKey, Box<[MetricState]>>,
    /// Scratch buffer for composite keys, reused across events.
    #[serde(skip)]
    scratch: String,
}

impl ViewState {
    /// An empty state.
    pub fn new() -> ViewState {
        ViewState::default()
    }

    /// Applies one event to its group.
    pub fn apply(&mut self, spec: &ViewSpec, event: &ParsedEvent) {
        let key = match spec.key_slots.as_slice() {
            [slot] => self.intern(event.text(*slot)),
            slots => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                for (i, slot) in slots.iter().enumerate() {
                    if i > 0 {
                        scratch.push('|');
                    }
                    scratch.push_str(event.text(*slot));
                }
                let key = self.intern(&scratch);
                self.scratch = scratch;
                key
            }
        };
        let group = GroupKey {
            key,
            bucket: spec.bucket_of(event.event_ms),
        };
        let states = self
            .groups
            .entry(group)
            .or_insert_with(|| spec.empty_states());
        for (state, metric) in states.iter_mut().zip(&spec.metrics) {
            state.update(metric.input(event));
        }
    }

    /// Merges every group of `other` (a state of the same view) into this one.
    pub fn merge(&mut self, other: &ViewState) {
        for (group, states) in &other.groups {
            let key = self.intern(&other.keys[group.key as usize]);
            let mine = GroupKey {
                key,
                bucket: group.bucket,
            };
            match self.groups.get_mut(&mine) {
                Some(existing) => {
                    for (state, theirs) in existing.iter_mut().zip(states.iter()) {
                        state.merge(theirs);
                    }
                }
                None => {
                    self.groups.insert(mine, states.clone());
                }
            }
        }
    }

    /// Drops every group whose bucket starts before `bucket_start`.
    pub fn retain_from(&mut self, bucket_start: i64) {
        self.groups.retain(|group, _| group.bucket >= bucket_start);
    }

    /// Number of (key, bucket) groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no event has been applied.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Number of distinct keys seen.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The interned index of `key`, if it has been seen.
    pub fn key_index(&self, key: &str) -> Option<u32> {
        self.keys.get_index_of(key).map(|index| index as u32)
    }

    /// The text of an interned key.
    pub fn key_text(&self, index: u32) -> &str {
        &self.keys[index as usize]
    }

    /// Every group and its states, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = (GroupKey, &[MetricState])> {
        self.groups
            .iter()
            .map(|(group, states)| (*group, &**states))
    }

    /// The states of one group.
    pub fn group(&self, key: &str, bucket: i64) -> Option<&[MetricState]> {
        let key = self.key_index(key)?;
        self.groups
            .get(&GroupKey { key, bucket })
            .map(|states| &**states)
    }

    fn intern(&mut self, key: &str) -> u32 {
        match self.keys.get_index_of(key) {
            Some(index) => index as u32,
            None => self.keys.insert_full(key.into()).0 as u32,
        }
    }
}
