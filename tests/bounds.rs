//! Memory and waits that stay bounded: a batch run never builds the buckets
//! retention drops, and `recompute?wait=true` gives up after its `timeout`
//! with a 504 (and, answered, is already what the next query reads). (The speed layer's retention and the dropping of keys whose
//! buckets all expired are unit tests in `src/actors/speed.rs` and
//! `src/aggregate/view.rs`; a failing batch run's visibility is in
//! `tests/corrupt.rs`.)

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tandem::{Options, Query, Question};

const CONFIG: &str = r#"
data_dir = "unused"
[event]
id = "id"
time = "ts"
[[view]]
name = "by_key"
key = ["k"]
bucket = "1m"
retention = "2h"
metrics = [{ name = "n", agg = "count" }]
"#;

const MINUTE: i64 = 60_000;

/// One event every 7 minutes over the last 46 hours, on 60 keys, none within
/// 10 minutes of the retention cutoff (so the run's clock cannot move one
/// across it).
fn events(now: i64) -> Vec<(String, i64)> {
    let cutoff = now - 120 * MINUTE;
    (0..400)
        .map(|i| (format!("k{}", i % 60), now - i * 7 * MINUTE))
        .filter(|(_, ts)| (ts - cutoff).abs() > 10 * MINUTE)
        .collect()
}

/// A batch run over 46 hours of events with a 2-hour retention holds only the
/// groups of the last 2 hours, and says how many it never built.
#[test]
fn a_batch_run_builds_only_the_buckets_within_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    actix::System::new().block_on(async move {
        let options = Options::manual_epochs();
        let handle = tandem::start(config, options).await.expect("start");
        let now = tandem::now_ms();
        let events = events(now);
        let messages: Vec<Vec<u8>> = events
            .iter()
            .enumerate()
            .map(|(i, (key, ts))| format!(r#"{{"id":{i},"k":"{key}","ts":{ts}}}"#).into_bytes())
            .collect();
        let outcome = handle.ingest_many(messages).await.expect("ingest");
        assert_eq!(outcome.accepted, events.len());
        handle.recompute_now().await.expect("batch run");

        let cutoff = now - 120 * MINUTE;
        let kept: Vec<&(String, i64)> = events.iter().filter(|(_, ts)| *ts > cutoff).collect();
        let groups: BTreeSet<(&str, i64)> = kept
            .iter()
            .map(|(key, ts)| (key.as_str(), ts - ts.rem_euclid(MINUTE)))
            .collect();
        let keys: BTreeSet<&str> = kept.iter().map(|(key, _)| key.as_str()).collect();
        assert!(kept.len() > 10 && kept.len() < events.len() / 10);

        let batch = handle.batch().await.expect("batch");
        assert_eq!(batch.views[0].len(), groups.len(), "groups held");
        assert_eq!(batch.views[0].key_count(), keys.len(), "keys held");
        assert_eq!(
            batch.stats.expired,
            (events.len() - kept.len()) as u64,
            "events past retention are never applied"
        );
        assert_eq!(batch.stats.counted, events.len() as u64);

        // And the answer is the retained events.
        let answer = handle
            .query(Query::new("by_key", Question::Totals))
            .await
            .expect("totals");
        let tandem::aggregate::Body::Metrics(metrics) = answer.body else {
            panic!("totals are metrics")
        };
        assert_eq!(
            metrics.get("n").and_then(|value| value.as_f64()),
            Some(kept.len() as f64)
        );
        handle.stop().await;
    });
}

/// Once a wait for a batch run is answered (`recompute_now`, as
/// `recompute?wait=true`), the next query already reads the new snapshot:
/// queries read the served snapshot in place, so the wait ends only after
/// Serving swapped it in, not when the swap was sent.
#[test]
fn a_query_after_a_waited_batch_run_reads_its_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    actix::System::new().block_on(async move {
        let handle = Arc::new(
            tandem::start(config, Options::manual_epochs())
                .await
                .expect("start"),
        );
        // Waited for and queried from another thread, as an HTTP worker
        // does, while this one runs the actors.
        let client = Arc::clone(&handle);
        let rounds = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let now = tandem::now_ms();
                for round in 0..40u64 {
                    let event = format!(r#"{{"id":{round},"k":"k{round}","ts":{now}}}"#);
                    let outcome = client
                        .ingest_many(vec![event.into_bytes()])
                        .await
                        .expect("ingest");
                    assert_eq!(outcome.accepted, 1);
                    let covered = client.recompute_now().await.expect("batch run");
                    let mut query = Query::new("by_key", Question::Totals);
                    query.layer = tandem::Layer::Batch;
                    let answer = client.query(query).await.expect("totals");
                    assert_eq!(answer.as_of.batch_epoch, Some(covered), "round {round}");
                    let tandem::aggregate::Body::Metrics(metrics) = answer.body else {
                        panic!("totals are metrics")
                    };
                    assert_eq!(
                        metrics.get("n").and_then(|value| value.as_f64()),
                        Some((round + 1) as f64),
                        "round {round}: the batch layer holds every event so far"
                    );
                }
            })
        });
        rounds.await.expect("the rounds");
        if let Ok(handle) = Arc::try_unwrap(handle) {
            handle.stop().await;
        }
    });
}

/// A POST from a blocking thread (the server runs on this one); answers
/// the status and the body.
async fn post(url: String) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || common::http("POST", &url, None))
        .await
        .expect("the request thread")
}

/// `recompute?wait=true&timeout=..` answers 504 when no snapshot covers the
/// new epoch in time (here a feed holds the epoch open, so it cannot seal),
/// and 200 once one does; a bad timeout is a 400.
#[test]
fn recompute_wait_gives_up_after_its_timeout_with_504() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config(CONFIG, dir.path());
    actix::System::new().block_on(async move {
        let options = Options::manual_epochs();
        let handle = Arc::new(tandem::start(config, options).await.expect("start"));
        let port = common::free_port();
        let state = tandem::http::ApiState {
            handle: Arc::clone(&handle),
            tokens: tandem::http::Tokens::open(),
            ready: Arc::new(AtomicBool::new(true)),
        };
        let server = tandem::http::serve(state, ([127, 0, 0, 1], port).into()).expect("serve");
        let server_handle = server.handle();
        actix::spawn(server);
        let url = |query: &str| format!("http://127.0.0.1:{port}/v1/recompute?{query}");

        let feed = handle.feed(0).expect("feed 0");
        let hold = feed.hold_epoch();
        let now = tandem::now_ms();
        let outcome = feed
            .push(vec![
                format!(r#"{{"id":1,"k":"a","ts":{now}}}"#).into_bytes(),
            ])
            .await
            .expect("push");
        assert_eq!(outcome.accepted, 1);

        let (code, body) = post(url("wait=true&timeout=1s")).await;
        assert_eq!(code, 504, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("within 1s"), "{error}");

        for (query, problem) in [
            ("wait=true&timeout=soon", "not a duration"),
            ("wait=true&timeout=0s", "out of range"),
            ("wait=true&timeout=2h", "out of range"),
            ("timeout=1s", "only with wait=true"),
        ] {
            let (code, body) = post(url(query)).await;
            assert_eq!(code, 400, "{query}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(problem), "{query}: {error}");
        }

        drop(hold);
        let (code, body) = post(url("wait=true&timeout=30s")).await;
        assert_eq!(code, 200, "{body}");
        assert!(body["batch_epoch"].as_u64().is_some(), "{body}");
        server_handle.stop(true).await;
        handle.shutdown().await;
    });
}
