//! tandem under load, through the real broker: a poison flood, a backlog that
//! waits before the start, and a soak. Each prints what it measured (rates,
//! the RSS curve, query latency) for RELIABILITY.md and asserts what a user
//! relies on: exact counts, every bad message dead-lettered with its reason,
//! queries answered all along, memory that does not grow with the stream.
//!
//! They run reduced; `TANDEM_LOAD_FULL=1` runs the sizes the
//! faults call for (200,000 messages, 2,000,000 waiting, 10 minutes), best
//! with `cargo test --release --test load -- --nocapture`. They take turns so
//! that one's load does not skew another's figures.

mod common;

use common::Daemon;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static TURN: Mutex<()> = Mutex::new(());

/// This test's turn: the others wait.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn full() -> bool {
    std::env::var("TANDEM_LOAD_FULL").as_deref() == Ok("1")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(at).copied().unwrap_or(0.0)
}

/// What a sampler saw every `every` while a daemon worked.
#[derive(Default)]
struct Samples {
    /// (seconds since start, RSS MiB, key query ms, speed groups).
    points: Vec<(f64, f64, f64, f64)>,
    /// Queries that did not answer 200.
    failed: Vec<String>,
}

impl Samples {
    fn peak_rss(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }

    fn latencies(&self) -> Vec<f64> {
        self.points.iter().map(|p| p.2).collect()
    }

    /// One line per `stride` samples: the RSS curve.
    fn curve(&self, stride: usize) -> String {
        self.points
            .iter()
            .step_by(stride.max(1))
            .map(|(t, rss, ms, groups)| {
                format!(
                    "  t={t:>6.1}s rss={rss:>7.1} MiB key_query={ms:>6.2} ms speed_groups={groups}"
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Samples RSS, a key query's latency and the speed layer's groups until
/// `stop` is set.
fn sample(daemon: &Daemon, every: Duration, stop: &AtomicBool, key: &str) -> Samples {
    let started = Instant::now();
    let pid = daemon.child.id();
    let mut out = Samples::default();
    let url = format!("{}/v1/views/by_product/keys/{key}", daemon.base);
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let (code, body) = common::http("GET", &url, None);
        let ms = asked.elapsed().as_secs_f64() * 1e3;
        if code != 200 {
            out.failed.push(format!("{code} {body}"));
        }
        let groups = common::scrape(&daemon.base, "tandem_speed_groups").unwrap_or(-1.0);
        let rss = common::rss_kib(pid).0 as f64 / 1024.0;
        out.points
            .push((started.elapsed().as_secs_f64(), rss, ms, groups));
        // The sampling period (a timer, not a wait for a condition).
        std::thread::sleep(every);
    }
    out
}

/// The most messages delivered and not yet acknowledged in `queue`, seen by
/// `rabbitmqctl` until `stop` is set.
fn max_unacked(queue: &str, stop: &AtomicBool) -> u64 {
    let mut most = 0;
    while !stop.load(Ordering::Relaxed) {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_unacknowledged",
            ])
            .output()
            .expect("rabbitmqctl");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            if fields.next() == Some(queue) {
                most = most.max(fields.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            }
        }
    }
    most
}

/// Sets a flag when dropped, so that a sampler stops even when a test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs a daemon on the case's queue, which already holds `total` messages;
/// answers the seconds until all are handled, what the sampler saw meanwhile,
/// the most messages the daemon held unacknowledged, and the daemon.
fn drain(case: &common::BrokerCase, total: u64, key: &str) -> (f64, Samples, u64, Daemon) {
    let started = Instant::now();
    let daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    let stop = AtomicBool::new(false);
    let (elapsed, samples, unacked) = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let sampler = scope.spawn(|| sample(&daemon, Duration::from_millis(100), &stop, key));
        let unacked = scope.spawn(|| max_unacked(&case.queue, &stop));
        daemon.wait_handled_within(None, total, Duration::from_secs(1800));
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        (
            elapsed,
            sampler.join().expect("sampler"),
            unacked.join().expect("unacked"),
        )
    });
    (elapsed, samples, unacked, daemon)
}

/// The `i`th bad message, with the reason it must be dead-lettered with
/// (`event.max_bytes` is the default 64 KiB): mostly small ones of every kind
/// the event rules know, and one in 250 an extreme one (10 MB when `huge`,
/// 70 kB, nesting 20,000 deep).
fn poison(i: usize, huge: bool) -> (Vec<u8>, &'static str) {
    let ts = "2026-11-24T10:00:00.000Z";
    let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
    let kind = if i % 250 == 125 {
        7 + (i / 250) % 4
    } else {
        [0, 1, 2, 3, 4, 5, 6, 11][i % 8]
    };
    match kind {
        0 => (format!("{{\"order_id\":\"bad-{i}\",\"ts\":\"{ts}\",\"amount\":1.5").into_bytes(), "invalid_json"),
        1 => (format!("{{\"order_id\":\"bad-{i}\",\"ts\":\"{ts}\",\"amount\":1.5}}").into_bytes(), "missing_field"),
        2 => (format!("{{\"order_id\":\"bad-{i}\",\"ts\":\"{ts}\",\"product_id\":\"p-1\",\"amount\":\"1.5\"}}").into_bytes(), "wrong_type"),
        3 => (format!("{{\"order_id\":\"bad-{i}\",\"ts\":\"yesterday\",\"product_id\":\"p-1\",\"amount\":1.5}}").into_bytes(), "bad_time"),
        4 => (format!("[{i}, 2, 3]").into_bytes(), "not_an_object"),
        5 => (Vec::new(), "invalid_json"),
        6 => {
            let mut body = format!("{{\"order_id\":\"bad-{i}\",\"ts\":\"{ts}\",\"product_id\":\"p-").into_bytes();
            body.extend_from_slice(b"\xff\xfe\"");
            body.extend_from_slice(b",\"amount\":1.5}");
            (body, "not_utf8")
        }
        7 if huge => {
            let mut body = format!("{{\"order_id\":\"bad-{i}\",\"pad\":\"").into_bytes();
            body.resize(10 * 1024 * 1024, b'x');
            body.extend_from_slice(b"\"}");
            (body, "too_large")
        }
        7 => (vec![b'{'; 70_000], "too_large"),
        8 => (deep(20_000).into_bytes(), "not_an_object"),
        9 => (
            format!("{{\"order_id\":\"bad-{i}\",\"ts\":\"{ts}\",\"amount\":1.5,\"product_id\":{}}}", deep(20_000)).into_bytes(),
            "wrong_type",
        ),
        10 => (format!("{{\"order_id\":\"bad-{i}\",\"x\":{}", "[".repeat(20_000)).into_bytes(), "invalid_json"),
        _ => (b"\x00\x01\x02 binary \x7f".to_vec(), "invalid_json"),
    }
}

#[test]
fn a_poison_flood_costs_only_its_own_rejections() {
    let _turn = turn();
    let total = if full() { 200_000 } else { 40_000 };
    let valid_jsonl = common::workload::generate(&[
        "--events",
        &(total / 2).to_string(),
        "--seed",
        "91",
        "--products",
        "500",
    ]);
    let valid = common::workload::lines(&valid_jsonl);
    let mut bad = Vec::with_capacity(valid.len());
    // Four 10 MB messages; the other too-large ones just over the limit.
    let huge_every = (total / 2 / 4).max(1);
    for i in 0..valid.len() {
        bad.push(poison(i, i % huge_every == 125));
    }
    let mixed: Vec<&[u8]> = valid
        .iter()
        .zip(&bad)
        .flat_map(|(good, (bad, _))| [*good, bad.as_slice()])
        .collect();
    let key = "p-00001";

    let mut rates = BTreeMap::new();
    let mut peaks = BTreeMap::new();
    for (run, messages) in [("clean", valid.clone()), ("poisoned", mixed.clone())] {
        let Some(case) = common::broker_case(&format!("poison-{run}"), "5s") else {
            return;
        };
        case.runtime
            .block_on(common::publish_bodies(&case.queue, &messages));
        let (elapsed, samples, _, daemon) = drain(&case, messages.len() as u64, key);
        assert!(samples.failed.is_empty(), "{:?}", samples.failed);
        let rate = valid.len() as f64 / elapsed;
        println!(
            "{run}: {} messages, {} valid, {elapsed:.2} s, {rate:.0} valid events/s, peak RSS {:.1} MiB, key query p99 {:.2} ms",
            messages.len(),
            valid.len(),
            samples.peak_rss(),
            percentile(&mut samples.latencies(), 0.99)
        );
        rates.insert(run, rate);
        peaks.insert(run, samples.peak_rss());
        common::assert_every_product(&daemon, &common::expected(&valid));
        let letters = case.runtime.block_on(common::drain(&case.dead));
        if run == "poisoned" {
            let mut found: Vec<(usize, String)> = letters
                .iter()
                .map(|(body, headers)| {
                    (
                        body.len(),
                        headers.get("x-tandem-reason").cloned().unwrap_or_default(),
                    )
                })
                .collect();
            let mut wanted: Vec<(usize, String)> = bad
                .iter()
                .map(|(body, reason)| (body.len(), (*reason).to_owned()))
                .collect();
            found.sort();
            wanted.sort();
            assert_eq!(found.len(), wanted.len(), "dead letters");
            assert!(found == wanted, "dead letters or reasons differ");
            let bodies: std::collections::HashSet<&[u8]> =
                letters.iter().map(|(body, _)| body.as_slice()).collect();
            assert!(bad.iter().all(|(body, _)| bodies.contains(body.as_slice())));
        } else {
            assert!(letters.is_empty());
        }
        drop(daemon);
    }
    println!(
        "poison flood: valid events/s {:.0} poisoned vs {:.0} clean (ratio {:.2}); peak RSS {:.1} vs {:.1} MiB",
        rates["poisoned"],
        rates["clean"],
        rates["poisoned"] / rates["clean"],
        peaks["poisoned"],
        peaks["clean"]
    );
    // What the broker allows any consumer that dead-letters, on the same
    // two streams: what is left of the ratio is not tandem's.
    let bad_bodies: std::collections::HashSet<&[u8]> =
        bad.iter().map(|(body, _)| body.as_slice()).collect();
    let is_bad = |body: &[u8]| bad_bodies.contains(body);
    let bare_clean = valid.len() as f64 / bare_dead_lettering(&valid, is_bad);
    let bare_poisoned = valid.len() as f64 / bare_dead_lettering(&mixed, is_bad);
    println!(
        "poison flood, a bare client that only dead-letters: valid events/s {bare_poisoned:.0} poisoned vs {bare_clean:.0} clean (ratio {:.2}); tandem's rates are {:.2} and {:.2} of the bare client's",
        bare_poisoned / bare_clean,
        rates["poisoned"] / bare_poisoned,
        rates["clean"] / bare_clean
    );
    // Memory: the poison may cost its own messages in flight, nothing that grows.
    assert!(
        peaks["poisoned"] < peaks["clean"] * 1.5 + 128.0,
        "peak RSS {:.1} MiB poisoned vs {:.1} MiB clean",
        peaks["poisoned"],
        peaks["clean"]
    );

    // The same two streams pushed over HTTP (no broker in the way): what
    // tandem itself spends on the poison. (A 0-byte line is only a blank line
    // in NDJSON, so those are left out.)
    let pushed: Vec<&[u8]> = valid
        .iter()
        .zip(&bad)
        .flat_map(|(good, (bad, _))| [*good, bad.as_slice()])
        .filter(|line| !line.is_empty())
        .collect();
    let clean = push_rate(&valid, valid.len());
    let poisoned = push_rate(&pushed, valid.len());
    println!(
        "poison flood over HTTP: valid events/s {poisoned:.0} poisoned vs {clean:.0} clean (ratio {:.2})",
        poisoned / clean
    );
}

/// What the broker allows any consumer of `messages` that dead-letters: a
/// bare lapin client publishes each message `is_bad` accepts to a
/// dead-letter queue (persistent, with publisher confirms, a delivery
/// batch's all at once, as tandem publishes them) and acks every message
/// once the dead letters up to it are confirmed; it parses and stores
/// nothing. Answers the seconds it took to drain `messages` from a full queue.
fn bare_dead_lettering(messages: &[&[u8]], is_bad: impl Fn(&[u8]) -> bool) -> f64 {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    let case = common::broker_case("poison-bare", "5s").expect("the broker is up");
    case.runtime
        .block_on(common::publish_bodies(&case.queue, messages));
    case.runtime.block_on(async {
        let connection =
            lapin::Connection::connect(&common::amqp_uri(), lapin::ConnectionProperties::default())
                .await
                .expect("connect");
        let consume = connection.create_channel().await.expect("channel");
        let publish = connection.create_channel().await.expect("channel");
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        consume
            .basic_qos(2_000, BasicQosOptions::default())
            .await
            .expect("qos");
        consume
            .queue_declare(
                case.dead.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
        let started = Instant::now();
        let mut deliveries = consume
            .basic_consume(
                case.queue.as_str().into(),
                "bare".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume")
            .ready_chunks(2_000);
        // Batches are acked in order, each once its dead letters are confirmed.
        let (batches, mut queue) = tokio::sync::mpsc::unbounded_channel::<(
            Vec<lapin::PublisherConfirm>,
            lapin::message::Delivery,
        )>();
        let acker = tokio::spawn(async move {
            while let Some((confirms, last)) = queue.recv().await {
                for confirm in confirms {
                    assert!(
                        confirm.await.expect("confirm").is_ack(),
                        "a dead letter nacked"
                    );
                }
                last.ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }
        });
        let mut seen = 0;
        while seen < messages.len() {
            let chunk = tokio::time::timeout(Duration::from_secs(120), deliveries.next())
                .await
                .unwrap_or_else(|_| panic!("{seen} of {} messages in 120 s", messages.len()))
                .expect("the consumer ended");
            let chunk: Vec<_> = chunk.into_iter().map(|d| d.expect("delivery")).collect();
            let confirms = futures_util::future::try_join_all(
                chunk
                    .iter()
                    .filter(|delivery| is_bad(&delivery.data))
                    .map(|delivery| {
                        publish.basic_publish(
                            "".into(),
                            case.dead.as_str().into(),
                            BasicPublishOptions::default(),
                            &delivery.data,
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                    }),
            )
            .await
            .expect("publish");
            seen += chunk.len();
            if let Some(last) = chunk.into_iter().last() {
                batches
                    .send((confirms, last))
                    .expect("the acker is running");
            }
        }
        drop(batches);
        acker.await.expect("acker");
        let elapsed = started.elapsed().as_secs_f64();
        connection.close(200, "done".into()).await.ok();
        elapsed
    })
}

/// Pushes `lines` over HTTP in requests of 1,000 lines to a fresh daemon and
/// answers the rate of the `valid` lines among them; checks that exactly
/// those were accepted.
fn push_rate(lines: &[&[u8]], valid: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::orders_config("[[source]]\nname = \"push\"\ntype = \"http\"\n", "5s");
    let daemon = Daemon::start(&config, dir.path(), &[]);
    let url = format!("{}/v1/events", daemon.base);
    let bodies: Vec<Vec<u8>> = lines.chunks(1000).map(|chunk| chunk.join(&b'\n')).collect();
    let started = Instant::now();
    let mut accepted = 0;
    for body in &bodies {
        let (code, answer) = common::post(&url, None, "application/x-ndjson", body);
        assert_eq!(code, 200, "{answer}");
        accepted += answer["accepted"].as_u64().unwrap_or(0) as usize;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(accepted, valid);
    valid as f64 / elapsed
}

#[test]
fn a_backlog_drains_with_bounded_memory_while_queries_answer() {
    let _turn = turn();
    let Some(case) = common::broker_case("backlog", "5s") else {
        return;
    };
    let total: u64 = if full() { 2_000_000 } else { 200_000 };
    let jsonl = common::workload::generate(&[
        "--events",
        &total.to_string(),
        "--seed",
        "93",
        "--products",
        "1000",
        "--dup-frac",
        "0.01",
        "--late-frac",
        "0.05",
    ]);
    let lines = common::workload::lines(&jsonl);
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), &jsonl).expect("write");
    common::tandem_publish(&case.queue, file.path());
    assert_eq!(
        case.runtime.block_on(common::ready_count(&case.queue)) as usize,
        lines.len()
    );
    let (elapsed, samples, unacked, daemon) = drain(&case, lines.len() as u64, "p-00001");
    // The backlog stays in the broker: tandem holds at most its prefetch window.
    assert!(unacked <= 2_000, "{unacked} messages held unacknowledged");
    assert!(
        samples.failed.is_empty(),
        "queries failed during the drain: {:?}",
        samples.failed
    );
    let mut latencies = samples.latencies();
    println!(
        "backlog: {} messages drained in {elapsed:.1} s ({:.0}/s); at most {unacked} unacknowledged; peak RSS {:.1} MiB; key query during the drain p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        lines.len(),
        lines.len() as f64 / elapsed,
        samples.peak_rss(),
        median(&mut latencies),
        percentile(&mut latencies, 0.99),
        latencies.iter().copied().fold(0.0, f64::max),
        latencies.len()
    );
    println!("{}", samples.curve(samples.points.len() / 20));
    common::assert_every_product(&daemon, &common::expected(&lines));
    drop(daemon);
}

/// Products in the soak's stream.
const PRODUCTS: u64 = 2_000;

/// Order events stamped now, with unique ids, as a producer would send them.
fn live_event(i: u64) -> Vec<u8> {
    let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    format!(
        "{{\"order_id\":\"soak-{i}\",\"ts\":\"{ts}\",\"product_id\":\"p-{:05}\",\"amount\":{}.25}}",
        i % PRODUCTS,
        i % 97
    )
    .into_bytes()
}

#[test]
fn a_soak_keeps_memory_state_and_latency_flat() {
    let _turn = turn();
    let Some(case) = common::broker_case("soak", "30s") else {
        return;
    };
    // 80% of the measured RabbitMQ ingest rate (BENCHMARKS.md) in full; a
    // rate a debug build keeps up with otherwise.
    let (rate, span) = if full() {
        (21_000u64, Duration::from_secs(600))
    } else {
        (2_000, Duration::from_secs(60))
    };
    let daemon = Daemon::start(&case.config, case.dir.path(), &[]);
    let stop = AtomicBool::new(false);
    let published = std::sync::atomic::AtomicU64::new(0);
    let samples = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample(&daemon, Duration::from_secs(1), &stop, "p-00001"));
        // Stops the sampler however this ends.
        let _stop = StopOnDrop(&stop);
        // Paced in 100 ms steps, each waiting for its confirms.
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < span {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64 + rate / 10;
            let step: Vec<Vec<u8>> = (sent..due).map(live_event).collect();
            case.runtime
                .block_on(common::publish_bodies(&case.queue, &step));
            sent = due;
            published.store(sent, Ordering::Relaxed);
            let next = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                // The producer's pace (a timer, not a wait for a condition).
                std::thread::sleep(wait);
            }
        }
        daemon.wait_handled_within(None, sent, Duration::from_secs(600));
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    let sent = published.load(Ordering::Relaxed);
    assert!(samples.failed.is_empty(), "{:?}", samples.failed);
    // Exact at the end: every event once.
    let (code, body) = common::http(
        "POST",
        &format!("{}/v1/recompute?wait=true", daemon.base),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (_, totals) = common::http(
        "GET",
        &format!("{}/v1/views/by_product/totals", daemon.base),
        None,
    );
    assert_eq!(common::orders(&totals), sent);

    // Flat: the second half's peaks are not above the first half's (after a
    // warm-up of one batch interval), with room for one batch interval's
    // events in flight.
    let n = samples.points.len();
    let warm = n.min(35);
    let (first, second) = samples.points[warm..].split_at((n - warm) / 2);
    let peak = |points: &[(f64, f64, f64, f64)], pick: fn(&(f64, f64, f64, f64)) -> f64| {
        points.iter().map(pick).fold(0.0, f64::max)
    };
    let (rss1, rss2) = (peak(first, |p| p.1), peak(second, |p| p.1));
    let mut steady1: Vec<f64> = first.iter().map(|p| p.1).collect();
    let mut steady2: Vec<f64> = second.iter().map(|p| p.1).collect();
    let (steady1, steady2) = (median(&mut steady1), median(&mut steady2));
    let (groups1, groups2) = (peak(first, |p| p.3), peak(second, |p| p.3));
    let mut lat1: Vec<f64> = first.iter().map(|p| p.2).collect();
    let mut lat2: Vec<f64> = second.iter().map(|p| p.2).collect();
    println!(
        "soak: {sent} events at {rate}/s for {} s, recompute every 30 s; RSS median {steady1:.1} then {steady2:.1} MiB, peak (during batch runs) {rss1:.1} then {rss2:.1} MiB; speed groups peak {groups1} then {groups2}; key query p50 {:.2} then {:.2} ms, p99 {:.2} then {:.2} ms",
        span.as_secs(),
        median(&mut lat1),
        median(&mut lat2),
        percentile(&mut lat1, 0.99),
        percentile(&mut lat2, 0.99),
    );
    println!("{}", samples.curve(n / 30));
    // The steady state does not grow. (A batch run's peak grows with the
    // master dataset: its dedup set holds every id; RELIABILITY.md.)
    assert!(
        steady2 <= steady1 * 1.25 + 16.0,
        "RSS grew: median {steady1:.1} -> {steady2:.1} MiB"
    );
    // The speed layer holds only the epochs after the served snapshot: at
    // most two batch intervals (60 s) of events, so each product in at most
    // three 1-minute buckets.
    let in_flight_bound = (PRODUCTS * 3) as f64;
    assert!(
        groups1.max(groups2) <= in_flight_bound,
        "speed state beyond the epochs in flight: {groups1} then {groups2} groups"
    );
    drop(daemon);
}
