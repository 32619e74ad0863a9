//! Restart is invisible to readers: after a restart every query answers what
//! it answered before (snapshot loaded, records after it replayed into the
//! speed layer), epochs keep rising, and a lost or damaged snapshot changes
//! nothing a reader sees.

mod common;

use tandem::aggregate::Body;
use tandem::store::DataPaths;
use tandem::{Options, Query, Question};

const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "order_id"
time = "ts"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  { name = "orders", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "buyers", agg = "distinct", field = "user_id" },
  { name = "p95", agg = "quantile", field = "amount", q = 0.95 },
]
[[view]]
name = "by_country"
key = ["country"]
bucket = "1h"
metrics = [{ name = "orders", agg = "count" }, { name = "revenue", agg = "sum", field = "amount" }]
"#;

fn questions() -> Vec<Query> {
    vec![
        Query::new("by_product", Question::Totals),
        Query::new(
            "by_product",
            Question::Top {
                metric: "revenue".into(),
                n: 20,
            },
        ),
        Query::new("by_product", Question::Series(None)),
        Query::new(
            "by_country",
            Question::Top {
                metric: "orders".into(),
                n: 12,
            },
        ),
        Query::new("by_country", Question::Series(Some("DE".into()))),
    ]
}

async fn read_all(handle: &tandem::Handle) -> Vec<Body> {
    let mut out = Vec::new();
    for query in questions() {
        out.push(handle.query(query).await.expect("query").body);
    }
    out
}

/// Ingests lines, with a batch run after the first `recompute_after` and a
/// sealed-but-not-recomputed epoch after that; answers what readers see.
fn first_run(dir: &std::path::Path, lines: &[&[u8]], recompute_after: usize) -> (Vec<Body>, u64) {
    let config = common::config(CONFIG, dir);
    actix::System::new().block_on(async move {
        let handle = tandem::start(
            config,
            Options {
                epoch_timer: false,
                ..Options::default()
            },
        )
        .await
        .expect("start");
        for (i, line) in lines.iter().enumerate() {
            handle.ingest(line.to_vec()).await.expect("ingest");
            if i + 1 == recompute_after {
                handle.recompute_now().await.expect("batch run");
            }
            if i + 1 == recompute_after + 100 {
                handle.start_epoch().await.expect("epoch");
            }
        }
        let seen = read_all(&handle).await;
        let epoch = handle.runs().await.expect("runs").epoch.0;
        handle.stop().await;
        (seen, epoch)
    })
}

fn second_run(dir: &std::path::Path) -> (Vec<Body>, tandem::actors::Startup) {
    let config = common::config(CONFIG, dir);
    actix::System::new().block_on(async move {
        let handle = tandem::start(
            config,
            Options {
                epoch_timer: false,
                ..Options::default()
            },
        )
        .await
        .expect("restart");
        let seen = read_all(&handle).await;
        let startup = handle.startup();
        handle.stop().await;
        (seen, startup)
    })
}

fn workload() -> Vec<u8> {
    common::workload::generate(&[
        "--events",
        "1500",
        "--seed",
        "5",
        "--products",
        "50",
        "--dup-frac",
        "0.02",
    ])
}

#[test]
fn readers_see_what_they_saw_before() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, epoch_before) = first_run(dir.path(), &lines, 600);
    let (after, startup) = second_run(dir.path());
    assert_eq!(after, before);
    assert!(startup.snapshot.is_some(), "the snapshot is loaded");
    assert!(
        startup.replayed >= 800,
        "the records after the snapshot are replayed: {}",
        startup.replayed
    );
    assert!(
        startup.epoch.0 >= epoch_before,
        "epochs keep rising: {} then {}",
        epoch_before,
        startup.epoch
    );
}

#[test]
fn a_lost_snapshot_changes_nothing_a_reader_sees() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, _) = first_run(dir.path(), &lines, 700);
    for (_, path) in tandem::store::list_snapshots(&DataPaths::new(dir.path())).expect("list") {
        std::fs::remove_file(path).expect("remove snapshot");
    }
    let (after, startup) = second_run(dir.path());
    assert_eq!(startup.snapshot, None);
    assert_eq!(after, before);
}

#[test]
fn a_damaged_snapshot_is_refused_and_an_older_one_used() {
    let jsonl = workload();
    let lines = common::workload::lines(&jsonl);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let before = actix::System::new().block_on(async move {
        let handle = tandem::start(
            config,
            Options {
                epoch_timer: false,
                ..Options::default()
            },
        )
        .await
        .expect("start");
        for (i, line) in lines.iter().enumerate() {
            handle.ingest(line.to_vec()).await.expect("ingest");
            if i == 500 || i == 1000 {
                handle.recompute_now().await.expect("batch run");
            }
        }
        let seen = read_all(&handle).await;
        handle.stop().await;
        seen
    });
    let snapshots = tandem::store::list_snapshots(&DataPaths::new(dir.path())).expect("list");
    assert_eq!(snapshots.len(), 2);
    let newest = &snapshots[0];
    let mut bytes = std::fs::read(&newest.1).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&newest.1, bytes).expect("damage");
    let (after, startup) = second_run(dir.path());
    assert_eq!(
        startup.snapshot,
        Some(snapshots[1].0),
        "the older snapshot is used"
    );
    assert_eq!(after, before);
}

/// A redelivery whose first copy is under the snapshot was dropped by the
/// speed layer while the daemon ran; replayed after a restart, it is dropped
/// again (the snapshot's id index holds the first copy).
#[test]
fn a_redelivery_across_the_snapshot_is_not_counted_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    let order = br#"{"order_id":"o-x","ts":"2026-11-24T00:00:00Z","product_id":"p-x","amount":5,"user_id":"u-1","country":"DE"}"#;
    let before = actix::System::new().block_on(async move {
        let handle = tandem::start(
            config,
            Options {
                epoch_timer: false,
                ..Options::default()
            },
        )
        .await
        .expect("start");
        let durable = tandem::actors::source::Ingested::Durable;
        assert_eq!(
            handle.ingest(order.to_vec()).await.expect("ingest"),
            durable
        );
        handle.recompute_now().await.expect("batch run");
        // The same order again, in the next epoch: durable, not counted.
        assert_eq!(
            handle.ingest(order.to_vec()).await.expect("ingest"),
            durable
        );
        let seen = read_all(&handle).await;
        handle.stop().await;
        seen
    });
    let (after, startup) = second_run(dir.path());
    assert_eq!(startup.replayed, 1, "the second copy is replayed");
    assert_eq!(after, before);
    // The order counts once, in the batch layer.
    let totals = format!("{:?}", after[0]);
    assert!(totals.contains(r#"("orders", Int(1))"#), "{totals}");
}
