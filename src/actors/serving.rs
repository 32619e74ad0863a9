//! Serving: holds the batch layer's current truth (the snapshot, epochs <= B)
//! and answers queries by merging it with the speed layer's epochs > B.
//!
//! In: `Ask` (a query), `SnapshotReady` (a new batch), `BatchQuery` (for
//! status). Out: `SpeedQuery` and `Expire` to every speed partition.
//!
//! Exactness rests on mailbox order. `Ask` reads B and enqueues its
//! `SpeedQuery(after B)` messages in the same handler; `SnapshotReady` swaps
//! the batch first and only then enqueues `Expire(B')`. Both use `do_send`,
//! which enqueues at call time, so a partition always answers a query before
//! it expires the epochs that query still needs.

use super::recompute::Batch;
use super::speed::{Expire, SpeedPartition, SpeedQuery};
use crate::aggregate::{Body, Partial, QueryKind, TimeRange, ViewSpec};
use crate::event::Epoch;
use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Which layers answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Batch (epochs <= B) and speed (epochs > B) together.
    #[default]
    Merged,
    /// The snapshot alone.
    Batch,
    /// The speed layer alone (epochs > B).
    Speed,
}

/// What to ask of a view, with metrics by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// One key's metrics.
    Key(String),
    /// All keys together.
    Totals,
    /// The `n` keys with the highest value of `metric`.
    Top {
        /// The metric to rank by.
        metric: String,
        /// How many keys, 1..=1000.
        n: usize,
    },
    /// Per-bucket metrics of one key, or of all keys together.
    Series(Option<String>),
}

/// Most keys a top-N query returns.
pub const MAX_TOP: usize = 1_000;

/// A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The view's name.
    pub view: String,
    /// What is asked.
    pub question: Question,
    /// Which buckets count.
    pub range: TimeRange,
    /// Which layers answer.
    pub layer: Layer,
}

impl Query {
    /// A merged query over every bucket.
    pub fn new(view: impl Into<String>, question: Question) -> Query {
        Query {
            view: view.into(),
            question,
            range: TimeRange::ALL,
            layer: Layer::Merged,
        }
    }
}

/// What an answer is based on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOf {
    /// The snapshot's epoch; `None` when the answer has no batch part (no
    /// snapshot yet, or one without this view: the speed epochs are then all of it).
    pub batch_epoch: Option<Epoch>,
    /// When the snapshot was written, epoch milliseconds.
    pub batch_at: Option<i64>,
    /// The speed epochs merged in.
    pub speed_epochs: Vec<Epoch>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The view's name.
    pub view: String,
    /// The result.
    pub body: Body,
    /// What it is based on.
    pub as_of: AsOf,
}

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No view of that name.
    #[error("unknown view {0:?}")]
    UnknownView(String),
    /// The view has no metric of that name.
    #[error("view {view:?} has no metric {metric:?}")]
    UnknownMetric {
        /// The view.
        view: String,
        /// The metric asked for.
        metric: String,
    },
    /// n out of range.
    #[error("n must lie within 1..={MAX_TOP}, not {0}")]
    BadN(usize),
    /// `from` is not before `to`.
    #[error("from must be before to")]
    EmptyRange,
    /// The system is shutting down.
    #[error("tandem is stopping")]
    Stopped,
}

/// A query, answered merged per its layer.
#[derive(Message)]
#[rtype(result = "Result<Answer, QueryError>")]
pub struct Ask(pub Query);

/// A new batch: swap it in, then expire the speed epochs it covers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotReady(pub Arc<Batch>);

/// The current batch (for status).
#[derive(Message)]
#[rtype(result = "Arc<Batch>")]
pub struct BatchQuery;

/// The serving actor.
pub struct Serving {
    views: Arc<[Arc<ViewSpec>]>,
    /// Where the served snapshot's age is published.
    shared: Arc<crate::metrics::Shared>,
    /// Covers epochs <= its epoch; swapped whole, never changed in place.
    batch: Arc<Batch>,
    partitions: Arc<[Addr<SpeedPartition>]>,
}

impl Serving {
    /// Serving over `batch`, merging with `partitions`.
    pub fn new(
        views: Arc<[Arc<ViewSpec>]>,
        batch: Arc<Batch>,
        partitions: Arc<[Addr<SpeedPartition>]>,
        shared: Arc<crate::metrics::Shared>,
    ) -> Serving {
        let created = batch.meta.map_or(0, |meta| meta.created_ms);
        shared
            .snapshot_created_ms
            .store(created, std::sync::atomic::Ordering::Relaxed);
        Serving {
            views,
            shared,
            batch,
            partitions,
        }
    }

    fn resolve(&self, query: &Query) -> Result<(usize, QueryKind), QueryError> {
        let view = self
            .views
            .iter()
            .position(|spec| spec.name == query.view)
            .ok_or_else(|| QueryError::UnknownView(query.view.clone()))?;
        if let (Some(from), Some(to)) = (query.range.from, query.range.to)
            && from >= to
        {
            return Err(QueryError::EmptyRange);
        }
        let kind = match &query.question {
            Question::Key(key) => QueryKind::Key(key.clone()),
            Question::Totals => QueryKind::Totals,
            Question::Series(key) => QueryKind::Series(key.clone()),
            Question::Top { metric, n } => {
                if !(1..=MAX_TOP).contains(n) {
                    return Err(QueryError::BadN(*n));
                }
                let spec = &self.views[view];
                let index = spec
                    .metrics
                    .iter()
                    .position(|m| m.name == *metric)
                    .ok_or_else(|| QueryError::UnknownMetric {
                        view: spec.name.clone(),
                        metric: metric.clone(),
                    })?;
                QueryKind::Top {
                    metric: index,
                    n: *n,
                }
            }
        };
        Ok((view, kind))
    }
}

impl Actor for Serving {
    type Context = Context<Self>;
}

impl Handler<Ask> for Serving {
    /// `ResponseFuture`: the handler itself reads B and enqueues the speed
    /// queries (the ordering that makes the merge exact); merging the replies
    /// touches no actor state, so other messages may run meanwhile.
    type Result = ResponseFuture<Result<Answer, QueryError>>;

    fn handle(&mut self, Ask(query): Ask, _: &mut Self::Context) -> Self::Result {
        let (view, kind) = match self.resolve(&query) {
            Ok(resolved) => resolved,
            Err(err) => return Box::pin(async move { Err(err) }),
        };
        let spec = Arc::clone(&self.views[view]);
        let range = query.range.at_least(spec.retention_cutoff(crate::now_ms()));
        let kind = Arc::new(kind);
        let batch = Arc::clone(&self.batch);
        // A view the snapshot has no state for is answered by the speed layer
        // alone, which holds all its epochs until a batch run covers it.
        let batch_epoch = batch.epoch.filter(|_| batch.has_view(view));
        let mut speed = Vec::new();
        if query.layer != Layer::Batch {
            for partition in self.partitions.iter() {
                let (reply, rx) = oneshot::channel();
                partition.do_send(SpeedQuery {
                    after: batch_epoch,
                    view,
                    kind: Arc::clone(&kind),
                    range,
                    reply,
                });
                speed.push(rx);
            }
        }
        let layer = query.layer;
        Box::pin(async move {
            let mut partial = match layer {
                Layer::Speed => Partial::empty(&spec, &kind),
                _ => batch_partial(&batch, &spec, view, &kind, range).await?,
            };
            let mut speed_epochs = BTreeSet::new();
            for rx in speed {
                let (theirs, epochs) = rx.await.map_err(|_| QueryError::Stopped)?;
                partial.merge(&theirs);
                speed_epochs.extend(epochs);
            }
            let as_of = AsOf {
                batch_epoch,
                batch_at: batch_epoch.and(batch.meta.map(|meta| meta.created_ms)),
                speed_epochs: speed_epochs.into_iter().collect(),
            };
            Ok(Answer {
                view: spec.name.clone(),
                body: partial.finish(&spec, &kind),
                as_of,
            })
        })
    }
}

/// The batch layer's partial; anything larger than one key's buckets is
/// computed off the async threads.
async fn batch_partial(
    batch: &Arc<Batch>,
    spec: &Arc<ViewSpec>,
    view: usize,
    kind: &Arc<QueryKind>,
    range: TimeRange,
) -> Result<Partial, QueryError> {
    let Some(state) = batch.views.get(view).filter(|_| batch.has_view(view)) else {
        return Ok(Partial::empty(spec, kind));
    };
    if let QueryKind::Key(_) = **kind {
        return Ok(state.partial(spec, kind, range));
    }
    let (batch, spec, kind) = (Arc::clone(batch), Arc::clone(spec), Arc::clone(kind));
    tokio::task::spawn_blocking(move || batch.views[view].partial(&spec, &kind, range))
        .await
        .map_err(|_| QueryError::Stopped)
}

impl Handler<SnapshotReady> for Serving {
    type Result = ();

    #[tracing::instrument(skip_all, fields(epoch = ?msg.0.epoch))]
    fn handle(&mut self, msg: SnapshotReady, _: &mut Self::Context) {
        self.batch = msg.0;
        let created = self.batch.meta.map_or(0, |meta| meta.created_ms);
        self.shared
            .snapshot_created_ms
            .store(created, std::sync::atomic::Ordering::Relaxed);
        // Swap first, expire second: queries enqueued before this point still
        // get the epochs between the old and the new snapshot from the speed layer.
        if let Some(epoch) = self.batch.epoch {
            for partition in self.partitions.iter() {
                partition.do_send(Expire { upto: epoch });
            }
        }
    }
}

impl Handler<BatchQuery> for Serving {
    type Result = actix::MessageResult<BatchQuery>;

    fn handle(&mut self, _: BatchQuery, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(Arc::clone(&self.batch))
    }
}
