//! kill -9 under load, at the moments that matter: half a group commit on
//! disk, an epoch sealed and nobody told, a batch run half done, a snapshot
//! half written, and a plain SIGKILL from outside. After a restart (and the
//! redelivery of everything unacknowledged) and a recompute, every product
//! equals an oracle computed here from the stream: zero lost, zero counted
//! twice; every malformed message is in the dead-letter queue; and `tandem
//! inspect` finds the data_dir sound.

mod common;

use common::Daemon;
use std::time::{Duration, Instant};

/// The first seal comes a second after the start (batch.interval = 1s), so
/// the crashes that follow a seal get a stream that outlasts it.
fn workload(events: u32) -> Vec<u8> {
    common::workload::dirty(u64::from(events), 41, 80, &[])
}

/// Whole records in the master dataset when the daemon died (a torn tail is
/// not counted). Acks may not have reached the broker yet, so the queue alone
/// does not tell whether any of the stream was written.
fn written_records(data: &std::path::Path) -> u64 {
    let paths = tandem::store::DataPaths::new(data);
    tandem::store::list_segments(&paths)
        .expect("list segments")
        .iter()
        .map(|segment| {
            tandem::store::scan_segment(segment, None, |_, _| {})
                .expect("scan segment")
                .records
        })
        .sum()
}

/// Starts a daemon on a backlog of a stream of `events`, lets it die (at the
/// armed crash point, or by SIGKILL once it has handled `kill_after`), starts
/// it again and checks the outcome against the oracle.
async fn crash_and_recover(events: u32, crash_at: Option<&str>, kill_after: u64) {
    if !common::broker_available().await {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = common::unique_queue("crash");
    let dead = format!("{queue}.dead");
    let _queues = common::Queues::new(&[&queue, &dead]);
    let jsonl = workload(events);
    let lines = common::workload::lines(&jsonl);
    let expect = common::expected(&lines);
    common::publish(&queue, &lines).await;
    let config = common::orders_config(&common::rabbitmq_source(&queue, &dead), "1s");

    let mut first = match crash_at {
        Some(point) => {
            let mut daemon = Daemon::spawn(&config, dir.path(), &[("TANDEM_CRASH_AT", point)]);
            let status = daemon.wait_exit(Duration::from_secs(120));
            assert!(!status.success(), "{status}");
            let name = point.split(':').next().unwrap_or(point);
            assert!(
                daemon
                    .logs()
                    .contains(&format!("crash point {name} reached")),
                "{point} was not reached:\n{}",
                daemon.logs()
            );
            daemon
        }
        None => {
            let mut daemon = Daemon::start(&config, dir.path(), &[]);
            daemon.wait_handled(None, kill_after);
            daemon.kill();
            daemon
        }
    };
    first.child.wait().ok();
    let left = common::ready_count(&queue).await;
    let written = written_records(&dir.path().join("data"));
    assert!(
        left > 0 && written > 0,
        "the crash came mid-stream, after some records were written: {left} of {} messages left, {written} records on disk",
        lines.len()
    );

    let started = Instant::now();
    let daemon = Daemon::start(&config, dir.path(), &[]);
    let restart = started.elapsed();
    common::drained(&queue, Duration::from_secs(120)).await;
    common::assert_every_product(&daemon, &expect);
    common::assert_dead_letters(&dead, &expect).await;
    let leftovers: Vec<_> = ["data/snapshots", "data/cache", "data/ids"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.path().join(sub)).expect(sub))
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written files left: {leftovers:?}"
    );
    drop(daemon);
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["inspect", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .expect("tandem inspect");
    let report = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{report}");
    println!(
        "crash at {}: {} of {} messages left in the queue, {} records on disk, restart to ready {} ms, lost 0, counted twice 0",
        crash_at.unwrap_or("SIGKILL"),
        left,
        lines.len(),
        written,
        restart.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_group_commit() {
    // A busy source holds its deliveries while its batch before is on its
    // way to the ack, up to 2,000 (its prefetch window) a batch: the 30,000
    // messages make at least 15 commits, and the 10th comes mid-stream. The
    // batch it writes was not acked, so it comes back.
    crash_and_recover(30_000, Some("commit.mid_write:10"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_a_seal() {
    crash_and_recover(60_000, Some("seal.after:1"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_recompute() {
    crash_and_recover(60_000, Some("recompute.mid_run:1"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_snapshot_write() {
    crash_and_recover(60_000, Some("snapshot.mid_write:1"), 0).await;
}

/// The second cache file of the first batch run (the first is the id file),
/// half written under its temporary name: a view's file, which with one
/// source names the snapshot just written (the states are in it) rather
/// than holding them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_cache_write() {
    crash_and_recover(60_000, Some("cache.mid_write:2"), 0).await;
}

/// The first batch run's id level written and fsynced under its temporary
/// name, not renamed: no snapshot names it yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_an_id_level_is_renamed() {
    crash_and_recover(60_000, Some("ids.before_rename:1"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_from_outside_under_load() {
    crash_and_recover(15_000, None, 6000).await;
}
