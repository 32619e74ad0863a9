//! RabbitMQ in, exact answers out: a generated stream with duplicates and
//! malformed messages, consumed from a real broker. Every product's count and
//! revenue after a batch run equals an oracle computed here (also with a
//! prefetch window larger than a batch); the dead-letter
//! queue holds exactly the malformed messages, each with its reason; a
//! restart in the middle of the stream loses nothing and counts nothing
//! twice; and neither does a session whose acknowledger panics.

mod common;

use common::workload;
use std::collections::BTreeMap;
use std::time::Duration;
use tandem::aggregate::{Body, MetricValue};
use tandem::{Handle, Layer, Options, Query, Question};

fn config_text(queue: &str, dead: &str, prefetch: u16) -> String {
    format!(
        r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
{source}prefetch = {prefetch}
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [{{ name = "orders", agg = "count" }}, {{ name = "revenue", agg = "sum", field = "amount" }}]
"#,
        source = common::rabbitmq_source(queue, dead)
    )
}

/// Every product's (orders, revenue in cents) as tandem answers, from `layer`.
async fn answers(
    handle: &Handle,
    products: impl Iterator<Item = &String>,
    layer: Layer,
) -> BTreeMap<String, (u64, i64)> {
    let mut out = BTreeMap::new();
    for product in products {
        let query = Query {
            layer,
            ..Query::new("by_product", Question::Key(product.clone()))
        };
        let answer = handle.query(query).await.expect("query");
        let Body::Metrics(metrics) = answer.body else {
            panic!("a key query answers metrics")
        };
        let Some(MetricValue::Int(orders)) = metrics.get("orders") else {
            panic!("orders is a count")
        };
        let revenue = metrics
            .get("revenue")
            .and_then(|value| value.as_f64())
            .unwrap_or_default();
        out.insert(product.clone(), (orders, (revenue * 100.0).round() as i64));
    }
    out
}

/// Deliveries the RabbitMQ source has handled (made durable or dead-lettered).
fn handled(handle: &Handle) -> u64 {
    use std::sync::atomic::Ordering;
    let stats = &handle.sources()[1].stats;
    stats.accepted.load(Ordering::Relaxed)
        + stats
            .rejected
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum::<u64>()
}

#[test]
fn counts_match_the_oracle_and_dead_letters_carry_their_reason() {
    counts_match(500, 3_000, 11);
}

/// With a prefetch window larger than a batch (2,000 deliveries), more
/// deliveries than a batch takes are held while one is in flight: they go
/// in several batches, none lost, none twice.
#[test]
fn a_prefetch_window_larger_than_a_batch_loses_and_repeats_nothing() {
    counts_match(6_000, 12_000, 23);
}

/// `events` generated with `seed`, consumed with `prefetch`: after a batch
/// run, every product equals the oracle in the merged answer and the batch
/// layer, and the dead-letter queue holds each malformed message with its
/// reason.
fn counts_match(prefetch: u16, events: u64, seed: u64) {
    let (events, seed) = (events.to_string(), seed.to_string());
    let jsonl = workload::generate(&[
        "--events",
        &events,
        "--seed",
        &seed,
        "--products",
        "300",
        "--dup-frac",
        "0.03",
        "--bad-frac",
        "0.04",
    ]);
    let lines = workload::lines(&jsonl);
    let expect = common::expected(&lines);
    assert!(expect.dead.len() > 50, "the workload has malformed lines");
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, dead) = (common::unique_queue("orders"), common::unique_queue("dead"));
    let _queues = common::Queues::new(&[&queue, &dead]);
    let config = common::config(&config_text(&queue, &dead, prefetch), dir.path());
    actix::System::new().block_on(async move {
        if !common::broker_available().await {
            return;
        }
        common::publish(&queue, &lines).await;
        let handle = tandem::start(config, Options::manual_epochs())
            .await
            .expect("start");
        let total = lines.len() as u64;
        common::eventually(
            Duration::from_secs(60),
            "every delivery handled",
            async || {
                let seen = handled(&handle);
                if seen >= total { Ok(()) } else { Err(seen) }
            },
        )
        .await;
        handle.recompute_now().await.expect("batch run");

        assert_eq!(
            answers(&handle, expect.products.keys(), Layer::Merged).await,
            expect.products
        );
        assert_eq!(
            answers(&handle, expect.products.keys(), Layer::Batch).await,
            expect.products,
            "the batch layer alone is complete"
        );

        common::assert_dead_lettered_once(&dead, &expect).await;
        assert_eq!(handled(&handle), total, "no delivery handled twice");
        handle.stop().await;
    });
}

#[test]
fn a_restart_in_the_middle_of_the_stream_loses_nothing_and_counts_nothing_twice() {
    let jsonl = workload::generate(&[
        "--events",
        "6000",
        "--seed",
        "12",
        "--products",
        "200",
        "--dup-frac",
        "0.02",
        "--bad-frac",
        "0.02",
    ]);
    let lines = workload::lines(&jsonl);
    let expect = common::expected(&lines);
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, dead) = (common::unique_queue("orders"), common::unique_queue("dead"));
    let text = config_text(&queue, &dead, 500);
    let _queues = common::Queues::new(&[&queue, &dead]);

    let first = common::config(&text, dir.path());
    let published = actix::System::new().block_on(async {
        if !common::broker_available().await {
            return false;
        }
        common::publish(&queue, &lines).await;
        let handle = tandem::start(first, Options::manual_epochs())
            .await
            .expect("start");
        // Seal an epoch on the way, so the restart has a sealed position to recover.
        common::eventually(
            Duration::from_secs(60),
            "a first part handled",
            async || {
                let seen = handled(&handle);
                if seen >= 1_000 { Ok(()) } else { Err(seen) }
            },
        )
        .await;
        handle.recompute_now().await.expect("batch run");
        common::eventually(
            Duration::from_secs(60),
            "a second part handled",
            async || {
                let seen = handled(&handle);
                if seen >= 2_500 { Ok(()) } else { Err(seen) }
            },
        )
        .await;
        // Stop mid-stream: deliveries in flight are neither durable nor acked, or
        // durable and not acked; the broker sends both kinds again.
        handle.stop().await;
        true
    });
    if !published {
        return;
    }

    let second = common::config(&text, dir.path());
    actix::System::new().block_on(async move {
        let handle = tandem::start(second, Options::manual_epochs())
            .await
            .expect("restart");
        assert!(
            handle.startup().records.0 >= 1_000,
            "the first run's records are recovered"
        );
        common::drained(&queue, Duration::from_secs(60)).await;
        // Deliveries still unacked become durable within a batch; poll batch runs
        // until the batch layer is complete, then require it to be exact.
        let products: Vec<String> = expect.products.keys().cloned().collect();
        let total: u64 = expect.products.values().map(|(orders, _)| orders).sum();
        common::eventually(
            Duration::from_secs(60),
            "every order in the batch layer",
            async || {
                handle.recompute_now().await.expect("batch run");
                let batch = handle.batch().await.expect("batch");
                if batch.stats.counted >= total {
                    Ok(())
                } else {
                    Err(batch.stats.counted)
                }
            },
        )
        .await;
        assert_eq!(
            answers(&handle, products.iter(), Layer::Batch).await,
            expect.products,
            "nothing lost, nothing twice"
        );
        assert_eq!(
            answers(&handle, products.iter(), Layer::Merged).await,
            expect.products
        );
        handle.stop().await;
    });
}

/// A bug that panics the acknowledger of the source's session, once the
/// speed layer has the batch, fails that session at once, though nothing
/// else would tell (one delivery fills the prefetch window, and no barrier
/// comes for an hour); the session the supervisor starts next takes the
/// stream on: before any batch run, the speed layer holds every order
/// once, and each malformed message is dead-lettered once.
#[test]
fn an_acknowledger_that_panics_costs_its_session_and_nothing_else() {
    acknowledger_panics(1, 600, 50);
}

/// As above with a prefetch window of three batches: the batches sent
/// behind the one whose settling panicked, when there are any (more than a
/// batch's worth of deliveries held while it was in flight), still reach
/// the speed layer (unacked; their redeliveries are repeats), and their dead
/// letters are acked once confirmed.
#[test]
fn batches_behind_an_acknowledgers_panic_still_reach_the_speed_layer() {
    acknowledger_panics(6_000, 12_000, 2);
}

/// `events` through a source of `prefetch` whose acknowledger panics the
/// `nth` time it has a batch in the speed layer.
fn acknowledger_panics(prefetch: u16, events: u64, nth: u32) {
    let Some(case) = common::broker_case("panicked", "1h") else {
        return;
    };
    let jsonl = workload::dirty(events, 17, 40, &[]);
    let lines = workload::lines(&jsonl);
    let expect = common::expected(&lines);
    case.runtime.block_on(common::publish(&case.queue, &lines));
    let source_end = format!("dead_letter_queue = \"{}\"\n", case.dead);
    let config = case
        .config
        .replace(&source_end, &format!("{source_end}prefetch = {prefetch}\n"));
    assert_ne!(config, case.config, "the source's prefetch is set");
    let panic_at = format!("rabbitmq.acknowledger:{nth}");
    let mut daemon =
        common::Daemon::start(&config, case.dir.path(), &[("TANDEM_PANIC_AT", &panic_at)]);
    case.runtime
        .block_on(common::drained(&case.queue, Duration::from_secs(60)));
    common::assert_speed_layer_holds(&daemon, &expect);
    let source = common::source_entry(&daemon.status(), "orders");
    assert_eq!(source["restarts"], 1, "{source}");
    let logs = daemon.logs();
    assert!(
        logs.contains(
            "the session's acknowledger panicked: panic point rabbitmq.acknowledger reached"
        ),
        "{logs}"
    );
    // Every dead letter published, then a stop that settles what is in
    // flight: a copy dead-lettered late would be in the queue too.
    case.runtime.block_on(common::dead_letters_published(
        &case.dead,
        expect.dead.len(),
    ));
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.logs());
    case.runtime
        .block_on(common::assert_dead_lettered_once(&case.dead, &expect));
}
