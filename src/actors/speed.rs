//! A speed partition: live aggregates of the keys whose hash maps to it, per
//! epoch, so that the epochs a snapshot covers can be dropped exactly.
//!
//! In: `Apply` (events of one epoch, after they are durable), `SpeedQuery`
//! (the partial of a query over epochs after B), `Expire` (drop epochs <= B).
//! Every message is sent with `do_send` and carries its own reply channel, so
//! each is enqueued when it is sent and the mailbox order is the send order.

use crate::aggregate::{Partial, QueryKind, TimeRange, ViewSpec, ViewState};
use crate::event::{Epoch, ParsedEvent, hash_text};
use actix::{Actor, AsyncContext, Context, Handler, Message};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// How often a partition drops the buckets past its views' retention.
const RETAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The partition owning `key` of a view: every key has exactly one owner.
pub fn partition_of(key: &str, partitions: usize) -> usize {
    (hash_text(key) % partitions.max(1) as u64) as usize
}

/// For each view, in order, the partition owning `event`'s key in it.
pub fn owners<'a>(
    views: &'a [Arc<ViewSpec>],
    event: &'a ParsedEvent,
    partitions: usize,
    scratch: &'a mut String,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    views.iter().enumerate().map(move |(view, spec)| {
        (
            view,
            partition_of(spec.key_text(event, scratch), partitions),
        )
    })
}

/// Durable events of one epoch for this partition: (view index, event).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    /// Their epoch.
    pub epoch: Epoch,
    /// The events, each with the view whose key routed it here.
    pub events: Vec<(usize, Arc<ParsedEvent>)>,
}

/// The partial of a query over this partition's epochs after `after`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SpeedQuery {
    /// Epochs up to this one are in the batch layer's snapshot.
    pub after: Option<Epoch>,
    /// Index of the view.
    pub view: usize,
    /// What is asked.
    pub kind: Arc<QueryKind>,
    /// Which buckets count.
    pub range: TimeRange,
    /// Where the partial goes, with the epochs it covers.
    pub reply: oneshot::Sender<(Partial, Vec<Epoch>)>,
}

/// Drops every epoch <= `upto`: a snapshot now covers them.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Expire {
    /// The snapshot's epoch.
    pub upto: Epoch,
}

/// A partition's state, without the actor: per epoch, one `ViewState` per view.
#[derive(Debug)]
pub struct SpeedState {
    views: Arc<[Arc<ViewSpec>]>,
    /// Epochs after the newest snapshot only (after `Expire`).
    epochs: BTreeMap<Epoch, Vec<ViewState>>,
    /// The newest epoch expired: events of it or older are in the snapshot.
    expired: Option<Epoch>,
}

impl SpeedState {
    /// An empty partition for these views.
    pub fn new(views: Arc<[Arc<ViewSpec>]>) -> SpeedState {
        SpeedState {
            views,
            epochs: BTreeMap::new(),
            expired: None,
        }
    }

    /// Applies one event of `epoch` to view `view`. Events of an expired epoch
    /// are ignored: the snapshot that expired it already counts them. Callers
    /// pass only first copies of an id (see `store::FirstCopies`).
    pub fn apply(&mut self, epoch: Epoch, view: usize, event: &ParsedEvent) {
        if self.expired.is_some_and(|expired| epoch <= expired) {
            return;
        }
        let n_views = self.views.len();
        let states = self
            .epochs
            .entry(epoch)
            .or_insert_with(|| vec![ViewState::new(); n_views]);
        states[view].apply(&self.views[view], event);
    }

    /// The partial of a query over epochs after `after`, and those epochs.
    pub fn partial(
        &self,
        after: Option<Epoch>,
        view: usize,
        kind: &QueryKind,
        range: TimeRange,
    ) -> (Partial, Vec<Epoch>) {
        let spec = &self.views[view];
        let mut partial = Partial::empty(spec, kind);
        let mut epochs = Vec::new();
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        for (epoch, states) in self.epochs.range((from, std::ops::Bound::Unbounded)) {
            partial.merge(&states[view].partial(spec, kind, range));
            epochs.push(*epoch);
        }
        (partial, epochs)
    }

    /// Drops the buckets past each view's retention as of `now_ms`, and the
    /// keys and epochs left empty: the speed layer stays bounded by retention
    /// even while no batch run expires its epochs.
    pub fn retain(&mut self, now_ms: i64) {
        for states in self.epochs.values_mut() {
            for (state, spec) in states.iter_mut().zip(self.views.iter()) {
                if let Some(cutoff) = spec.retention_cutoff(now_ms) {
                    state.retain_from(spec, cutoff);
                }
            }
        }
        self.epochs
            .retain(|_, states| states.iter().any(|state| !state.is_empty()));
    }

    /// Drops every epoch <= `upto`.
    pub fn expire(&mut self, upto: Epoch) {
        self.epochs.retain(|epoch, _| *epoch > upto);
        self.expired = Some(self.expired.map_or(upto, |expired| expired.max(upto)));
    }

    /// (key, bucket) groups held, over all epochs and views.
    pub fn groups(&self) -> usize {
        self.epochs
            .values()
            .flat_map(|states| states.iter().map(ViewState::len))
            .sum()
    }
}

/// The actor around one [`SpeedState`].
pub struct SpeedPartition {
    /// Keys hashing to this partition only.
    state: SpeedState,
    index: usize,
    /// Where this partition publishes its group count for scrapes.
    shared: Arc<crate::metrics::Shared>,
}

impl SpeedPartition {
    /// The actor for partition `index`, starting from `state`.
    pub fn new(
        index: usize,
        state: SpeedState,
        shared: Arc<crate::metrics::Shared>,
    ) -> SpeedPartition {
        SpeedPartition {
            state,
            index,
            shared,
        }
    }

    fn publish_size(&self) {
        if let Some(groups) = self.shared.speed_groups.get(self.index) {
            groups.store(
                self.state.groups() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

impl Actor for SpeedPartition {
    type Context = Context<Self>;

    /// Every message comes by `do_send`, which ignores the mailbox capacity
    /// and enqueues at call time, so mailbox order is send order; ingest is
    /// bounded by the sources' prefetch windows instead.
    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(partition = self.index, "speed partition started");
        // What the replay left here counts from the start.
        self.publish_size();
        if self
            .state
            .views
            .iter()
            .any(|spec| spec.retention_ms.is_some())
        {
            ctx.run_interval(RETAIN_EVERY, |partition, _| {
                partition.state.retain(crate::now_ms());
                partition.publish_size();
            });
        }
    }
}

impl Handler<Apply> for SpeedPartition {
    type Result = ();

    fn handle(&mut self, msg: Apply, _: &mut Self::Context) {
        for (view, event) in &msg.events {
            self.state.apply(msg.epoch, *view, event);
        }
        self.publish_size();
    }
}

impl Handler<SpeedQuery> for SpeedPartition {
    type Result = ();

    fn handle(&mut self, msg: SpeedQuery, _: &mut Self::Context) {
        let answer = self
            .state
            .partial(msg.after, msg.view, &msg.kind, msg.range);
        // The asker may have given up (its request was dropped).
        msg.reply.send(answer).ok();
    }
}

impl Handler<Expire> for SpeedPartition {
    type Result = ();

    #[tracing::instrument(skip_all, fields(partition = self.index, upto = %msg.upto))]
    fn handle(&mut self, msg: Expire, _: &mut Self::Context) {
        self.state.expire(msg.upto);
        self.publish_size();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Body, MetricValue};
    use crate::config::Config;

    const CONFIG: &str = r#"
        data_dir = "d"
        [event]
        id = "id"
        [[view]]
        name = "v"
        key = ["k"]
        bucket = "1m"
        metrics = [{ name = "n", agg = "count" }]
    "#;

    fn totals(state: &SpeedState, after: Option<Epoch>) -> (u64, Vec<Epoch>) {
        let (partial, epochs) = state.partial(after, 0, &QueryKind::Totals, TimeRange::ALL);
        let Body::Metrics(metrics) = partial.finish(&state.views[0], &QueryKind::Totals) else {
            panic!("totals are metrics")
        };
        let Some(MetricValue::Int(n)) = metrics.get("n") else {
            panic!("a count")
        };
        (n, epochs)
    }

    #[test]
    fn epochs_are_kept_apart_expired_and_never_reopened() {
        let config = Config::parse(CONFIG, "test.toml").expect("config");
        let mut state = SpeedState::new(config.views.iter().cloned().collect());
        let event = |id: u32| {
            config
                .schema
                .parse(format!(r#"{{"id":{id},"k":"a"}}"#).as_bytes(), 0)
                .expect("event")
        };
        state.apply(Epoch(1), 0, &event(1));
        state.apply(Epoch(2), 0, &event(2));
        state.apply(Epoch(3), 0, &event(3));
        assert_eq!(
            totals(&state, None),
            (3, vec![Epoch(1), Epoch(2), Epoch(3)])
        );
        assert_eq!(
            totals(&state, Some(Epoch(1))),
            (2, vec![Epoch(2), Epoch(3)])
        );

        state.expire(Epoch(2));
        assert_eq!(totals(&state, None), (1, vec![Epoch(3)]));
        assert_eq!(state.epochs.len(), 1);
        // A late event of an expired epoch is already in the snapshot.
        state.apply(Epoch(2), 0, &event(4));
        assert_eq!(totals(&state, None), (1, vec![Epoch(3)]));
    }

    #[test]
    fn retention_drops_old_buckets_keys_and_epochs() {
        let config = Config::parse(
            &CONFIG.replace(
                "bucket = \"1m\"",
                "bucket = \"1m\"\n        retention = \"1h\"",
            ),
            "test.toml",
        )
        .expect("config");
        let mut state = SpeedState::new(config.views.iter().cloned().collect());
        let now = 100 * 3_600_000;
        let event = |id: u32, key: &str, ts: i64| {
            config
                .schema
                .parse(
                    format!(r#"{{"id":{id},"k":"{key}","ts":{ts}}}"#).as_bytes(),
                    ts,
                )
                .expect("event")
        };
        state.apply(Epoch(1), 0, &event(1, "old", now - 2 * 3_600_000));
        state.apply(Epoch(2), 0, &event(2, "old", now - 2 * 3_600_000));
        state.apply(Epoch(2), 0, &event(3, "new", now - 60_000));
        assert_eq!(state.groups(), 3);
        state.retain(now);
        assert_eq!(state.groups(), 1, "only the bucket within the hour");
        assert_eq!(state.epochs.len(), 1, "epoch 1 is left empty and dropped");
        assert_eq!(state.epochs[&Epoch(2)][0].key_count(), 1, "key old is gone");
    }
}
