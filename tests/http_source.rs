//! The HTTP push source on the real binary: `POST /v1/events` answers each
//! request once its accepted events are durable, names every rejected line
//! with its reason, and feeds both layers exactly like a RabbitMQ source;
//! the two kinds of source together add up; a SIGKILL with requests in flight
//! loses no request that got its 200; a SIGTERM drains them.

mod common;

use common::{Daemon, http, orders as count, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NDJSON: &str = "application/x-ndjson";

fn config(sources: &str) -> String {
    common::orders_config(sources, "1h")
}

const HTTP_SOURCE: &str = r#"
[[source]]
name = "push"
type = "http"
max_body_bytes = 1048576
max_events = 2000
"#;

#[test]
fn pushed_events_are_answered_per_line_and_every_key_matches_the_oracle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = common::workload::generate(&[
        "--events",
        "6000",
        "--seed",
        "31",
        "--products",
        "120",
        "--dup-frac",
        "0.05",
        "--bad-frac",
        "0.05",
        "--late-frac",
        "0.05",
    ]);
    let lines = common::workload::lines(&jsonl);
    let expect = common::expected(&lines);
    assert!(expect.dead.len() > 100, "the stream has malformed lines");
    let daemon = Daemon::start(&config(HTTP_SOURCE), dir.path(), &[]);
    let url = format!("{}/v1/events", daemon.base);

    // Batches of 500 lines, alternately as NDJSON and as a JSON array of the
    // lines that are JSON at all: every rejection is named where it was sent.
    let mut accepted = 0u64;
    for (n, chunk) in lines.chunks(500).enumerate() {
        let (code, answer, sent, position) = if n % 2 == 0 {
            // A blank line and CRLF endings are allowed and do not shift the numbering.
            let mut body = b"\r\n".to_vec();
            body.extend(chunk.join(&b"\r\n"[..]));
            let (code, answer) = post(&url, None, NDJSON, &body);
            (code, answer, chunk.to_vec(), "line")
        } else {
            let json: Vec<&[u8]> = chunk
                .iter()
                .copied()
                .filter(|line| serde_json::from_slice::<Value>(line).is_ok())
                .collect();
            let body = [b"[".as_slice(), &json.join(&b","[..]), b"]"].concat();
            let (code, answer) = post(&url, None, "application/json", &body);
            (code, answer, json, "index")
        };
        assert_eq!(code, 200, "{answer}");
        let rejected = answer["rejected"].as_array().expect("rejected list");
        let expected_dead = common::expected(&sent).dead;
        let got: Vec<(usize, String)> = rejected
            .iter()
            .map(|entry| {
                let at = entry[position].as_u64().expect("position") as usize;
                (at, entry["reason"].as_str().expect("reason").to_owned())
            })
            .collect();
        let want: Vec<(usize, String)> = sent
            .iter()
            .enumerate()
            .filter_map(|(i, line)| {
                expected_dead
                    .iter()
                    .find(|(dead, _)| dead == line)
                    .map(|(_, reason)| {
                        // Lines count from 1 and the body starts with a blank one.
                        let at = if position == "line" { i + 2 } else { i };
                        (at, reason.clone())
                    })
            })
            .collect();
        assert_eq!(got, want, "request {n}");
        for entry in rejected {
            if matches!(
                entry["reason"].as_str(),
                Some("missing_field" | "wrong_type" | "bad_time")
            ) {
                assert!(entry["field"].is_string(), "{entry} names its field");
            }
        }
        assert_eq!(
            answer["accepted"].as_u64(),
            Some((sent.len() - want.len()) as u64)
        );
        accepted += answer["accepted"].as_u64().unwrap_or(0);
    }

    // Counted in status like dead letters, and visible at once in the speed layer.
    let (_, status) = http("GET", &format!("{}/v1/status", daemon.base), None);
    assert_eq!(
        status["events_accepted"].as_u64(),
        Some(accepted),
        "{status}"
    );
    let push = status["sources"]
        .as_array()
        .and_then(|sources| sources.iter().find(|source| source["name"] == "push"))
        .unwrap_or_else(|| panic!("no push source in {status}"));
    assert_eq!(push["accepted"].as_u64(), Some(accepted));
    let (_, speed) = http(
        "GET",
        &format!("{}/v1/views/by_product/totals?layer=speed", daemon.base),
        None,
    );
    let unique: u64 = expect.products.values().map(|(orders, _)| orders).sum();
    // The speed layer drops the duplicates it still remembers; the batch layer all.
    assert!(
        (unique..=accepted).contains(&count(&speed)),
        "speed holds {} of {unique} orders ({accepted} accepted)",
        count(&speed)
    );
    common::assert_every_product(&daemon, &expect);

    // A caller's mistakes are 4xx with a clear message, and cost nothing else.
    let (code, body) = post(&url, None, "application/json", b"[{\"a\":1},");
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("JSON array")),
        "{body}"
    );
    let (code, body) = post(&url, None, "application/x-www-form-urlencoded", b"a=1");
    assert_eq!(code, 415);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("application/x-ndjson")),
        "{body}"
    );
    let many = b"{}\n".repeat(2001);
    let (code, body) = post(&url, None, NDJSON, &many);
    assert_eq!(code, 413);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_events")),
        "{body}"
    );
    let huge = vec![b' '; 1_048_577];
    let (code, body) = post(&url, None, NDJSON, &huge);
    assert_eq!(code, 413);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_body_bytes")),
        "{body}"
    );
    let (code, _) = post(&format!("{url}?x=1"), None, NDJSON, b"{}");
    assert_eq!(code, 400);
    let (code, body) = post(&url, None, NDJSON, b"");
    assert_eq!((code, body), (200, json!({"accepted": 0, "rejected": []})));
    common::assert_every_product(&daemon, &expect);
}

#[test]
fn without_an_http_source_the_route_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(""), dir.path(), &[]);
    let (code, body) = post(&format!("{}/v1/events", daemon.base), None, NDJSON, b"{}");
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("type \"http\"")),
        "{body}"
    );
}

#[test]
fn a_rabbitmq_and_an_http_source_feed_one_daemon_exactly() {
    if !actix::System::new().block_on(common::broker_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let generate = |seed: &str, id_prefix: &str| {
        common::workload::generate(&[
            "--events",
            "8000",
            "--seed",
            seed,
            "--products",
            "150",
            "--dup-frac",
            "0.03",
            "--bad-frac",
            "0.02",
            "--id-prefix",
            id_prefix,
        ])
    };
    // The two streams' order ids have prefixes of their own, so they share
    // no id and their sum is the oracle.
    let rabbit_jsonl = generate("41", "o-");
    let http_jsonl = generate("42", "h-");
    let (rabbit_file, http_file) = (
        dir.path().join("rabbit.jsonl"),
        dir.path().join("http.jsonl"),
    );
    std::fs::write(&rabbit_file, &rabbit_jsonl).expect("write");
    std::fs::write(&http_file, &http_jsonl).expect("write");
    let mut all = common::workload::lines(&rabbit_jsonl);
    all.extend(common::workload::lines(&http_jsonl));
    let expect = common::expected(&all);

    let (queue, dead) = (
        common::unique_queue("mixed"),
        common::unique_queue("mixed-dead"),
    );
    let sources = format!("{HTTP_SOURCE}\n{}", common::rabbitmq_source(&queue, &dead));
    let daemon = Daemon::start(&config(&sources), dir.path(), &[]);
    // Both streams at once, with epochs sealed while they run.
    let base = daemon.base.clone();
    let http_publisher = std::thread::spawn(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["publish", "--batch", "250", "--http", &base])
            .arg(&http_file)
            .output()
            .expect("run tandem publish --http")
    });
    let rabbit_queue = queue.clone();
    let rabbit_publisher =
        std::thread::spawn(move || common::tandem_publish(&rabbit_queue, &rabbit_file));
    // Epochs end at a quarter, half and three quarters of both streams together.
    for quarter in 1..=3 {
        daemon.wait_handled(None, (all.len() * quarter / 4) as u64);
        let (code, body) = http("POST", &format!("{}/v1/recompute", daemon.base), None);
        assert_eq!(code, 202, "{body}");
    }
    let out = http_publisher.join().expect("http publisher");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let http_dead = common::expected(&common::workload::lines(&http_jsonl))
        .dead
        .len();
    assert!(
        stdout.contains(&format!("{http_dead} rejected")),
        "publish --http reports the rejections: {stdout}"
    );
    rabbit_publisher.join().expect("rabbitmq publisher");
    common::assert_every_product(&daemon, &expect);
    drop(daemon);
    actix::System::new().block_on(common::delete_queues(&[&queue, &dead]));
}

/// Events of request `request`: `size` orders of product `r-<request>`.
fn request_body(request: usize, size: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..size {
        body.extend(
            format!(
                r#"{{"order_id":"k-{request}-{i}","ts":"2026-11-24T10:00:00.000Z","product_id":"r-{request}","amount":1.25}}"#
            )
            .bytes(),
        );
        body.push(b'\n');
    }
    body
}

/// How one pushed request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// 200: its events are durable.
    Answered,
    /// 503, with the `Retry-After` header's value.
    Unavailable(Option<String>),
    /// Any other status, or no answer at all.
    Other(String),
}

/// A pushing client's thread: it answers each request's ending, in order.
type Client = std::thread::JoinHandle<Vec<(usize, Ended)>>;

/// Four clients pushing requests of `size` events (request `n`'s orders are
/// all for product `r-n`), each until a request does not get a 200; answers
/// each request's ending, in order per client.
fn push_from_four_clients(url: &str, size: usize, answered: &Arc<Mutex<usize>>) -> Vec<Client> {
    (0..4)
        .map(|client| {
            let (url, answered) = (url.to_owned(), Arc::clone(answered));
            std::thread::spawn(move || {
                let mut ended = Vec::new();
                for n in 0.. {
                    let request = n * 4 + client;
                    let outcome = ureq::post(&url)
                        .set("Content-Type", NDJSON)
                        .send_bytes(&request_body(request, size));
                    let end = match outcome {
                        Ok(response) if response.status() == 200 => {
                            *answered.lock().expect("lock") += 1;
                            Ended::Answered
                        }
                        Err(ureq::Error::Status(503, response)) => {
                            Ended::Unavailable(response.header("Retry-After").map(str::to_owned))
                        }
                        Ok(response) => Ended::Other(format!("status {}", response.status())),
                        Err(err) => Ended::Other(err.to_string()),
                    };
                    let last = end != Ended::Answered;
                    ended.push((request, end));
                    if last {
                        break;
                    }
                }
                ended
            })
        })
        .collect()
}

/// A daemon with four clients pushing to it ([`push_from_four_clients`]),
/// once 40 of their requests have been answered.
fn pushing_from_four_clients(
    text: &str,
    dir: &std::path::Path,
    size: usize,
) -> (Daemon, Vec<Client>) {
    let daemon = Daemon::start(text, dir, &[]);
    let url = format!("{}/v1/events", daemon.base);
    let answered = Arc::new(Mutex::new(0));
    let clients = push_from_four_clients(&url, size, &answered);
    common::poll_until(
        Duration::from_secs(60),
        "40 requests answered",
        || match *answered.lock().expect("lock") {
            n if n >= 40 => Ok(()),
            n => Err(n),
        },
    );
    (daemon, clients)
}

/// Each request's orders in the merged layer of a (restarted) daemon.
fn counted_per_request(daemon: &Daemon, requests: &[usize], layer: &str) -> BTreeMap<usize, u64> {
    requests
        .iter()
        .map(|request| {
            let (code, body) = http(
                "GET",
                &format!(
                    "{}/v1/views/by_product/keys/r-{request}?layer={layer}",
                    daemon.base
                ),
                None,
            );
            assert_eq!(code, 200, "{body}");
            (*request, count(&body))
        })
        .collect()
}

#[test]
fn sigkill_with_requests_in_flight_loses_no_answered_request() {
    const SIZE: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(HTTP_SOURCE);
    let (mut daemon, clients) = pushing_from_four_clients(&text, dir.path(), SIZE);
    daemon.kill();
    let ended: Vec<(usize, Ended)> = clients
        .into_iter()
        .flat_map(|client| client.join().expect("client"))
        .collect();
    let sent: Vec<usize> = ended.iter().map(|(request, _)| *request).collect();
    // Every client went on until a request got no answer.
    assert!(
        ended.iter().any(|(_, end)| matches!(end, Ended::Other(_))),
        "requests were cut off by the kill: {ended:?}"
    );

    let daemon = Daemon::start(&text, dir.path(), &[]);
    let before = counted_per_request(&daemon, &sent, "merged");
    let (code, body) = http(
        "POST",
        &format!("{}/v1/recompute?wait=true", daemon.base),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let after = counted_per_request(&daemon, &sent, "batch");
    for (request, end) in &ended {
        if *end == Ended::Answered {
            assert_eq!(
                after[request], SIZE as u64,
                "answered request {request} is whole"
            );
            assert_eq!(
                before[request], SIZE as u64,
                "and was served before the recompute"
            );
        } else {
            assert!(
                after[request] <= SIZE as u64,
                "request {request} counted twice"
            );
        }
    }
}

/// SIGTERM while four clients push: the daemon drains. Every request it
/// answered 200 is counted after a restart; none is cut off; once the queued
/// requests are answered, each client's next request gets 503 with
/// `Retry-After` (during `http.shutdown_grace`), and nothing of it counts.
#[test]
fn sigterm_with_four_pushing_clients_answers_every_request() {
    const SIZE: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(HTTP_SOURCE);
    let (mut daemon, clients) = pushing_from_four_clients(&text, dir.path(), SIZE);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.logs());
    let per_client: Vec<Vec<(usize, Ended)>> = clients
        .into_iter()
        .map(|client| client.join().expect("client"))
        .collect();
    for ended in &per_client {
        let (last, before) = ended.split_last().expect("a client sent a request");
        assert_eq!(
            last.1,
            Ended::Unavailable(Some("5".into())),
            "a client's first request after the drain gets 503 with Retry-After: {ended:?}"
        );
        assert!(
            before.iter().all(|(_, end)| *end == Ended::Answered),
            "every earlier request was answered 200: {ended:?}"
        );
    }

    let daemon = Daemon::start(&text, dir.path(), &[]);
    let ended: Vec<(usize, Ended)> = per_client.into_iter().flatten().collect();
    let sent: Vec<usize> = ended.iter().map(|(request, _)| *request).collect();
    let merged = counted_per_request(&daemon, &sent, "merged");
    for (request, end) in &ended {
        let expected = if *end == Ended::Answered {
            SIZE as u64
        } else {
            0
        };
        assert_eq!(merged[request], expected, "request {request} ({end:?})");
    }
}

#[test]
fn an_idle_timer_tick_seals_nothing_and_runs_no_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::orders_config(HTTP_SOURCE, "1s");
    let daemon = Daemon::start(&config, dir.path(), &[]);
    let url = format!("{}/v1/events", daemon.base);
    let jsonl = common::workload::generate(&["--events", "101", "--seed", "37"]);
    let lines = common::workload::lines(&jsonl);
    let counted = |lines: &[&[u8]]| -> u64 {
        common::expected(lines)
            .products
            .values()
            .map(|(orders, _)| orders)
            .sum()
    };
    let (first, all) = (counted(&lines[..100]), counted(&lines[..101]));
    assert!(all > first, "the last line is a new order");
    let (code, body) = post(&url, None, NDJSON, &lines[..100].join(&b'\n'));
    assert_eq!(code, 200, "{body}");
    // The timer seals the epoch and a batch run takes it in.
    let status = common::poll_until(Duration::from_secs(30), "the batch run", || {
        let status = daemon.status();
        let settled = status["snapshot"]["events"] == first && status["recompute_running"] == false;
        if settled { Ok(status) } else { Err(status) }
    });
    // Three idle ticks: no epoch, no batch run.
    let (epoch, created) = (
        status["epoch"].clone(),
        status["snapshot"]["created_at"].clone(),
    );
    common::holds_for(Duration::from_millis(3500), || {
        let now = daemon.status();
        assert_eq!(
            (&now["epoch"], &now["snapshot"]["created_at"]),
            (&epoch, &created),
            "{now}"
        );
    });
    // One more event: the next tick seals it and the batch layer has it.
    let (code, body) = post(&url, None, NDJSON, lines[100]);
    assert_eq!(code, 200, "{body}");
    let now = common::poll_until(Duration::from_secs(30), "the next batch run", || {
        let now = daemon.status();
        if now["snapshot"]["events"] == all {
            Ok(now)
        } else {
            Err(now)
        }
    });
    assert!(now["epoch"].as_u64() > epoch.as_u64(), "{now}");
}
