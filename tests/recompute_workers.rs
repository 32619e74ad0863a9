//! The recompute workers on the real binary: a worker that panics in a batch
//! run fails the run by its name, is restarted, and the run is tried again;
//! a run that keeps failing leaves the served snapshot in place, and answers
//! stay exact (the speed layer keeps every epoch the snapshot does not
//! cover) until a run succeeds.
//!
//! The panic comes from the panic point `recompute.worker`, visited each
//! time a worker is handed a batch of records (4,096 at most): the first
//! batch run below reads one batch, and so does the second (it reads from
//! the batch cache's end).

mod common;

use common::{Daemon, assert_products, http, post};
use std::time::Duration;

const HTTP_SOURCE: &str = r#"
[[source]]
name = "push"
type = "http"
"#;

/// Two streams of distinct order ids (with duplicates, malformed lines and
/// late events within each), each under one batch of records.
fn streams() -> (Vec<u8>, Vec<u8>) {
    let stream =
        |seed, id_prefix| common::workload::dirty(2500, seed, 60, &["--id-prefix", id_prefix]);
    (stream(5, "a-"), stream(6, "b-"))
}

fn push(daemon: &Daemon, lines: &[&[u8]]) {
    let (code, body) = post(
        &format!("{}/v1/events", daemon.base),
        None,
        "application/x-ndjson",
        &lines.join(&b"\n"[..]),
    );
    assert_eq!(code, 200, "{body}");
}

/// Pushes the first stream and serves it from a batch run (the first visit
/// of the panic point), with no failure so far.
fn serve_first(daemon: &Daemon, first: &[&[u8]]) {
    push(daemon, first);
    let (code, body) = recompute(daemon);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        common::scrape(&daemon.base, "tandem_recompute_failures_total"),
        Some(0.0)
    );
}

fn recompute(daemon: &Daemon) -> (u16, serde_json::Value) {
    http(
        "POST",
        &format!("{}/v1/recompute?wait=true", daemon.base),
        None,
    )
}

/// A daemon with `TANDEM_PANIC_AT=panic_at` that served the first stream
/// from a batch run and was pushed the second; `test` gets it, the
/// data_dir's parent, the config and the two streams.
fn case(panic_at: &str, test: impl FnOnce(Daemon, &std::path::Path, &str, &[&[u8]], &[&[u8]])) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = streams();
    let (first, second) = (
        common::workload::lines(&first),
        common::workload::lines(&second),
    );
    let config = common::orders_config(HTTP_SOURCE, "1h");
    let daemon = Daemon::start(&config, dir.path(), &[("TANDEM_PANIC_AT", panic_at)]);
    serve_first(&daemon, &first);
    push(&daemon, &second);
    test(daemon, dir.path(), &config, &first, &second);
}

/// The oracle over both streams.
fn both(first: &[&[u8]], second: &[&[u8]]) -> common::Expected {
    let all: Vec<&[u8]> = first.iter().chain(second).copied().collect();
    common::expected(&all)
}

#[test]
fn a_worker_that_panics_fails_the_run_by_name_and_the_run_is_tried_again() {
    case("recompute.worker:2", |daemon, _, _, first, second| {
        // The second run's worker panics; the retry succeeds, and the caller
        // waiting for the snapshot hears of the success only.
        let (code, body) = recompute(&daemon);
        assert_eq!(code, 200, "{body}\n{}", daemon.logs());
        assert_eq!(body["batch_epoch"], 2, "{body}");
        assert_eq!(
            common::scrape(&daemon.base, "tandem_recompute_failures_total"),
            Some(1.0)
        );
        let logs = daemon.logs();
        assert!(
            logs.contains("recompute worker 0 panicked: panic point recompute.worker reached"),
            "{logs}"
        );
        assert!(logs.contains("batch run tried again"), "{logs}");
        let status = daemon.status();
        assert!(status["recompute_error"].is_null(), "{status}");
        assert_eq!(status["recompute_failing"]["runs"], 0, "{status}");

        let expect = both(first, second);
        assert_products(&daemon, &expect, "batch");
        assert_products(&daemon, &expect, "merged");
    });
}

#[test]
fn a_run_that_keeps_failing_leaves_the_served_snapshot_and_exact_answers() {
    case(
        "recompute.worker:2+",
        |mut daemon, dir, config, first, second| {
            // Every try of the second run fails by the worker's name.
            let (code, body) = recompute(&daemon);
            assert_eq!(code, 503, "{body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("recompute worker 0 panicked: panic point recompute.worker reached"),
                "{body}"
            );
            let status = daemon.status();
            assert_eq!(status["batch_epoch"], 1, "{status}");
            assert_eq!(status["recompute_failing"]["runs"], 3, "{status}");
            assert!(
                status["recompute_error"]
                    .as_str()
                    .is_some_and(|error| error.contains("recompute worker 0 panicked")),
                "{status}"
            );

            // The snapshot of epoch 1 is still served, the speed layer holds the
            // rest: the batch layer answers the first stream, merged answers both.
            assert_products(&daemon, &common::expected(first), "batch");
            let expect = both(first, second);
            assert_products(&daemon, &expect, "merged");

            // Without the panic, the run of the sealed epochs succeeds at start.
            daemon.kill();
            let mut daemon = Daemon::start(config, dir, &[]);
            daemon.until(Duration::from_secs(60), "epoch 2 is served", |daemon| {
                let status = daemon.status();
                if status["batch_epoch"].as_u64() >= Some(2) {
                    Ok(())
                } else {
                    Err(status)
                }
            });
            assert_products(&daemon, &expect, "batch");
            assert_products(&daemon, &expect, "merged");
        },
    );
}
