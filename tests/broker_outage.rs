//! The broker goes away: `rabbitmqctl stop_app` for 10 s while tandem runs,
//! a broker that is down when tandem starts, and the broker closing the
//! source's connection twenty times in a minute under load. tandem stays up and ready,
//! answers queries, says the source is disconnected (and why) in /v1/status
//! and /metrics, reconnects by itself, and after the stream ends and a
//! recompute every product equals the oracle.
//!
//! These tests stop the shared broker, so they live in a test target of their
//! own (cargo runs test targets one after another) and take turns here.

mod common;

use common::Daemon;
use common::faults::{Outage, Producer, connection_pid, rabbitmqctl};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One outage at a time.
static BROKER: Mutex<()> = Mutex::new(());

fn workload() -> (Vec<u8>, Vec<u8>) {
    (
        common::workload::dirty(4000, 51, 60, &[]),
        common::workload::dirty(4000, 52, 60, &[]),
    )
}

/// The source's entry in /v1/status, once `connected` is as wanted.
fn source_once(daemon: &mut Daemon, connected: bool) -> serde_json::Value {
    let what = format!("the source reports connected={connected}");
    daemon.until(Duration::from_secs(60), &what, |daemon| {
        let source = common::source_entry(&daemon.status(), "orders");
        let metric = common::scrape(&daemon.base, "tandem_source_connected{source=\"orders\"}");
        if source["connected"] == connected && metric == Some(f64::from(u8::from(connected))) {
            Ok(source)
        } else {
            Err(source)
        }
    })
}

/// The source reports itself disconnected, then (once an attempt has
/// failed) the reason.
fn disconnected_with_reason(daemon: &mut Daemon) {
    source_once(daemon, false);
    daemon.until(
        Duration::from_secs(60),
        "the source gives the reason it is not connected",
        |daemon| {
            let source = common::source_entry(&daemon.status(), "orders");
            let reason = source["last_error"].as_str().is_some_and(|e| !e.is_empty());
            if source["connected"] == false && reason {
                Ok(())
            } else {
                Err(source)
            }
        },
    );
}

/// For `span` (the outage), the daemon keeps answering: ready, and a query.
fn keeps_answering(daemon: &Daemon, span: Duration) {
    let answers = common::holds_for(span, || {
        let (ready, _) = common::http("GET", &format!("{}/readyz", daemon.base), None);
        assert_eq!(ready, 200, "not ready while the broker is away");
        let (code, body) = common::http(
            "GET",
            &format!("{}/v1/views/by_product/totals", daemon.base),
            None,
        );
        assert_eq!(code, 200, "{body}");
    });
    assert!(answers > 10, "only {answers} answers in {span:?}");
}

#[test]
fn a_broker_restart_costs_nothing() {
    let _turn = BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(case) = common::broker_case("outage", "1s") else {
        return;
    };
    let (first, second) = workload();
    let (first, second) = (
        common::workload::lines(&first),
        common::workload::lines(&second),
    );
    let mut daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    case.runtime.block_on(common::publish(&case.queue, &first));
    daemon.wait_handled(None, first.len() as u64);

    let outage = Outage::begin();
    disconnected_with_reason(&mut daemon);
    keeps_answering(&daemon, Duration::from_secs(10));
    outage.end();
    let back = Instant::now();
    source_once(&mut daemon, true);
    let reconnect = back.elapsed();

    case.runtime.block_on(common::publish(&case.queue, &second));
    let all: Vec<&[u8]> = first.iter().chain(&second).copied().collect();
    daemon.wait_handled(None, all.len() as u64);
    common::assert_every_product(&daemon, &common::expected(&all));
    println!(
        "broker restart: reconnected {} ms after the broker was back; lost 0, counted twice 0",
        reconnect.as_millis()
    );
}

#[test]
fn a_broker_down_at_start_is_waited_for() {
    let _turn = BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(case) = common::broker_case("outage-start", "1s") else {
        return;
    };
    let (jsonl, _) = workload();
    let lines = common::workload::lines(&jsonl);

    let outage = Outage::begin();
    let mut daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    disconnected_with_reason(&mut daemon);
    keeps_answering(&daemon, Duration::from_secs(3));
    outage.end();
    source_once(&mut daemon, true);
    case.runtime.block_on(common::publish(&case.queue, &lines));
    daemon.wait_handled(None, lines.len() as u64);
    common::assert_every_product(&daemon, &common::expected(&lines));
}

#[test]
fn the_broker_closing_the_sources_connection_twenty_times_in_a_minute_costs_nothing() {
    let _turn = BROKER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // No batch run until the test asks for one: until then every answer is
    // the speed layer's, which must hold each acked message exactly once
    // across the restarts too.
    let Some(case) = common::broker_case("closed", "1h") else {
        return;
    };
    let jsonl = common::workload::dirty(30_000, 53, 80, &[]);
    let lines: Vec<Vec<u8>> = common::workload::lines(&jsonl)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    // Under load: a producer publishes at 400 events/s all along.
    let producer = Producer::start(case.queue.clone(), std::sync::Arc::new(lines.clone()), 400);
    let name = format!("tandem source of {}", case.queue);
    let started = Instant::now();
    for closed in 1..=20u64 {
        let pid = common::poll_until(Duration::from_secs(30), "the source's connection", || {
            connection_pid(&name).ok_or("not listed")
        });
        rabbitmqctl(&["close_connection", &pid, "closed by the test"]);
        common::poll_until(Duration::from_secs(30), "the source reconnected", || {
            let source = common::source_entry(&daemon.status(), "orders");
            if source["disconnects"].as_u64() >= Some(closed) && source["connected"] == true {
                Ok(())
            } else {
                Err(source)
            }
        });
        // Spread over the minute: a timer (each close was synchronised on
        // above, by the disconnect it caused).
        let due = Duration::from_secs(3 * closed);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    let closing = started.elapsed();
    let published = producer.finish();
    let sent: Vec<&[u8]> = lines[..published].iter().map(Vec::as_slice).collect();
    let expect = common::expected(&sent);
    case.runtime
        .block_on(common::drained(&case.queue, Duration::from_secs(120)));
    // The batches in flight when a connection closed reached the speed layer
    // (their redeliveries are repeats of ids in the log): before any batch
    // run, the speed layer alone holds every product exactly.
    common::assert_speed_layer_holds(&daemon, &expect);
    common::assert_every_product(&daemon, &expect);
    case.runtime
        .block_on(common::assert_dead_letters(&case.dead, &expect));
    let source = common::source_entry(&daemon.status(), "orders");
    assert_eq!(source["disconnects"], 20, "{source}");
    assert_eq!(source["restarts"], 20, "{source}");
    for counter in ["disconnects", "restarts"] {
        assert_eq!(
            common::scrape(
                &daemon.base,
                &format!("tandem_source_{counter}_total{{source=\"orders\"}}")
            ),
            Some(20.0),
            "{counter}"
        );
    }
    println!(
        "20 connections closed by the broker in {} s under load: {published} messages, lost 0, counted twice 0",
        closing.as_secs()
    );
}
