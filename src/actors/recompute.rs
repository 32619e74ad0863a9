//! A batch run: rebuilds every view from scratch over the master dataset up to
//! a sealed epoch, and writes the snapshot. Plain blocking code, run by the
//! supervisor with `spawn_blocking`, never on an async thread.
//!
//! One reader first finds the later copies of ids in the records' headers
//! ([`store::find_copies`]: partitions by hash, in memory that does not grow
//! with the log), then streams the segments in log order (CRC-checking every
//! record), drops every copy of an id but the first in the log (over all of
//! `[0, end)`, whatever their epochs, as the Recorder decides for the speed
//! layer), then keeps the records of epochs <= the sealed one. Worker threads
//! parse the survivors with the current config and apply them to their own
//! view states (skipping buckets a view's retention has dropped). Memory is
//! the views, one partition of the first pass, the id levels' filters
//! (about 1.15 bytes a distinct id; the ids stay on disk) and a few batches
//! in flight. The ids of the records before `later_from` become the
//! run's [`IdIndex`] (level files under `ids/`, which the snapshot names):
//! the Recorder's first-copy check for the records after it.

use super::recompute_worker::{
    Begin, Credit, Finish, Flush, Part, Plan, Pool, Records, WorkBatch, flag,
};
use crate::aggregate::{ViewIndex, ViewSpec, ViewState};
use crate::config::Config;
use crate::event::Epoch;
use crate::event::Seq;
use crate::store::{self, DataPaths, IdIndex, SealedEpoch, SnapshotMeta};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel};

/// Records handed to a worker at a time.
const BATCH_RECORDS: usize = 4_096;
/// Batches in flight per worker.
const QUEUE_DEPTH: usize = 4;
/// How often a run's reader publishes how far it has read, in records.
const PROGRESS_EVERY: u64 = 65_536;
/// How often a run logs how far it has read.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How far a batch run has read: the records of the master dataset it has
/// read, of those it reads (the log up to its sealed epoch's end). Written
/// by the run's reader, read by status and scrapes; the last run's figures
/// stay until the next run starts.
#[derive(Debug, Default)]
pub struct Progress {
    read: AtomicU64,
    total: AtomicU64,
    /// Views the run starts from the batch cache.
    from_cache: AtomicU64,
    /// Views the run computes from the whole master dataset (new, changed,
    /// or without a usable cache: a backfill).
    from_master: AtomicU64,
}

impl Progress {
    /// (views from the batch cache, views from the whole master dataset) of the run.
    pub fn views(&self) -> (u64, u64) {
        (
            self.from_cache.load(Ordering::Relaxed),
            self.from_master.load(Ordering::Relaxed),
        )
    }

    /// (records read, records to read).
    pub fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// A run that reads `total` records starts.
    pub(crate) fn start(&self, total: u64) {
        self.read.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
}

/// What a batch run counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Records read (epochs <= the snapshot's).
    pub records: u64,
    /// Events counted in the views.
    pub counted: u64,
    /// Records dropped as duplicates of an earlier id.
    pub duplicates: u64,
    /// Records the current config rejects.
    pub invalid: u64,
    /// (view, event) pairs not applied: their bucket is past the view's retention.
    pub expired: u64,
}

impl BatchStats {
    /// Adds the counts of `other`, a run over other records.
    fn add(&mut self, other: &BatchStats) {
        self.records += other.records;
        self.counted += other.counted;
        self.duplicates += other.duplicates;
        self.invalid += other.invalid;
        self.expired += other.expired;
    }
}

/// One view in a snapshot, with the spec it was built for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    /// The spec, as JSON: a snapshot view is used only for an identical spec.
    pub spec: String,
    /// Its state.
    pub state: ViewState,
}

/// The snapshot file's payload: owned when read, borrowing its ids when written.
///
/// Stored as its [`SnapshotHead`] (everything but the views' states, which
/// it lists) followed by the states in that order: a start decodes the head,
/// replays the log after the snapshot with it, and decodes the states meanwhile.
#[derive(Debug, Clone, Default)]
pub struct SnapshotData<'a> {
    /// The views, by name.
    pub views: Vec<(String, SnapshotView)>,
    /// The run's counts.
    pub stats: BatchStats,
    /// The sealed epoch it covers.
    pub sealed: Option<SealedEpochData>,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
    /// The distinct ids of the records before `sealed.later_from`.
    pub ids: StoredIds<'a>,
}

/// How a snapshot holds the distinct ids of the records before its `later_from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredIds<'a> {
    /// The id level files under `ids/` that hold them (format 5 on).
    Levels(Vec<String>),
    /// The ids themselves, sorted (formats 3 and 4), stored as blocks of
    /// little-endian bytes (a varint of a hash takes longer to decode, and
    /// is no shorter).
    Inline(#[serde(with = "fixed_width")] std::borrow::Cow<'a, [u64]>),
}

impl Default for StoredIds<'_> {
    fn default() -> Self {
        StoredIds::Levels(Vec::new())
    }
}

impl StoredIds<'_> {
    /// The same, borrowed.
    pub fn borrowed(&self) -> StoredIds<'_> {
        match self {
            StoredIds::Levels(names) => StoredIds::Levels(names.clone()),
            StoredIds::Inline(ids) => StoredIds::Inline(std::borrow::Cow::Borrowed(ids)),
        }
    }

    /// The same, owned.
    pub fn into_owned(self) -> StoredIds<'static> {
        match self {
            StoredIds::Levels(names) => StoredIds::Levels(names),
            StoredIds::Inline(ids) => StoredIds::Inline(std::borrow::Cow::Owned(ids.into_owned())),
        }
    }
}

/// What a snapshot's payload stores before the views' states.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotHead<'a> {
    /// The run's counts.
    pub stats: BatchStats,
    /// The sealed epoch it covers.
    pub sealed: Option<SealedEpochData>,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
    /// The distinct ids of the records before `sealed.later_from`.
    pub ids: StoredIds<'a>,
    /// Each view's name and spec ([`SnapshotView::spec`]), in the order of
    /// the states that follow.
    pub views: Vec<(String, String)>,
}

/// A snapshot's ids as blocks of little-endian bytes: decoded by copying,
/// not one varint at a time.
mod fixed_width {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};
    use std::borrow::Cow;

    /// Ids per block.
    const BLOCK: usize = 8_192;
    /// The most ids reserved ahead of decoding (128 MiB of address space,
    /// not touched until decoded into): a damaged count reserves no more, and
    /// a larger list grows as it decodes.
    const MAX_RESERVED: usize = 1 << 24;

    pub fn serialize<S: Serializer>(ids: &[u64], serializer: S) -> Result<S::Ok, S::Error> {
        struct Bytes<'a>(&'a [u8]);
        impl serde::Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        let mut seq = serializer.serialize_seq(Some(ids.len().div_ceil(BLOCK)))?;
        let mut bytes = Vec::with_capacity(BLOCK * 8);
        for block in ids.chunks(BLOCK) {
            bytes.clear();
            bytes.extend(block.iter().flat_map(|id| id.to_le_bytes()));
            seq.serialize_element(&Bytes(&bytes))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Cow<'static, [u64]>, D::Error> {
        struct Blocks;
        impl<'de> Visitor<'de> for Blocks {
            type Value = Vec<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("blocks of little-endian ids")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
                // Reserved (not touched) for the blocks the payload says it
                // holds, within a bound a damaged count cannot exceed.
                let blocks = seq.size_hint().unwrap_or(0);
                let mut ids = Vec::with_capacity(blocks.saturating_mul(BLOCK).min(MAX_RESERVED));
                while seq.next_element_seed(Append(&mut ids))?.is_some() {}
                Ok(ids)
            }
        }
        /// Appends one block's ids.
        struct Append<'a>(&'a mut Vec<u64>);
        impl<'de> DeserializeSeed<'de> for Append<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
                deserializer.deserialize_bytes(self)
            }
        }
        impl Visitor<'_> for Append<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a block of little-endian ids")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<(), E> {
                if !bytes.len().is_multiple_of(8) {
                    return Err(E::custom(format!(
                        "a block of ids of {} bytes, not a multiple of 8",
                        bytes.len()
                    )));
                }
                self.0.extend(bytes.chunks_exact(8).map(|id| {
                    u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
                }));
                Ok(())
            }
        }
        deserializer.deserialize_seq(Blocks).map(Cow::Owned)
    }
}

impl SnapshotHead<'_> {
    /// The whole payload: this head with the `states` that followed it.
    ///
    /// # Errors
    /// Not one state per listed view.
    pub fn with_states(self, states: Vec<ViewState>) -> Result<SnapshotData<'static>, String> {
        if states.len() != self.views.len() {
            return Err(format!(
                "the snapshot lists {} views and holds {} states",
                self.views.len(),
                states.len()
            ));
        }
        Ok(SnapshotData {
            views: self
                .views
                .into_iter()
                .zip(states)
                .map(|((name, spec), state)| (name, SnapshotView { spec, state }))
                .collect(),
            stats: self.stats,
            sealed: self.sealed,
            took_ms: self.took_ms,
            ids: self.ids.into_owned(),
        })
    }
}

impl Serialize for SnapshotData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let head = SnapshotHead {
            stats: self.stats,
            sealed: self.sealed,
            took_ms: self.took_ms,
            ids: self.ids.borrowed(),
            views: self
                .views
                .iter()
                .map(|(name, view)| (name.clone(), view.spec.clone()))
                .collect(),
        };
        let states: Vec<&ViewState> = self.views.iter().map(|(_, view)| &view.state).collect();
        (head, states).serialize(serializer)
    }
}

impl SnapshotData<'_> {
    /// Its head and its states, as stored.
    pub fn into_parts(self) -> (SnapshotHead<'static>, Vec<ViewState>) {
        let (views, states) = self
            .views
            .into_iter()
            .map(|(name, view)| ((name, view.spec), view.state))
            .unzip();
        let head = SnapshotHead {
            stats: self.stats,
            sealed: self.sealed,
            took_ms: self.took_ms,
            ids: self.ids.into_owned(),
            views,
        };
        (head, states)
    }
}

impl SnapshotData<'static> {
    /// Decodes a snapshot's payload of format `version` (format 3 stored the
    /// views' states first and the head's fields after them; formats 3 and 4
    /// held the ids themselves).
    ///
    /// # Errors
    /// The payload does not decode as that format.
    pub fn decode(version: u32, payload: &[u8]) -> Result<Self, postcard::Error> {
        /// Format 3's payload.
        #[derive(Deserialize)]
        struct V3 {
            views: Vec<(String, SnapshotView)>,
            stats: BatchStats,
            sealed: Option<SealedEpochData>,
            took_ms: u64,
            ids: Vec<u64>,
        }
        if version == 3 {
            let V3 {
                views,
                stats,
                sealed,
                took_ms,
                ids,
            } = postcard::from_bytes(payload)?;
            return Ok(SnapshotData {
                views,
                stats,
                sealed,
                took_ms,
                ids: StoredIds::Inline(std::borrow::Cow::Owned(ids)),
            });
        }
        if version == 4 {
            let (head, states) = postcard::from_bytes::<(V4Head, Vec<ViewState>)>(payload)?;
            return head
                .into_head()
                .with_states(states)
                .map_err(|_| postcard::Error::DeserializeBadEncoding);
        }
        postcard::from_bytes(payload)
    }

    /// Decodes a snapshot payload's head alone, for a reader that decodes
    /// the states after it (format 3, which stores them first, decodes them
    /// with it).
    ///
    /// # Errors
    /// The head does not decode as format `version`.
    pub fn decode_head(
        version: u32,
        payload: &[u8],
    ) -> Result<(SnapshotHead<'static>, StatesAfterHead), postcard::Error> {
        if version == 3 {
            let (head, states) = Self::decode(version, payload)?.into_parts();
            return Ok((head, StatesAfterHead::Decoded(states)));
        }
        let (head, states) = if version == 4 {
            let (head, states) = postcard::take_from_bytes::<V4Head>(payload)?;
            (head.into_head(), states)
        } else {
            postcard::take_from_bytes::<SnapshotHead<'static>>(payload)?
        };
        Ok((head, StatesAfterHead::At(payload.len() - states.len())))
    }
}

/// Format 4's head: the ids themselves.
#[derive(Deserialize)]
struct V4Head {
    stats: BatchStats,
    sealed: Option<SealedEpochData>,
    took_ms: u64,
    #[serde(with = "fixed_width")]
    ids: std::borrow::Cow<'static, [u64]>,
    views: Vec<(String, String)>,
}

impl V4Head {
    fn into_head(self) -> SnapshotHead<'static> {
        SnapshotHead {
            stats: self.stats,
            sealed: self.sealed,
            took_ms: self.took_ms,
            ids: StoredIds::Inline(self.ids),
            views: self.views,
        }
    }
}

/// Where a snapshot's states are once its head is decoded.
#[derive(Debug)]
pub enum StatesAfterHead {
    /// Still to decode, from this offset of the payload.
    At(usize),
    /// Decoded with the head.
    Decoded(Vec<ViewState>),
}

impl StatesAfterHead {
    /// The states, decoded from `payload` if they still are to be.
    ///
    /// # Errors
    /// They do not decode.
    pub fn decode(self, payload: &[u8]) -> Result<Vec<ViewState>, postcard::Error> {
        match self {
            StatesAfterHead::At(at) => postcard::from_bytes(payload.get(at..).unwrap_or_default()),
            StatesAfterHead::Decoded(states) => Ok(states),
        }
    }
}

/// Where each configured view's state is among a snapshot's stored ones
/// ([`Batch::from_head`]).
#[derive(Debug, Clone)]
pub struct Placement {
    /// Per configured view, the position of its state (`None`: missing).
    stored: Vec<Option<usize>>,
    /// The states the snapshot lists.
    listed: usize,
}

impl Placement {
    /// Where each of `views` is among the views a snapshot's head lists
    /// (`listed`: name and spec fingerprint, in the order of its states).
    pub fn of(views: &[Arc<ViewSpec>], listed: &[(String, String)]) -> Placement {
        let stored = views
            .iter()
            .map(|spec| {
                let fingerprint = spec_fingerprint(spec);
                listed
                    .iter()
                    .position(|(name, stored)| *name == spec.name && *stored == fingerprint)
            })
            .collect();
        Placement {
            stored,
            listed: listed.len(),
        }
    }

    /// The configured views' states, in config order, from the snapshot's
    /// `states` (in the order its head lists them); a missing view's is empty.
    ///
    /// # Errors
    /// As [`Placement::offered`].
    pub fn place(
        &self,
        views: &[Arc<ViewSpec>],
        states: Vec<ViewState>,
    ) -> Result<Vec<ViewState>, String> {
        let offered = self.offered(views, states)?;
        Ok(offered.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The configured views' states, in config order, from the snapshot's
    /// `states` (in the order its head lists them); `None` for a view the
    /// snapshot holds no state for.
    ///
    /// # Errors
    /// Not one state per listed view, or a matched view's state is not one
    /// its spec gives ([`ViewState::check`]).
    pub fn offered(
        &self,
        views: &[Arc<ViewSpec>],
        states: Vec<ViewState>,
    ) -> Result<Vec<Option<ViewState>>, String> {
        if states.len() != self.listed {
            return Err(format!(
                "the snapshot lists {} views and holds {} states",
                self.listed,
                states.len()
            ));
        }
        let mut states: Vec<Option<ViewState>> = states.into_iter().map(Some).collect();
        views
            .iter()
            .zip(&self.stored)
            .map(|(spec, at)| match at {
                Some(at) => {
                    let state = states
                        .get_mut(*at)
                        .and_then(Option::take)
                        .ok_or_else(|| format!("view {}: its state is listed twice", spec.name))?;
                    state
                        .check(spec)
                        .map_err(|problem| format!("view {}: {problem}", spec.name))?;
                    Ok(Some(state))
                }
                None => Ok(None),
            })
            .collect()
    }
}

/// Reads, checks and decodes the snapshot at `path`, of any format this build
/// reads.
///
/// # Errors
/// As [`store::read_snapshot`].
pub fn read_snapshot_data(
    path: &std::path::Path,
) -> store::Result<(SnapshotMeta, SnapshotData<'static>)> {
    let (meta, payload) = store::read_snapshot_payload(path)?;
    let data = SnapshotData::decode(meta.version, &payload)
        .map_err(|err| store::undecodable(path, &err))?;
    Ok((meta, data))
}

impl<'de> Deserialize<'de> for SnapshotData<'static> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (head, states) = <(SnapshotHead<'static>, Vec<ViewState>)>::deserialize(deserializer)?;
        head.with_states(states).map_err(serde::de::Error::custom)
    }
}

/// [`SealedEpoch`] as stored in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEpochData {
    /// The epoch.
    pub epoch: u64,
    /// Records before its seal.
    pub next_seq: u64,
    /// Records with a lower seq have an epoch <= `epoch`.
    pub later_from: u64,
}

/// The batch layer's current truth, as serving holds it.
#[derive(Debug, Default)]
pub struct Batch {
    /// The epoch it covers (`None`: nothing yet).
    pub epoch: Option<Epoch>,
    /// One state per configured view, in config order.
    pub views: Vec<ViewState>,
    /// The index of each state in `views`: built by a batch run before it is
    /// served; for a snapshot loaded at start-up, built in the background
    /// while queries already answer (by a scan of the states until then).
    pub indexes: std::sync::OnceLock<Vec<ViewIndex>>,
    /// The snapshot file's header.
    pub meta: Option<SnapshotMeta>,
    /// The run's counts.
    pub stats: BatchStats,
    /// How long the run took, milliseconds.
    pub took_ms: u64,
    /// Records with a seq below this have an epoch <= `epoch`.
    pub later_from: u64,
    /// The ids of the records before `later_from`.
    pub ids: Arc<IdIndex>,
    /// Per view, true when the snapshot has no state for it (a view added or
    /// changed since): its answers come from the speed layer alone, which
    /// then holds every epoch of it.
    pub missing: Vec<bool>,
}

impl Batch {
    /// Views of a loaded snapshot, matched to the configured views by name and
    /// fingerprint, with `ids`, the index of the ids it names ([`open_ids`]).
    /// A view that is new or whose spec changed is `missing`.
    /// Its `indexes` are left to the caller ([`build_indexes`]).
    ///
    /// # Errors
    /// A matched view's state is not one its spec gives ([`ViewState::check`]):
    /// the snapshot must not be served.
    pub fn from_snapshot(
        views: &[Arc<ViewSpec>],
        meta: SnapshotMeta,
        data: SnapshotData<'_>,
        ids: Arc<IdIndex>,
    ) -> Result<Batch, String> {
        let (head, states) = data.into_parts();
        let (mut batch, placement) = Batch::from_head(views, meta, head, ids);
        batch.views = placement.place(views, states)?;
        Ok(batch)
    }

    /// [`Batch::from_snapshot`] without the states, for a reader that decodes
    /// them after the head: the batch with its `views` empty (`missing` and
    /// the id index set), and where each configured view's state is among
    /// the stored ones ([`Placement::place`] gives the `views`).
    pub fn from_head(
        views: &[Arc<ViewSpec>],
        meta: SnapshotMeta,
        head: SnapshotHead<'_>,
        ids: Arc<IdIndex>,
    ) -> (Batch, Placement) {
        let placement = Placement::of(views, &head.views);
        let later_from = head.sealed.map_or(0, |sealed| sealed.later_from);
        let batch = Batch {
            epoch: Some(meta.epoch),
            // Built by the caller, which can overlap it with other work.
            indexes: std::sync::OnceLock::new(),
            views: Vec::new(),
            meta: Some(meta),
            stats: head.stats,
            took_ms: head.took_ms,
            later_from,
            ids,
            missing: placement.stored.iter().map(Option::is_none).collect(),
        };
        (batch, placement)
    }

    /// Whether the batch holds state for view `view` (a batch with no epoch holds none).
    pub fn has_view(&self, view: usize) -> bool {
        self.epoch.is_some() && !self.missing.get(view).copied().unwrap_or(false)
    }

    /// The views a snapshot holds no state for (none without a snapshot).
    pub fn missing_views(&self) -> impl Iterator<Item = usize> + '_ {
        let snapshot = self.epoch.is_some();
        (0..self.missing.len()).filter(move |view| snapshot && self.missing[*view])
    }

    /// Whether every view has its state here.
    pub fn is_complete(&self) -> bool {
        self.epoch.is_some() && !self.missing.contains(&true)
    }
}

/// The index of the ids of the records before `upto` as a snapshot stores
/// them ([`StoredIds`]): its level files opened,
/// or (formats 3 and 4, which hold the ids themselves) written as a level
/// file under `paths`. Inline ids that are not sorted and unique (a
/// snapshot written by a bug, whose checksum holds) are sorted again rather
/// than trusted, with a warning.
///
/// # Errors
/// A level file is missing, damaged or unreadable, or cannot be written.
pub fn open_ids(paths: &DataPaths, upto: Seq, ids: &StoredIds<'_>) -> store::Result<IdIndex> {
    match ids {
        StoredIds::Levels(names) => IdIndex::open(paths, upto, names),
        StoredIds::Inline(ids) if ids.windows(2).all(|pair| pair[0] < pair[1]) => {
            let level = store::write_level(paths, Seq(0), upto, ids.iter().copied())?;
            Ok(IdIndex::of_level(upto, level))
        }
        StoredIds::Inline(ids) => {
            tracing::warn!("the snapshot's ids are not sorted and unique: sorted again");
            IdIndex::new(paths, upto, ids.to_vec())
        }
    }
}

/// The index of the ids of the records before `upto`, read again from the
/// master dataset (up to `through`'s end, which lies past `upto`) in a
/// pass over the records' headers.
///
/// # Errors
/// The master dataset cannot be read, or the level file written.
pub fn rebuild_ids(paths: &DataPaths, upto: Seq, through: SealedEpoch) -> store::Result<IdIndex> {
    let copies = store::find_copies(
        paths,
        Seq(0),
        through.end,
        upto,
        &IdIndex::default(),
        through.next_seq.0,
        store::PARTITION_ENTRIES,
    )?;
    Ok(IdIndex::of_level(upto, copies.first_ids))
}

/// The index of each view's state, built on threads of their own (the caller
/// blocks; never an async thread); `None` if building one panicked (a bug,
/// logged): the batch is then answered by scans of its states, never wrongly.
pub fn build_indexes(specs: &[Arc<ViewSpec>], states: &[&ViewState]) -> Option<Vec<ViewIndex>> {
    std::thread::scope(|scope| {
        let builds: Vec<_> = specs
            .iter()
            .zip(states)
            .map(|(spec, state)| scope.spawn(move || ViewIndex::build(spec, state)))
            .collect();
        let built: Result<Vec<ViewIndex>, _> =
            builds.into_iter().map(|build| build.join()).collect();
        built
            .inspect_err(|_| {
                tracing::error!("building a view's index panicked; the batch is answered by scans")
            })
            .ok()
    })
}

/// What a stored view state must match to be used: the view's spec and how
/// this build represents its states (the sketches' parameters).
pub fn spec_fingerprint(spec: &ViewSpec) -> String {
    format!(
        "{}; {}",
        serde_json::to_string(spec).unwrap_or_default(),
        crate::aggregate::sketch_parameters()
    )
}

/// Why a batch run failed.
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    /// The master dataset could not be read, or the snapshot written.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A recompute worker panicked (it is restarted; the run can be retried).
    #[error("{0}")]
    Worker(String),
    /// One of the run's own threads (writing the snapshot, building
    /// indexes) panicked.
    #[error("a batch run's thread panicked while {0}")]
    Panicked(&'static str),
    /// The recompute workers stopped: the system is stopping.
    #[error("the recompute workers stopped before the run ended (tandem is stopping)")]
    Stopping,
}

impl RecomputeError {
    /// Whether the run may succeed if tried again: a panic, not what the
    /// master dataset or the disk said.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RecomputeError::Worker(_) | RecomputeError::Panicked(_)
        )
    }
}

/// How a batch run uses the batch cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Every view whose cached state is valid (same fingerprint, same
    /// records covered) starts from it and reads only the records after it;
    /// the others are computed from the whole master dataset.
    #[default]
    Incremental,
    /// Every view from the whole master dataset; the cache is only written.
    Full,
}

/// `cache/ids.bin`: the id level files of the records before `upto`, what
/// the runs counted of those records, and when a run last read every record.
#[derive(Debug, Serialize, Deserialize)]
struct CachedIds {
    upto: u64,
    /// [`anchor`] of the record at `upto - 1` (0 when `upto` is 0): the cache
    /// is used only on the log it was built from.
    anchor: u32,
    stats: BatchStats,
    full_at_ms: i64,
    /// [`IdIndex::names`].
    levels: Vec<String>,
}

/// `cache/view-<name>.bin`: one view's state over the records before
/// `upto`, retention applied from bucket `cutoff`, or the snapshot that
/// holds it.
#[derive(Debug, Serialize, Deserialize)]
struct CachedView<'a> {
    upto: u64,
    fingerprint: std::borrow::Cow<'a, str>,
    cutoff: Option<i64>,
    state: CachedState<'a>,
}

/// Where a cached view's state is.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum CachedState<'a> {
    /// In the cache file itself: a run whose snapshot holds other states
    /// (records after `later_from` counted) writes them here.
    Here(std::borrow::Cow<'a, ViewState>),
    /// In the snapshot this names, under the view's name: the run that
    /// wrote the cache wrote that snapshot with these very states, so they
    /// are stored once.
    InSnapshot(SnapshotRef),
}

/// Names one snapshot file: its epoch, and what its header says of its
/// payload and when it was written, so that a snapshot of the same epoch
/// written since (another run, an import) is told from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    epoch: u64,
    created_ms: i64,
    payload_bytes: u64,
    payload_crc: u32,
}

impl SnapshotRef {
    fn of(meta: &SnapshotMeta) -> SnapshotRef {
        SnapshotRef {
            epoch: meta.epoch.0,
            created_ms: meta.created_ms,
            payload_bytes: meta.payload_bytes,
            payload_crc: meta.payload_crc,
        }
    }

    /// The epoch of the snapshot it names.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// Whether the snapshot whose header says `meta` is the one it names.
    pub fn names(&self, meta: &SnapshotMeta) -> bool {
        *self == SnapshotRef::of(meta)
    }
}

/// A view's cache file up to where its state is, for a reader that does
/// not need the state itself ([`snapshot_holding`]): [`CachedView`]'s
/// fields in order, the state's variant read without its contents.
#[derive(Deserialize)]
struct CachedViewHead {
    _upto: u64,
    _fingerprint: String,
    _cutoff: Option<i64>,
    state: StateKind,
}

/// [`CachedState`]'s variants, in its order, without the state itself.
#[derive(Deserialize)]
enum StateKind {
    Here,
    InSnapshot(SnapshotRef),
}

/// The snapshot that the batch cache's view file at `path` names as
/// holding its state: `None` when the file holds the state itself, or does
/// not exist. It reads only the file's start, its payload's crc unchecked:
/// what a run would use is checked when the run reads it
/// ([`verify_view_cache`] checks it whole).
///
/// # Errors
/// As [`store::read_cache_head`] (a file that is not a view's does not decode).
pub fn snapshot_holding(path: &std::path::Path) -> store::Result<Option<SnapshotRef>> {
    let head = store::read_cache_head::<CachedViewHead>(path)?;
    Ok(head.and_then(CachedViewHead::named))
}

/// A view's cache file checked (as [`store::verify_cache`]) and the
/// snapshot that holds its state (as [`snapshot_holding`]), in one read.
/// For `tandem inspect`.
///
/// # Errors
/// As [`store::verify_cache`].
pub fn verify_view_cache(
    path: &std::path::Path,
) -> store::Result<(store::CacheInfo, Option<SnapshotRef>)> {
    let (info, head) = store::verify_cache_as::<CachedViewHead>(path)?;
    Ok((info, head.named()))
}

impl CachedViewHead {
    /// The snapshot it names; `None` when the file holds the state itself.
    fn named(self) -> Option<SnapshotRef> {
        match self.state {
            StateKind::InSnapshot(named) => Some(named),
            StateKind::Here => None,
        }
    }
}

/// Removes every snapshot but the newest `batch.keep_snapshots` and those
/// the batch cache's view files name (at most one a view; older ones when a
/// write of the cache failed, or when batch runs were imported from Spark
/// since the cache was written), which the next incremental run reads.
///
/// # Errors
/// I/O errors listing or removing, naming the file.
pub fn prune_snapshots(paths: &DataPaths, config: &Config) -> store::Result<()> {
    let named = named_by_cache(paths, config);
    store::keep_newest_snapshots(paths, config.batch.keep_snapshots, &named)
}

/// The epochs of the snapshots that the batch cache's files of the
/// configured views name (each file names at most one); a file that cannot
/// be read names none (no run would use it).
fn named_by_cache(paths: &DataPaths, config: &Config) -> Vec<Epoch> {
    config
        .views
        .iter()
        .filter_map(|spec| {
            snapshot_holding(&paths.cache_view(&spec.name))
                .inspect_err(|err| {
                    tracing::debug!(error = %err, "a batch cache file names no snapshot");
                })
                .ok()
                .flatten()
        })
        .map(|named| named.epoch())
        .collect()
}

/// What a view's cache file offers, before a snapshot it names is read.
enum Found {
    State(ViewState),
    InSnapshot(SnapshotRef),
}

/// What a run starts from.
struct Start {
    /// The records before this seq are in the cached states (0: none is).
    upto: u64,
    /// Their distinct ids (only when the run reads from `upto`).
    ids: Option<IdIndex>,
    /// [`anchor`] of the record at `upto - 1`, as the cache was built.
    anchor: u32,
    /// What earlier runs counted of them.
    stats: BatchStats,
    /// When a run last read every record (and checked its crc).
    full_at_ms: Option<i64>,
    /// Per view, its cached state; `None`: computed from the whole log.
    cached: Vec<Option<ViewState>>,
}

impl Start {
    /// Nothing cached: every view from the whole log.
    fn empty(views: usize) -> Start {
        Start {
            upto: 0,
            ids: None,
            anchor: 0,
            stats: BatchStats::default(),
            full_at_ms: None,
            cached: (0..views).map(|_| None).collect(),
        }
    }

    /// What the cache under `paths` offers a run over `sealed` at `now_ms`
    /// with retention `cutoffs`: each view whose file reads back whole, of
    /// the same fingerprint, over the same records as the id file, with a
    /// retention cutoff no later than the run's, its state in the file or in
    /// the snapshot the file names ([`take_from_snapshots`]). Anything else is logged and
    /// left to the master dataset; so is everything once the last run that
    /// read every record is `batch.full_run_every` old. The id levels are
    /// opened (and so checked whole) by every run: one damaged since, even
    /// while the daemon had it open, is never read.
    fn load(
        paths: &DataPaths,
        config: &Config,
        sealed: SealedEpoch,
        now_ms: i64,
        cutoffs: &[Option<i64>],
    ) -> Start {
        let views = config.views.len();
        let due = i64::try_from(config.batch.full_run_every.as_millis()).unwrap_or(i64::MAX);
        let ids = match store::read_cache::<CachedIds>(&paths.cache_ids()) {
            Ok(Some(ids)) if now_ms.saturating_sub(ids.full_at_ms) >= due => {
                tracing::info!(
                    last_ms = ids.full_at_ms,
                    "a full run is due (batch.full_run_every): every view from the master dataset"
                );
                return Start::empty(views);
            }
            Ok(Some(ids)) if ids.upto <= sealed.later_from.0 => ids,
            Ok(Some(ids)) => {
                tracing::warn!(
                    upto = ids.upto,
                    later_from = sealed.later_from.0,
                    "the batch cache covers records this run does not: every view from the master dataset"
                );
                return Start::empty(views);
            }
            Ok(None) => return Start::empty(views),
            Err(err) => {
                tracing::warn!(error = %err, "every view from the master dataset");
                return Start::empty(views);
            }
        };
        // Each view's file decodes on a thread of its own (or here, if
        // none can be started).
        let found: Vec<Option<Found>> = std::thread::scope(|scope| {
            let loads: Vec<_> = config
                .views
                .iter()
                .zip(cutoffs)
                .map(|(spec, cutoff)| {
                    let load = move || load_view(paths, config, spec, *cutoff, ids.upto);
                    std::thread::Builder::new()
                        .name("tandem-cache-load".into())
                        .spawn_scoped(scope, load)
                        .map_err(|_| load())
                })
                .collect();
            loads
                .into_iter()
                .zip(&config.views)
                .map(|(load, spec)| match load {
                    Ok(thread) => thread.join().unwrap_or_else(|_| {
                        tracing::error!(view = %spec.name, "decoding its cached state panicked: the view is computed from the master dataset");
                        None
                    }),
                    Err(loaded) => loaded,
                })
                .collect()
        });
        let cached = take_from_snapshots(paths, config, ids.upto, found);
        let every = cached.iter().all(Option::is_some);
        let any = cached.iter().any(Option::is_some);
        if !any {
            return Start::empty(views);
        }
        let upto = ids.upto;
        // Read from `upto`, a run dedups against these; from the start, it sees them again.
        let index = if every {
            match IdIndex::open(paths, Seq(upto), &ids.levels) {
                Ok(index) => Some(index),
                Err(err) => {
                    tracing::warn!(error = %err, "every view from the master dataset");
                    return Start::empty(views);
                }
            }
        } else {
            None
        };
        Start {
            upto,
            ids: index,
            anchor: ids.anchor,
            stats: if every {
                ids.stats
            } else {
                BatchStats::default()
            },
            full_at_ms: Some(ids.full_at_ms),
            cached,
        }
    }

    /// Where the run starts reading: after the cached records when every view has them.
    fn read_from(&self) -> u64 {
        if self.ids.is_some() { self.upto } else { 0 }
    }
}

/// What names a record in the batch cache: a checksum of its bytes, ingest
/// time and id. The cache keeps the anchor of the last record it covers, and
/// a run that reads from the cache's end reads that record first: a log
/// that is not the one the cache was built from (a master dataset restored
/// from a backup, the cache left over) is caught there, and the run is done
/// from the whole master dataset instead.
fn anchor(header: &store::RecordHeader, raw: &[u8]) -> u32 {
    let mut fields = [0u8; 16];
    fields[..8].copy_from_slice(&header.ingest_ms.to_le_bytes());
    fields[8..].copy_from_slice(&header.id_hash.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(raw), &fields)
}

/// View `spec`'s cached state (or the snapshot that holds it), if its
/// file reads back whole, of the same fingerprint, over the records before
/// `upto`, pruned no later than `cutoff`; else why not is logged.
fn load_view(
    paths: &DataPaths,
    config: &Config,
    spec: &ViewSpec,
    cutoff: Option<i64>,
    upto: u64,
) -> Option<Found> {
    let path = paths.cache_view(&spec.name);
    let why = match store::read_cache::<CachedView<'static>>(&path) {
        Ok(Some(view))
            if view.upto == upto
                && view.fingerprint == view_fingerprint(config, spec)
                && cutoff_reaches(view.cutoff, cutoff) =>
        {
            match view.state {
                CachedState::InSnapshot(named) => return Some(Found::InSnapshot(named)),
                CachedState::Here(state) => match fits(spec, state.into_owned()) {
                    Ok(state) => return Some(Found::State(state)),
                    Err(why) => why,
                },
            }
        }
        Ok(Some(view)) if view.fingerprint != view_fingerprint(config, spec) => {
            "its config or the event rules changed".to_owned()
        }
        Ok(Some(view)) if view.upto != upto => format!(
            "its cache covers {} records, the id cache {}",
            view.upto, upto
        ),
        Ok(Some(_)) => "its retention cutoff went back".to_owned(),
        Ok(None) => "it has no cache yet".to_owned(),
        Err(err) => err.to_string(),
    };
    recomputed(spec, &why);
    None
}

/// Logs that view `spec` is computed from the master dataset, and why.
fn recomputed(spec: &ViewSpec, why: &str) {
    tracing::info!(view = %spec.name, reason = %why, "view computed from the master dataset");
}

/// `state`, if it is one `spec` gives; else why not.
fn fits(spec: &ViewSpec, state: ViewState) -> Result<ViewState, String> {
    match state.check(spec) {
        Ok(()) => Ok(state),
        Err(problem) => Err(format!("its cached state does not fit it: {problem}")),
    }
}

/// Per view, the state its cache file offered: the states that files name
/// in a snapshot are read from it, once per snapshot. A view whose
/// snapshot is gone, damaged, was written again since, covers other
/// records or does not hold the view as this config specifies it is logged
/// and left to the master dataset.
fn take_from_snapshots(
    paths: &DataPaths,
    config: &Config,
    upto: u64,
    found: Vec<Option<Found>>,
) -> Vec<Option<ViewState>> {
    let mut named: Vec<(usize, SnapshotRef)> = Vec::new();
    let mut cached: Vec<Option<ViewState>> = found
        .into_iter()
        .enumerate()
        .map(|(view, found)| match found? {
            Found::State(state) => Some(state),
            Found::InSnapshot(snapshot) => {
                named.push((view, snapshot));
                None
            }
        })
        .collect();
    while let Some(&(_, snapshot)) = named.first() {
        let (these, others): (Vec<_>, Vec<_>) =
            named.into_iter().partition(|(_, other)| *other == snapshot);
        named = others;
        // A panic while decoding (a bug) costs the views their cache, not
        // the run.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_named(paths, config, snapshot, upto)
        }))
        .unwrap_or_else(|_| {
            Err("decoding the snapshot that holds its cached state panicked".to_owned())
        });
        match read {
            Ok(mut offered) => {
                for (view, _) in these {
                    cached[view] = offered[view].take();
                    if cached[view].is_none() {
                        let why = format!(
                            "the snapshot of epoch {} its cache names does not hold it",
                            snapshot.epoch
                        );
                        recomputed(&config.views[view], &why);
                    }
                }
            }
            Err(why) => {
                let views: Vec<&str> = these
                    .iter()
                    .map(|(view, _)| config.views[*view].name.as_str())
                    .collect();
                tracing::warn!(?views, reason = %why, "views computed from the master dataset");
            }
        }
    }
    cached
}

/// Per configured view, its state in the snapshot `snapshot` names (`None`
/// for one it holds no state for), if that snapshot is still the file it
/// names and covers the records before `upto`; else why not.
fn read_named(
    paths: &DataPaths,
    config: &Config,
    snapshot: SnapshotRef,
    upto: u64,
) -> Result<Vec<Option<ViewState>>, String> {
    let path = paths.snapshot(snapshot.epoch());
    let (meta, payload) = match store::read_snapshot_payload(&path) {
        Ok(read) => read,
        Err(store::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{}, which holds its cached state, is gone",
                path.display()
            ));
        }
        Err(err) => return Err(err.to_string()),
    };
    if !snapshot.names(&meta) {
        return Err(format!(
            "{}, which held its cached state, was written again since (created at {} ms, {} bytes, crc {:08x}; the cache names the one created at {} ms, {} bytes, crc {:08x})",
            path.display(),
            meta.created_ms,
            meta.payload_bytes,
            meta.payload_crc,
            snapshot.created_ms,
            snapshot.payload_bytes,
            snapshot.payload_crc
        ));
    }
    let undecodable = |err: postcard::Error| store::undecodable(&path, &err).to_string();
    let (head, states) = SnapshotData::decode_head(meta.version, &payload).map_err(undecodable)?;
    match head.sealed.map(|sealed| sealed.later_from) {
        Some(later_from) if later_from == upto => {}
        Some(later_from) => {
            return Err(format!(
                "{} covers the records before seq {later_from}, the id cache those before {upto}",
                path.display()
            ));
        }
        None => return Err(format!("{} names no sealed epoch", path.display())),
    }
    let placement = Placement::of(&config.views, &head.views);
    let states = states.decode(&payload).map_err(undecodable)?;
    placement
        .offered(&config.views, states)
        .map_err(|problem| format!("{}: {problem}", path.display()))
}

/// Whether a state pruned at bucket `cached` can be pruned to `now` and be
/// what a run pruning at `now` would build: retention only moves forward.
fn cutoff_reaches(cached: Option<i64>, now: Option<i64>) -> bool {
    match (cached, now) {
        (None, None) => true,
        (Some(cached), Some(now)) => cached <= now,
        _ => false,
    }
}

/// Everything that decides a view's state from the records: its spec, how
/// states are represented (the sketches' parameters), the event rules (a
/// record that fails them counts in no view) and this build's version.
pub fn view_fingerprint(config: &Config, spec: &ViewSpec) -> String {
    format!(
        "{}; events {:?}; tandem {}; cache format {}",
        spec_fingerprint(spec),
        config.schema,
        env!("CARGO_PKG_VERSION"),
        store::CACHE_FORMAT_VERSION
    )
}

/// Rebuilds every view over epochs <= `sealed.epoch` and writes the
/// snapshot, publishing how far it has read in `progress`. `mode` says
/// whether the batch cache may be used; it is written either way.
///
/// # Errors
/// The master dataset cannot be read (corruption is named with segment and
/// offset), or the snapshot cannot be written.
pub fn recompute(
    paths: &DataPaths,
    config: &Arc<Config>,
    sealed: SealedEpoch,
    mode: RunMode,
    progress: &Progress,
    pool: &Pool,
) -> Result<Batch, RecomputeError> {
    let started = std::time::Instant::now();
    let now = crate::now_ms();
    let built = build_views(paths, config, sealed, mode, pool, now, progress)?;
    let took_ms = started.elapsed().as_millis() as u64;
    let stats = built.stats;
    let levels = built.ids.names();
    let data = SnapshotData {
        views: config
            .views
            .iter()
            .zip(built.views)
            .map(|(spec, state)| {
                (
                    spec.name.clone(),
                    SnapshotView {
                        spec: spec_fingerprint(spec),
                        state,
                    },
                )
            })
            .collect(),
        stats,
        sealed: Some(SealedEpochData {
            epoch: sealed.epoch.0,
            next_seq: sealed.next_seq.0,
            later_from: sealed.later_from.0,
        }),
        took_ms,
        ids: StoredIds::Levels(levels.clone()),
    };
    crate::faults::crash_point("recompute.mid_run");
    // The indexes are built while the snapshot is written and fsynced; then
    // the batch cache, when it is over the same states, names the snapshot.
    let states: Vec<&ViewState> = data.views.iter().map(|(_, view)| &view.state).collect();
    let writing = std::time::Instant::now();
    let (meta, indexes) = std::thread::scope(|scope| {
        // Older snapshots are pruned only once the cache is written (naming
        // this one): a crash between the two leaves the one it still names.
        let write = scope.spawn(|| {
            timed(|| {
                store::write_snapshot(
                    paths,
                    sealed.epoch,
                    sealed.next_seq.0,
                    now,
                    &data,
                    usize::MAX,
                )
            })
        });
        let (indexes, indexes_ms) = timed(|| build_indexes(&config.views, &states));
        let (meta, snapshot_ms) = write
            .join()
            .map_err(|_| RecomputeError::Panicked("writing the snapshot"))?;
        let meta = meta?;
        let ((), cache_ms) = timed(|| {
            if let Some(cache) = &built.cache {
                let named = CachedState::InSnapshot(SnapshotRef::of(&meta));
                let states = vec![named; config.views.len()];
                write_cache(paths, config, sealed, states, &built.ids, cache);
            }
        });
        prune_snapshots(paths, config)?;
        tracing::info!(
            epoch = %sealed.epoch,
            ms = writing.elapsed().as_millis() as u64,
            snapshot_ms,
            cache_ms,
            indexes_ms,
            "batch run wrote its snapshot and built its indexes"
        );
        Ok::<_, RecomputeError>((meta, indexes))
    })?;
    remove_unused_levels(paths, &levels);
    let views: Vec<ViewState> = data.views.into_iter().map(|(_, view)| view.state).collect();
    Ok(Batch {
        epoch: Some(sealed.epoch),
        missing: vec![false; views.len()],
        indexes: indexes.map(Into::into).unwrap_or_default(),
        views,
        meta: Some(meta),
        stats,
        took_ms,
        later_from: sealed.later_from.0,
        ids: Arc::new(built.ids),
    })
}

/// What `work` returns, and the milliseconds it took.
fn timed<T>(work: impl FnOnce() -> T) -> (T, u64) {
    let started = std::time::Instant::now();
    let done = work();
    (done, started.elapsed().as_millis() as u64)
}

/// Removes the id levels that neither `named` (those of a snapshot just
/// written) nor the batch cache names. An older snapshot's, should a start
/// fall back to it, are read again from the master dataset.
pub fn remove_unused_levels(paths: &DataPaths, named: &[String]) {
    let mut keep = named.to_vec();
    // A cache that did not take this run's levels (its write failed) keeps its own.
    if let Ok(Some(cached)) = store::read_cache::<CachedIds>(&paths.cache_ids()) {
        keep.extend(cached.levels);
    }
    if let Err(err) = store::remove_other_levels(paths, &keep) {
        tracing::warn!(error = %err, "cannot remove the id levels no longer used");
    }
}

/// What [`build_views`] built.
pub struct Built {
    /// One state per configured view, in config order.
    pub views: Vec<ViewState>,
    /// The run's counts.
    pub stats: BatchStats,
    /// The distinct ids of the records before `later_from`.
    pub ids: IdIndex,
    /// The batch cache still to write, naming the snapshot of `views` (no
    /// record after `later_from` added to them, so they are the cache's
    /// states); `None` when it is written already.
    cache: Option<CacheContents>,
}

/// What the batch cache holds besides the states.
struct CacheContents {
    /// [`anchor`] of the record before `later_from`.
    anchor: u32,
    /// The counts of the records before `later_from`.
    stats: BatchStats,
    /// When a run last read every record.
    full_at_ms: i64,
    /// Per view, the retention cutoff its state is pruned at.
    cutoffs: Vec<Option<i64>>,
}

/// The views over epochs <= `sealed.epoch` as of `now_ms` (for retention),
/// built by the recompute workers of `pool`, and the ids of the records before
/// `sealed.later_from`; how far it has read goes to `progress`.
///
/// The views' states over the records before `later_from` (which every
/// later run covers too) are what the batch cache keeps for the next run:
/// when records after it count, the cache is written before they are
/// merged in; otherwise it is left to [`recompute`], which writes it once
/// the snapshot that holds those states is written, naming it (a caller
/// that only builds views writes none).
///
/// # Errors
/// The master dataset cannot be read.
pub fn build_views(
    paths: &DataPaths,
    config: &Arc<Config>,
    sealed: SealedEpoch,
    mode: RunMode,
    pool: &Pool,
    now_ms: i64,
    progress: &Progress,
) -> Result<Built, RecomputeError> {
    // Retention is applied as events are applied, so a run never holds the
    // groups it would drop at the end.
    let cutoffs: Vec<Option<i64>> = config
        .views
        .iter()
        .map(|spec| spec.retention_cutoff(now_ms))
        .collect();
    let clock = std::time::Instant::now();
    let start = match mode {
        RunMode::Full => Start::empty(config.views.len()),
        RunMode::Incremental => Start::load(paths, config, sealed, now_ms, &cutoffs),
    };
    let uncached: Vec<bool> = start.cached.iter().map(Option::is_none).collect();
    let from_master = uncached.iter().filter(|uncached| **uncached).count() as u64;
    let from_cache = uncached.len() as u64 - from_master;
    progress.from_cache.store(from_cache, Ordering::Relaxed);
    progress.from_master.store(from_master, Ordering::Relaxed);
    tracing::info!(
        epoch = %sealed.epoch,
        from_cache,
        from_master_dataset = from_master,
        read_from = start.read_from(),
        "batch run planned"
    );
    let mut read_stats = [BatchStats::default(); 2];
    let loaded = clock.elapsed();
    let plan = Arc::new(Plan::new(
        Arc::clone(config),
        cutoffs.clone(),
        uncached,
        pool,
    ));
    for worker in 0..pool.len() {
        pool.worker(worker).do_send(Begin(Arc::clone(&plan)));
    }
    // A batch waits for a credit: a bounded number is in flight, however
    // unevenly the keys fall on the workers.
    let in_flight = pool.len() * QUEUE_DEPTH;
    let (give, credits) = sync_channel(in_flight);
    for _ in 0..in_flight {
        give.try_send(()).ok();
    }
    let mut next = 0;
    let mut send = |batch: WorkBatch| {
        // The run holds a sender: a credit always comes back.
        credits.recv().ok();
        if plan.failure().is_some() {
            return false;
        }
        let credit = Arc::new(Credit(give.clone()));
        pool.worker(next).do_send(Records {
            run: plan.id(),
            batch,
            credit,
        });
        next += 1;
        true
    };
    // The run is ended on the workers whatever the reader does, so that none
    // holds its shares (or the plan) past it.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_survivors(paths, sealed, &start, &mut send, &mut read_stats, progress)
    }));
    let done = finish(&plan, pool);
    let read = read.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let Some((new_ids, new_anchor)) = read? else {
        tracing::warn!(
            upto = start.upto,
            "the batch cache does not match the master dataset (its last record differs: a log restored from a backup?): every view from the master dataset"
        );
        return build_views(paths, config, sealed, RunMode::Full, pool, now_ms, progress);
    };
    let done = done?;
    let applied = clock.elapsed();
    // The records before `later_from`: the cache's next contents.
    let mut cached_stats = start.stats;
    cached_stats.add(&read_stats[0]);
    let mut parts: [Vec<Vec<ViewState>>; 2] = [Vec::new(), Vec::new()];
    for worker in done {
        let [chunk, tail] = worker;
        cached_stats.add(&chunk.stats);
        read_stats[1].add(&tail.stats);
        parts[0].push(chunk.states);
        parts[1].push(tail.states);
    }
    let [chunks, tails] = parts;
    // A run that computed every view from the start checked every record
    // and rebuilt every state (a backfill of some views skips, for the
    // others, what the cache holds).
    let full_at_ms = if start.cached.iter().all(Option::is_none) {
        now_ms
    } else {
        start.full_at_ms.unwrap_or(now_ms)
    };
    let mut views = merge_parts(config, start.cached, chunks);
    for ((state, spec), cutoff) in views.iter_mut().zip(&config.views).zip(&cutoffs) {
        if let Some(cutoff) = cutoff {
            state.retain_from(spec, *cutoff);
        }
    }
    let ids = match &start.ids {
        Some(earlier) => earlier.extended(paths, sealed.later_from, new_ids)?,
        None => IdIndex::of_level(sealed.later_from, new_ids),
    };
    let mut cache = Some(CacheContents {
        anchor: new_anchor,
        stats: cached_stats,
        full_at_ms,
        cutoffs: cutoffs.to_vec(),
    });
    let merged = clock.elapsed();
    let tail_counts = tails.iter().flatten().any(|state| !state.is_empty());
    if tail_counts && let Some(cache) = cache.take() {
        let states = views
            .iter()
            .map(|state| CachedState::Here(std::borrow::Cow::Borrowed(state)))
            .collect();
        write_cache(paths, config, sealed, states, &ids, &cache);
    }
    let cached = clock.elapsed();
    let views = merge_parts(config, views.into_iter().map(Some).collect(), tails);
    let ms = |span: std::time::Duration| span.as_millis() as u64;
    tracing::info!(
        epoch = %sealed.epoch,
        cache_read_ms = ms(loaded),
        read_and_apply_ms = ms(applied - loaded),
        merge_ms = ms(merged - applied),
        cache_write_ms = ms(cached - merged),
        "batch run built its views"
    );
    let mut stats = cached_stats;
    stats.add(&read_stats[1]);
    Ok(Built {
        views,
        stats,
        ids,
        cache,
    })
}

/// Ends `plan`'s run on every worker of `pool`: answers each worker's parts,
/// or the failure of the run by the name of the worker that failed.
fn finish(plan: &Plan, pool: &Pool) -> Result<Vec<[Part; 2]>, RecomputeError> {
    // Once every worker has answered `Flush`, every event routed between
    // workers is queued before the `Finish` that follows it.
    let flushed: Vec<_> = (0..pool.len())
        .map(|worker| {
            let (reply, flushed) = channel();
            pool.worker(worker).do_send(Flush(reply));
            flushed
        })
        .collect();
    for flushed in flushed {
        flushed.recv().ok();
    }
    let finished: Vec<_> = (0..pool.len())
        .map(|worker| {
            let (reply, parts) = channel();
            pool.worker(worker).do_send(Finish {
                run: plan.id(),
                reply,
            });
            parts
        })
        .collect();
    let parts: Result<Vec<[Part; 2]>, _> = finished.into_iter().map(|parts| parts.recv()).collect();
    match (parts, plan.failure()) {
        (Ok(parts), None) => Ok(parts),
        (_, Some(failure)) => Err(RecomputeError::Worker(failure)),
        (Err(_), None) => Err(RecomputeError::Stopping),
    }
}

/// Per view, `base` (or an empty state) with the states of every part merged in.
fn merge_parts(
    config: &Config,
    base: Vec<Option<ViewState>>,
    parts: Vec<Vec<ViewState>>,
) -> Vec<ViewState> {
    let mut merged: Vec<ViewState> = base.into_iter().map(Option::unwrap_or_default).collect();
    for states in parts {
        for ((mine, theirs), spec) in merged.iter_mut().zip(states).zip(&config.views) {
            // The workers' shares hold disjoint keys: they are moved, not merged.
            mine.merge_owned(spec, theirs);
        }
    }
    merged
}

/// Writes the views' states over the records before `later_from` (or the
/// snapshot that holds them), and those records' ids, to the batch cache,
/// and removes what no configured view uses. A failure costs the next run
/// time, not correctness (it computes from the master dataset what it
/// cannot read): it is logged, not raised.
fn write_cache(
    paths: &DataPaths,
    config: &Config,
    sealed: SealedEpoch,
    views: Vec<CachedState<'_>>,
    ids: &IdIndex,
    cache: &CacheContents,
) {
    let upto = sealed.later_from.0;
    let mut written = vec![paths.cache_ids()];
    let mut outcome = store::write_cache(
        &paths.cache_ids(),
        &CachedIds {
            upto,
            anchor: cache.anchor,
            stats: cache.stats,
            full_at_ms: cache.full_at_ms,
            levels: ids.names(),
        },
    );
    for ((spec, state), cutoff) in config.views.iter().zip(views).zip(&cache.cutoffs) {
        let path = paths.cache_view(&spec.name);
        let view = CachedView {
            upto,
            fingerprint: view_fingerprint(config, spec).into(),
            cutoff: *cutoff,
            state,
        };
        outcome = outcome.and_then(|()| store::write_cache(&path, &view));
        written.push(path);
    }
    if let Err(err) = outcome.and_then(|()| store::remove_stale_cache(paths, &written)) {
        tracing::warn!(error = %err, "cannot write the batch cache: the next run computes from the master dataset what it lacks");
    }
}

/// The reader: streams records in log order from where `start` says, dedups
/// over all of `[0, end)`, keeps epochs <= the sealed one, feeds the workers;
/// returns the level of the ids first seen in what it read before `later_from`, and the
/// [`anchor`] of the record before `later_from`; `None` when the record
/// before the cache's end is not the one the cache was built on. Counts go
/// to `stats`: `[0]` those before `later_from`, `[1]` those after.
fn read_survivors(
    paths: &DataPaths,
    sealed: SealedEpoch,
    start: &Start,
    send: &mut impl FnMut(WorkBatch) -> bool,
    stats: &mut [BatchStats; 2],
    progress: &Progress,
) -> Result<Option<(Option<store::Level>, u32)>, store::Error> {
    let from = start.read_from();
    // From the cache's end, its last record first: the anchor that ties the cache to this log.
    let anchored = start.ids.is_some() && from > 0;
    let (mut anchor_seen, mut new_anchor) = (false, 0u32);
    let total = sealed.next_seq.0.saturating_sub(from);
    progress.start(total);
    // First the later copies of ids, from the records' headers, in memory
    // that does not grow with the log; then the records, skipping them.
    let clock = std::time::Instant::now();
    let copies = store::find_copies(
        paths,
        Seq(from),
        sealed.end,
        sealed.later_from,
        start.ids.as_ref().unwrap_or(&IdIndex::default()),
        total,
        store::PARTITION_ENTRIES,
    )?;
    tracing::info!(
        epoch = %sealed.epoch,
        later_copies = copies.later.len(),
        ms = clock.elapsed().as_millis() as u64,
        "batch run found the later copies of ids"
    );
    let mut later_copies = copies.later.iter().copied().peekable();
    let mut read = 0u64;
    let mut logged = std::time::Instant::now();
    let mut batch = WorkBatch::with_capacity(BATCH_RECORDS);
    // Set when a worker failed: reading stops, and the run's failure is
    // reported once the workers have ended it.
    let mut stopped = false;
    let scan_from = if anchored { from - 1 } else { from };
    store::scan_log_from(paths, Seq(scan_from), sealed.end, |header, raw| {
        if stopped {
            return ControlFlow::Break(());
        }
        if header.seq.0 + 1 == sealed.later_from.0 {
            new_anchor = anchor(header, raw);
        }
        if header.seq.0 < from {
            anchor_seen = anchor(header, raw) == start.anchor;
            return ControlFlow::Continue(());
        }
        read += 1;
        if read.is_multiple_of(PROGRESS_EVERY) {
            progress.read.store(read, Ordering::Relaxed);
            if logged.elapsed() >= PROGRESS_LOG_EVERY {
                logged = std::time::Instant::now();
                tracing::info!(
                    epoch = %sealed.epoch,
                    read,
                    total,
                    percent = read * 100 / total.max(1),
                    "batch run reading"
                );
            }
        }
        let covered = header.epoch <= sealed.epoch;
        let tail = header.seq >= sealed.later_from;
        let counts = &mut stats[usize::from(tail)];
        if covered {
            counts.records += 1;
        }
        // The first copy in log order wins, whatever its epoch: a later copy
        // of an older epoch is dropped here as the Recorder dropped it for the
        // speed layer.
        if later_copies.next_if_eq(&header.seq.0).is_some() {
            counts.duplicates += u64::from(covered);
            return ControlFlow::Continue(());
        }
        if !covered {
            return ControlFlow::Continue(());
        }
        let mut flags = 0;
        if tail {
            flags |= flag::TAIL;
        }
        if header.seq.0 < start.upto {
            flags |= flag::UNCACHED_ONLY;
        }
        batch.bytes.extend_from_slice(raw);
        batch
            .records
            .push((batch.bytes.len(), header.ingest_ms, flags));
        if batch.records.len() >= BATCH_RECORDS {
            let full = std::mem::replace(&mut batch, WorkBatch::with_capacity(BATCH_RECORDS));
            stopped = !send(full);
        }
        ControlFlow::Continue(())
    })?;
    progress.read.store(read, Ordering::Relaxed);
    if !batch.records.is_empty() && !stopped {
        send(batch);
    }
    if anchored && !anchor_seen {
        return Ok(None);
    }
    Ok(Some((copies.first_ids, new_anchor)))
}
