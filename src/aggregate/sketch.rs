//! The two approximate metrics, each exact while small and a sketch once large.
//!
//! Most (key, bucket) groups see a handful of values, so both start as a sorted
//! boxed slice (no spare capacity) and turn into a sketch only past a limit:
//! HyperLogLog++ (precision 14, about 0.8% standard error) for distinct counts,
//! DDSketch (1% relative error) for quantiles. This is the only file that names
//! the sketch crates.

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as DdConfig, DDSketch};
use std::hash::{BuildHasher, Hasher};

/// Distinct values counted exactly up to this many; beyond, HyperLogLog++.
pub const DISTINCT_EXACT_LIMIT: usize = 512;
/// Values kept exactly up to this many for quantiles; beyond, DDSketch.
pub const QUANTILE_EXACT_LIMIT: usize = 128;
/// HyperLogLog++ precision: 2^14 registers, standard error 1.04 / 128 = 0.81%.
const HLL_PRECISION: u8 = 14;
/// DDSketch relative accuracy.
const DDSKETCH_ALPHA: f64 = 0.01;
/// DDSketch bin limit: with alpha 0.01 this spans about 36 orders of magnitude.
const DDSKETCH_MAX_BINS: u32 = 4096;
/// Values closer to zero than this count as zero in a DDSketch.
const DDSKETCH_MIN_VALUE: f64 = 1e-9;

/// Passes a value that is already a 64-bit hash through unchanged.
///
/// Values are hashed once with [`crate::event::hash_text`]; the sketch must
/// not hash them again with a seeded hasher, or sketches built in different
/// processes would not merge.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PassThrough;

/// The hasher behind [`PassThrough`].
#[derive(Debug, Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

type Hll = HyperLogLogPlus<u64, PassThrough>;

/// Distinct count state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Distinct {
    /// Sorted, unique value hashes; exact.
    Exact(Box<[u64]>),
    /// HyperLogLog++ once past [`DISTINCT_EXACT_LIMIT`].
    Sketch(Box<Hll>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(Box::default())
    }
}

fn new_hll() -> Box<Hll> {
    Box::new(
        HyperLogLogPlus::new(HLL_PRECISION, PassThrough).expect("precision 14 lies within 4..=18"),
    )
}

impl Distinct {
    /// Adds one value hash.
    pub fn insert(&mut self, hash: u64) {
        match self {
            Distinct::Exact(values) => {
                let Err(at) = values.binary_search(&hash) else {
                    return;
                };
                if values.len() < DISTINCT_EXACT_LIMIT {
                    *values = insert_at(values, at, hash);
                } else {
                    let mut hll = new_hll();
                    for value in values.iter().chain([&hash]) {
                        hll.insert(value);
                    }
                    *self = Distinct::Sketch(hll);
                }
            }
            Distinct::Sketch(hll) => hll.insert(&hash),
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Distinct) {
        match (&mut *self, other) {
            (Distinct::Exact(mine), Distinct::Exact(theirs)) => {
                let union = sorted_union(mine, theirs, |a, b| a.cmp(b), true);
                if union.len() <= DISTINCT_EXACT_LIMIT {
                    *mine = union.into_boxed_slice();
                } else {
                    let mut hll = new_hll();
                    for value in &union {
                        hll.insert(value);
                    }
                    *self = Distinct::Sketch(hll);
                }
            }
            (Distinct::Sketch(hll), Distinct::Exact(theirs)) => {
                for value in theirs.iter() {
                    hll.insert(value);
                }
            }
            (Distinct::Exact(mine), Distinct::Sketch(theirs)) => {
                let mut hll = theirs.clone();
                for value in mine.iter() {
                    hll.insert(value);
                }
                *self = Distinct::Sketch(hll);
            }
            (Distinct::Sketch(hll), Distinct::Sketch(theirs)) => {
                hll.merge(theirs)
                    .expect("every sketch has the same precision");
            }
        }
    }

    /// The number of distinct values: exact while small, estimated beyond.
    pub fn count(&self) -> u64 {
        match self {
            Distinct::Exact(values) => values.len() as u64,
            // `count` needs `&mut` only to fold its insert buffer; a copy keeps reads shared.
            Distinct::Sketch(hll) => hll.as_ref().clone().count().round() as u64,
        }
    }
}

/// Quantile state.
#[derive(Clone, Serialize, Deserialize)]
pub enum Quantiles {
    /// Sorted values; exact.
    Exact(Box<[f64]>),
    /// DDSketch once past [`QUANTILE_EXACT_LIMIT`].
    Sketch(Box<DDSketch>),
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantiles::Exact(values) => f.debug_tuple("Exact").field(values).finish(),
            Quantiles::Sketch(sketch) => write!(f, "Sketch({} values)", sketch.count()),
        }
    }
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles::Exact(Box::default())
    }
}

fn new_ddsketch<'a>(values: impl IntoIterator<Item = &'a f64>) -> Box<DDSketch> {
    let mut sketch = Box::new(DDSketch::new(DdConfig::new(
        DDSKETCH_ALPHA,
        DDSKETCH_MAX_BINS,
        DDSKETCH_MIN_VALUE,
    )));
    for value in values {
        sketch.add(*value);
    }
    sketch
}

impl Quantiles {
    /// Adds one value.
    pub fn insert(&mut self, value: f64) {
        match self {
            Quantiles::Exact(values) if values.len() < QUANTILE_EXACT_LIMIT => {
                let at = values.partition_point(|v| v.total_cmp(&value).is_le());
                *values = insert_at(values, at, value);
            }
            Quantiles::Exact(values) => {
                *self = Quantiles::Sketch(new_ddsketch(values.iter().chain([&value])))
            }
            Quantiles::Sketch(sketch) => sketch.add(value),
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Quantiles) {
        match (&mut *self, other) {
            (Quantiles::Exact(mine), Quantiles::Exact(theirs)) => {
                if mine.len() + theirs.len() <= QUANTILE_EXACT_LIMIT {
                    *mine =
                        sorted_union(mine, theirs, |a, b| a.total_cmp(b), false).into_boxed_slice();
                } else {
                    *self = Quantiles::Sketch(new_ddsketch(mine.iter().chain(theirs.iter())));
                }
            }
            (Quantiles::Sketch(sketch), Quantiles::Exact(theirs)) => {
                for value in theirs.iter() {
                    sketch.add(*value);
                }
            }
            (Quantiles::Exact(mine), Quantiles::Sketch(theirs)) => {
                let mut sketch = theirs.clone();
                for value in mine.iter() {
                    sketch.add(*value);
                }
                *self = Quantiles::Sketch(sketch);
            }
            (Quantiles::Sketch(sketch), Quantiles::Sketch(theirs)) => {
                sketch
                    .merge(theirs)
                    .expect("every sketch has the same configuration");
            }
        }
    }

    /// The value at rank `floor(q * (n - 1))`, as DDSketch defines it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        match self {
            Quantiles::Exact(values) if values.is_empty() => None,
            Quantiles::Exact(values) => {
                let rank = (q.clamp(0.0, 1.0) * (values.len() - 1) as f64) as usize;
                Some(values[rank])
            }
            Quantiles::Sketch(sketch) => sketch.quantile(q.clamp(0.0, 1.0)).ok().flatten(),
        }
    }
}

fn insert_at<T: Copy>(values: &[T], at: usize, value: T) -> Box<[T]> {
    let mut grown = Vec::with_capacity(values.len() + 1);
    grown.extend_from_slice(&values[..at]);
    grown.push(value);
    grown.extend_from_slice(&values[at..]);
    grown.into_boxed_slice()
}

/// Merges two sorted slices; `dedup` drops values present in both.
fn sorted_union<T: Copy>(
    a: &[T],
    b: &[T],
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
    dedup: bool,
) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match cmp(&a[i], &b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                if dedup {
                    j += 1;
                }
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
