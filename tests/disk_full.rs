//! A full disk: the data_dir is a small tmpfs the test mounts and fills. The
//! recorder stops acknowledging (the messages stay in RabbitMQ), the daemon
//! says why in its logs, /v1/status and /metrics, keeps answering queries,
//! and resumes by itself once space returns, with nothing lost and nothing
//! counted twice.

mod common;

use common::Daemon;
use common::faults::SmallDisk;
use std::time::{Duration, Instant};

fn field<'a>(status: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(status, |value, key| &value[*key])
}

/// A broker case whose data_dir is a small tmpfs, and a dirty stream of
/// `events` in two halves (seeds `seed` and `seed + 1`): one published
/// before the disk fills, one while it is full.
struct FullDisk {
    // Unmounted before the case's directory is removed.
    disk: SmallDisk,
    case: common::BrokerCase,
    before: Vec<u8>,
    during: Vec<u8>,
}

impl FullDisk {
    fn new(prefix: &str, events: u64, seed: u64) -> Option<FullDisk> {
        let case = common::broker_case(prefix, "1s")?;
        let disk = SmallDisk::mount(&case.dir.path().join("data"), 16)?;
        Some(FullDisk {
            disk,
            case,
            before: common::workload::dirty(events, seed, 50, &[]),
            during: common::workload::dirty(events, seed + 1, 50, &[]),
        })
    }

    /// The two halves' messages.
    fn halves(&self) -> (Vec<&[u8]>, Vec<&[u8]>) {
        (
            common::workload::lines(&self.before),
            common::workload::lines(&self.during),
        )
    }
}

#[test]
fn a_full_disk_stops_acks_and_space_coming_back_resumes_them() {
    let Some(setup) = FullDisk::new("disk-full", 3000, 61) else {
        return;
    };
    let (case, disk) = (&setup.case, &setup.disk);
    let (runtime, queue, dead) = (&case.runtime, &case.queue, &case.dead);
    let (before, during) = setup.halves();
    let all: Vec<&[u8]> = before.iter().chain(&during).copied().collect();
    let expect = common::expected(&all);
    let valid = |lines: &[&[u8]]| (lines.len() - common::expected(lines).dead.len()) as u64;

    let daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    runtime.block_on(common::publish(queue, &before));
    daemon.wait_handled(None, before.len() as u64);
    let (code, _) = common::http(
        "POST",
        &format!("{}/v1/recompute?wait=true", daemon.base),
        None,
    );
    assert_eq!(code, 200);
    let durable_before = daemon.status()["events_accepted"].as_u64().unwrap_or(0);
    assert_eq!(durable_before, valid(&before));

    let orders_before: u64 = common::expected(&before)
        .products
        .values()
        .map(|(orders, _)| orders)
        .sum();
    let segment = disk.0.join("master/segment-0000000000.log");
    let segment_len = || std::fs::metadata(&segment).map_or(0, |meta| meta.len());
    let ballast = disk.fill();
    // Only the rest of the log's last allocated page can still take records.
    let page_end = segment_len().div_ceil(4096) * 4096;
    let full_at = Instant::now();
    runtime.block_on(common::publish(queue, &during));
    // The recorder says why, in status and metrics.
    let error = common::poll_until(
        Duration::from_secs(60),
        "the store reports the full disk",
        || {
            let status = daemon.status();
            let error = field(&status, &["store", "error"])
                .as_str()
                .unwrap_or("")
                .to_owned();
            let said = field(&status, &["store", "writable"]) == false
                && error.contains("No space left on device")
                && common::scrape(&daemon.base, "tandem_store_writable") == Some(0.0)
                && common::scrape(&daemon.base, "tandem_store_write_failures_total")
                    .is_some_and(|n| n >= 1.0);
            if said { Ok(error) } else { Err(status) }
        },
    );
    assert!(
        daemon.logs().contains("group commit failed"),
        "{}",
        daemon.logs()
    );
    // Nothing more is acknowledged while the source retries (two more failed
    // commits), yet queries are answered meanwhile.
    let failures = |daemon: &Daemon| {
        field(&daemon.status(), &["store", "write_failures"])
            .as_u64()
            .unwrap_or(0)
    };
    let retried_from = failures(&daemon);
    common::poll_until(Duration::from_secs(60), "two more failed retries", || {
        assert!(segment_len() <= page_end, "the log grew past the full disk");
        let (code, body) = common::http(
            "GET",
            &format!("{}/v1/views/by_product/totals", daemon.base),
            None,
        );
        assert_eq!(code, 200, "{body}");
        assert!(common::orders(&body) >= orders_before, "{body}");
        let failed = failures(&daemon);
        if failed >= retried_from + 2 {
            Ok(())
        } else {
            Err(failed)
        }
    });
    let unacked = runtime.block_on(common::ready_count(queue));
    println!("disk full: store error {error:?}; {unacked} messages ready in the queue");

    std::fs::remove_file(&ballast).expect("remove ballast");
    let freed_at = Instant::now();
    let want = valid(&all);
    common::poll_until(
        Duration::from_secs(60),
        "writes resume once space returns",
        || {
            let status = daemon.status();
            let durable = status["events_accepted"].as_u64().unwrap_or(0);
            if durable >= want && field(&status, &["store", "writable"]) == true {
                Ok(())
            } else {
                Err(status)
            }
        },
    );
    let resumed = freed_at.elapsed();
    assert_eq!(
        common::scrape(&daemon.base, "tandem_store_writable"),
        Some(1.0)
    );
    common::assert_every_product(&daemon, &expect);
    // Each malformed message was dead-lettered and counted once, however many
    // times the valid ones around it came back.
    let rejected: u64 = daemon.status()["events_rejected"]
        .as_object()
        .map_or(0, |reasons| {
            reasons.values().filter_map(|n| n.as_u64()).sum()
        });
    assert_eq!(rejected, expect.dead.len() as u64);
    let letters = runtime.block_on(common::drain(dead));
    assert_eq!(letters.len(), expect.dead.len(), "dead letters");
    println!(
        "disk full for {} ms; all written {} ms after space returned; lost 0, counted twice 0",
        freed_at.duration_since(full_at).as_millis(),
        resumed.as_millis()
    );
    drop(daemon);
}

/// SIGTERM while the disk is full: the daemon stops and exits 0 without
/// acknowledging what it could not write, and after a restart with room on
/// the disk every message counts once.
#[test]
fn sigterm_on_a_full_disk_stops_and_a_restart_loses_nothing() {
    let Some(setup) = FullDisk::new("disk-full-stop", 2000, 71) else {
        return;
    };
    let (case, disk) = (&setup.case, &setup.disk);
    let (runtime, queue, dead) = (&case.runtime, &case.queue, &case.dead);
    let (before, during) = setup.halves();
    let all: Vec<&[u8]> = before.iter().chain(&during).copied().collect();
    let expect = common::expected(&all);

    let mut daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    runtime.block_on(common::publish(queue, &before));
    daemon.wait_handled(None, before.len() as u64);
    let ballast = disk.fill();
    runtime.block_on(common::publish(queue, &during));
    common::poll_until(
        Duration::from_secs(60),
        "the store reports the full disk",
        || {
            let status = daemon.status();
            if field(&status, &["store", "writable"]) == false {
                Ok(())
            } else {
                Err(status)
            }
        },
    );
    let (code, took) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.logs());
    drop(daemon);

    std::fs::remove_file(&ballast).expect("remove ballast");
    let daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    common::assert_every_product(&daemon, &expect);
    // A malformed message in the batch the stop left unacknowledged comes
    // back and is dead-lettered again: at least once each.
    let letters = runtime.block_on(common::drain(dead));
    assert!(
        letters.len() >= expect.dead.len(),
        "{} dead letters for {} malformed messages",
        letters.len(),
        expect.dead.len()
    );
    println!(
        "SIGTERM on a full disk: exited in {} ms; after the restart lost 0, counted twice 0",
        took.as_millis()
    );
    drop(daemon);
}
