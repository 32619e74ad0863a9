//! Helpers shared by the integration tests: configs over temporary data_dirs,
//! unique queue names, the broker address, and polling with a deadline.
#![allow(dead_code)]

pub mod faults;
pub mod proc_status;
pub mod pyspark;
pub mod workload;

use std::time::{Duration, Instant};
use tandem::Config;

/// A config from TOML text, with `data_dir` set to `dir`.
pub fn config(text: &str, dir: &std::path::Path) -> Config {
    let mut config =
        Config::parse(text, "test.toml").unwrap_or_else(|errors| panic!("test config: {errors}"));
    config.data_dir = dir.to_path_buf();
    config
}

/// The broker tests use: `TANDEM_TEST_AMQP_URI`, or the local default.
pub fn amqp_uri() -> String {
    std::env::var("TANDEM_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A `[[source]]` named "orders" reading `queue` on the test broker.
pub fn rabbitmq_source(queue: &str, dead: &str) -> String {
    format!(
        "[[source]]\nname = \"orders\"\ntype = \"rabbitmq\"\nuri = \"{}\"\nqueue = \"{queue}\"\ndead_letter_queue = \"{dead}\"\n",
        amqp_uri()
    )
}

/// The `orders` count metric of a key or totals answer.
pub fn orders(body: &serde_json::Value) -> u64 {
    body["metrics"]["orders"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer orders in {body}"))
}

/// The `revenue` sum metric of a key or totals answer, in cents.
pub fn revenue_cents(body: &serde_json::Value) -> i64 {
    (body["metrics"]["revenue"]
        .as_f64()
        .unwrap_or_else(|| panic!("no revenue in {body}"))
        * 100.0)
        .round() as i64
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "tandem-test.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the broker answers; a missing broker fails the test unless the
/// user skips such tests ([`missing`]).
pub async fn broker_available() -> bool {
    match lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default()).await {
        Ok(connection) => {
            connection.close(200, "probe".into()).await.ok();
            true
        }
        Err(err) => {
            missing(
                &format!("RabbitMQ at {}", amqp_uri()),
                format!("not reachable: {err}"),
            );
            false
        }
    }
}

/// How often the polling helpers ask again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `probe` until it answers `Ok`, or answers the last `Err` once
/// `deadline` has passed. The one blocking poll loop of the tests.
pub fn poll<T, S>(deadline: Duration, mut probe: impl FnMut() -> Result<T, S>) -> Result<T, S> {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(seen) if started.elapsed() > deadline => return Err(seen),
            Err(_) => std::thread::sleep(POLL_EVERY),
        }
    }
}

/// [`poll`], failing with `what` and the last value seen.
pub fn poll_until<T, S: std::fmt::Debug>(
    deadline: Duration,
    what: &str,
    probe: impl FnMut() -> Result<T, S>,
) -> T {
    poll(deadline, probe).unwrap_or_else(|seen| {
        panic!("{what}: not reached within {deadline:?}; last seen: {seen:?}")
    })
}

/// Runs `check` over and over for `span` (an observation window: what must
/// hold all along, or what must not happen); answers how many times it ran.
pub fn holds_for(span: Duration, mut check: impl FnMut()) -> u32 {
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < span {
        check();
        runs += 1;
        std::thread::sleep(POLL_EVERY);
    }
    runs
}

/// Polls `probe` until it returns `Some`, failing with `what` and the last
/// value seen once `deadline` has passed.
pub async fn eventually<T, S: std::fmt::Debug>(
    deadline: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, S>,
) -> T {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if started.elapsed() > deadline => {
                panic!("{what}: not reached within {deadline:?}; last seen: {seen:?}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// Publishes every line to `queue` with `tandem publish` (declared durable,
/// persistent messages, every confirm awaited).
pub async fn publish(queue: &str, lines: &[&[u8]]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lines.jsonl");
    std::fs::write(&file, lines.join(&b'\n')).expect("write lines");
    tandem_publish(queue, &file);
}

/// Messages ready in `queue` (not counting those delivered and unacked).
pub async fn ready_count(queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .expect("passive declare");
    connection.close(200, "done".into()).await.ok();
    queue.message_count()
}

/// Waits (up to `deadline`) until `queue` holds no message ready.
pub async fn drained(queue: &str, deadline: Duration) {
    eventually(deadline, "the queue drained", async || {
        match ready_count(queue).await {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
}

/// Takes every message from `queue`: (body, headers as strings).
pub async fn drain(queue: &str) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("get")
    {
        let mut headers = std::collections::BTreeMap::new();
        if let Some(table) = message.delivery.properties.headers() {
            for (key, value) in table.inner() {
                if let lapin::types::AMQPValue::LongString(text) = value {
                    headers.insert(
                        key.to_string(),
                        String::from_utf8_lossy(text.as_bytes()).into_owned(),
                    );
                }
            }
        }
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        out.push((message.delivery.data.clone(), headers));
    }
    connection.close(200, "done".into()).await.ok();
    out
}

/// Deletes queues a test declared.
pub async fn delete_queues(queues: &[&str]) {
    use lapin::options::QueueDeleteOptions;
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    for queue in queues {
        channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await
            .ok();
    }
    connection.close(200, "done".into()).await.ok();
}

/// A `tandem run` child process, killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Where its logs go.
    pub log: std::path::PathBuf,
}

/// A free loopback port (bound and released; another process could take it in between).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl Daemon {
    /// Starts `tandem run` on the config text (its `listen` replaced by a free
    /// port, its data_dir by `dir`), with `env` set, and waits until it is ready.
    pub fn start(config: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::spawn(config, dir, env);
        daemon.until(Duration::from_secs(30), "tandem run is ready", |daemon| {
            if let Ok(Some(exit)) = daemon.child.try_wait() {
                panic!("tandem run exited with {exit}:\n{}", daemon.logs());
            }
            ureq::get(&format!("{}/readyz", daemon.base))
                .call()
                .map(drop)
                .map_err(|err| err.to_string())
        });
        daemon
    }

    /// Polls `probe` on this daemon until it answers `Ok`; past `deadline`,
    /// fails with `what`, the last value seen and the daemon's logs.
    pub fn until<T, S: std::fmt::Debug>(
        &mut self,
        deadline: Duration,
        what: &str,
        mut probe: impl FnMut(&mut Daemon) -> Result<T, S>,
    ) -> T {
        match poll(deadline, || probe(self)) {
            Ok(value) => value,
            Err(seen) => panic!(
                "{what}: not reached within {deadline:?}; last seen: {seen:?}\n{}",
                self.logs()
            ),
        }
    }

    /// Starts `tandem run` like [`Daemon::start`], without waiting for it.
    pub fn spawn(config: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let text = config
            .replace("LISTEN", &format!("127.0.0.1:{port}"))
            .replace("DATA_DIR", &dir.join("data").display().to_string());
        let path = dir.join("tandem.toml");
        std::fs::write(&path, text).expect("write config");
        let log = dir.join(format!("run-{port}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["run", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tandem run");
        Daemon {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits (up to `deadline`) for the process to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        self.until(deadline, "tandem run exits", |daemon| {
            daemon.child.try_wait().expect("try_wait").ok_or("running")
        })
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = http("GET", &format!("{}/v1/status", self.base), None);
        assert_eq!(code, 200, "{body}");
        body
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon has handled (accepted or rejected) `at_least` messages.
    pub fn wait_handled(&self, token: Option<&str>, at_least: u64) {
        self.wait_handled_within(token, at_least, Duration::from_secs(60));
    }

    /// Waits until the daemon has handled `at_least` messages, up to `deadline`.
    pub fn wait_handled_within(&self, token: Option<&str>, at_least: u64, deadline: Duration) {
        let url = format!("{}/v1/status", self.base);
        let outcome = poll(deadline, || {
            let handled = handled(&http("GET", &url, token).1);
            if handled >= at_least {
                Ok(())
            } else {
                Err(handled)
            }
        });
        if let Err(handled) = outcome {
            panic!("only {handled} of {at_least} handled:\n{}", self.logs());
        }
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Waits (up to 20 s) until a line of its log satisfies `found`.
    pub fn until_logged(&mut self, what: &str, found: impl Fn(&str) -> bool) {
        self.until(Duration::from_secs(20), what, |daemon| {
            let logs = daemon.logs();
            if logs.lines().any(&found) {
                Ok(())
            } else {
                Err(logs)
            }
        });
    }

    /// Sends the signal `name` (`HUP`, `TERM`).
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Sends SIGHUP: the daemon reads its certificate and token files again.
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends SIGTERM and waits (up to a minute) for the exit; answers the
    /// exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        let code = self.wait_exit(Duration::from_secs(60)).code();
        (code, started.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The tests' random numbers (the generator's splitmix64): the same
/// sequence for the same seed.
pub struct Rng(tandem::workload::SplitMix64);

impl Rng {
    /// Seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(tandem::workload::SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform (nearly: by the remainder) in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.between(0, items.len() as u64 - 1) as usize]
    }
}

/// Damage, in place: XORs the byte at `at` of the file with `mask` (doing
/// it again with the same mask restores it, as a backup would).
pub fn xor_byte(path: &std::path::Path, at: u64, mask: u8) {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(&mut byte))
        .expect("read the byte");
    byte[0] ^= mask;
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.write_all(&byte))
        .and_then(|()| file.sync_all())
        .expect("write the byte");
}

/// The files in `dir` whose extension is `ext`, sorted by name.
pub fn files_ending(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|found| found == ext))
        .collect();
    found.sort();
    found
}

/// Copies a directory tree (a data_dir, a fixture) into `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Runs `tandem publish` on a file and checks it succeeded.
pub fn tandem_publish(queue: &str, file: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["publish", "--uri", &amqp_uri(), "--queue", queue])
        .arg(file)
        .output()
        .expect("run tandem publish");
    assert!(
        out.status.success(),
        "tandem publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GET (or POST) a path; answers the status and the JSON body.
pub fn http(method: &str, url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = ureq::request(method, url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    answer(request.call(), method, url)
}

/// A response's status and JSON body (a string when it is not JSON); a 4xx
/// or 5xx is an answer too.
fn answer(
    result: Result<ureq::Response, ureq::Error>,
    method: &str,
    url: &str,
) -> (u16, serde_json::Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => panic!("{method} {url}: {err}"),
    };
    let status = response.status();
    let text = response.into_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// POSTs a body with a content type; answers the status and the JSON body.
pub fn post(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut request = ureq::post(url).set("Content-Type", content_type);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    answer(request.send_bytes(body), "POST", url)
}

/// The reference order stream's expected outcome, computed from the lines alone
/// with serde_json: per product each order id once, and every malformed line with
/// the reason it must be rejected with (for configs reading order_id, ts,
/// product_id and amount).
#[derive(Default, Debug)]
pub struct Expected {
    /// Per product: (orders, revenue in cents), each order id once.
    pub products: std::collections::BTreeMap<String, (u64, i64)>,
    /// Every malformed line with the reason it must be dead-lettered with.
    pub dead: Vec<(Vec<u8>, String)>,
}

/// The generator writes times as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn looks_like_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 24
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[19] == b'.'
        && bytes[23] == b'Z'
}

pub fn expected(lines: &[&[u8]]) -> Expected {
    let mut out = Expected::default();
    let mut ids = std::collections::HashSet::new();
    for line in lines {
        // The checks in the documented order: size, UTF-8, JSON, shape, fields.
        let reason = if line.len() > DEFAULT_EVENT_MAX_BYTES {
            Some("too_large")
        } else if std::str::from_utf8(line).is_err() {
            Some("not_utf8")
        } else {
            from_json(line, &mut ids, &mut out)
        };
        if let Some(reason) = reason {
            out.dead.push((line.to_vec(), reason.to_owned()));
        }
    }
    out
}

/// `event.max_bytes` when the config does not set it.
pub const DEFAULT_EVENT_MAX_BYTES: usize = 65_536;

/// The rejection of a UTF-8 line of at most `event.max_bytes`, if any; a
/// valid line's order is counted once per id.
fn from_json(
    line: &[u8],
    ids: &mut std::collections::HashSet<String>,
    out: &mut Expected,
) -> Option<&'static str> {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Err(_) => Some("invalid_json"),
        Ok(serde_json::Value::Object(object)) => {
            let text = |name: &str| object.get(name).and_then(|value| value.as_str());
            if ["order_id", "ts", "product_id", "amount"]
                .iter()
                .any(|field| !object.contains_key(*field))
            {
                Some("missing_field")
            } else if !object["amount"].is_number() {
                Some("wrong_type")
            } else if !text("ts").is_some_and(looks_like_time) {
                Some("bad_time")
            } else {
                let id = text("order_id").unwrap_or_default().to_owned();
                if ids.insert(id) {
                    let product = text("product_id").unwrap_or_default().to_owned();
                    let cents =
                        (object["amount"].as_f64().unwrap_or_default() * 100.0).round() as i64;
                    let entry = out.products.entry(product).or_default();
                    entry.0 += 1;
                    entry.1 += cents;
                }
                None
            }
        }
        Ok(_) => Some("not_an_object"),
    }
}

/// A daemon config over the reference order stream: one `by_product` view
/// (orders, revenue) with ids `order_id`, the given sources and batch interval,
/// `LISTEN` and `DATA_DIR` to be filled in by [`Daemon::start`].
pub fn orders_config(sources: &str, batch_interval: &str) -> String {
    format!(
        r#"
data_dir = "DATA_DIR"
[event]
id = "order_id"
time = "ts"
{sources}
[batch]
interval = "{batch_interval}"
[http]
listen = "LISTEN"
[[view]]
name = "by_product"
key = ["product_id"]
bucket = "1m"
metrics = [
  {{ name = "orders", agg = "count" }},
  {{ name = "revenue", agg = "sum", field = "amount" }},
]
"#
    )
}

/// Recomputes until the batch layer holds every order of the oracle (a
/// RabbitMQ source may still be draining), then checks every product against
/// the oracle in the batch layer and the merged answer: nothing lost, nothing
/// counted twice.
pub fn assert_every_product(daemon: &Daemon, expect: &Expected) {
    let orders_expected: u64 = expect.products.values().map(|(orders, _)| orders).sum();
    let outcome = poll(Duration::from_secs(120), || {
        let (code, body) = http(
            "POST",
            &format!("{}/v1/recompute?wait=true", daemon.base),
            None,
        );
        assert_eq!(code, 200, "{body}");
        let (_, batch) = http(
            "GET",
            &format!("{}/v1/views/by_product/totals?layer=batch", daemon.base),
            None,
        );
        if orders(&batch) >= orders_expected {
            Ok(orders(&batch))
        } else {
            Err(orders(&batch))
        }
    });
    match outcome {
        Ok(held) => assert_eq!(held, orders_expected, "counted twice:\n{}", daemon.logs()),
        Err(held) => panic!(
            "the batch layer holds {held} of {orders_expected} orders:\n{}",
            daemon.logs()
        ),
    }
    for layer in ["batch", "merged"] {
        assert_products(daemon, expect, layer);
    }
}

/// Waits until the speed layer's totals hold every order of the oracle, then
/// checks every product in it: what reached the speed layer, before any
/// batch run, is exact.
pub fn assert_speed_layer_holds(daemon: &Daemon, expect: &Expected) {
    let orders_expected: u64 = expect.products.values().map(|(orders, _)| orders).sum();
    poll_until(
        Duration::from_secs(60),
        "the speed layer holds every order",
        || {
            let (_, totals) = http(
                "GET",
                &format!("{}/v1/views/by_product/totals?layer=speed", daemon.base),
                None,
            );
            let held = orders(&totals);
            if held == orders_expected {
                Ok(())
            } else {
                Err(format!("{held} of {orders_expected}"))
            }
        },
    );
    assert_products(daemon, expect, "speed");
}

/// Every product of `expect` (orders, revenue), answered from `layer`.
pub fn assert_products(daemon: &Daemon, expect: &Expected, layer: &str) {
    for (product, expected) in &expect.products {
        let (code, body) = http(
            "GET",
            &format!(
                "{}/v1/views/by_product/keys/{product}?layer={layer}",
                daemon.base
            ),
            None,
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            (orders(&body), revenue_cents(&body)),
            *expected,
            "{product} {layer}"
        );
    }
}

/// A connection to the test broker, and a channel on it with publisher
/// confirms on which `queue` is declared durable.
pub async fn confirming_channel(
    queue: &str,
) -> Result<(lapin::Connection, lapin::Channel), lapin::Error> {
    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
    let connection =
        lapin::Connection::connect(&amqp_uri(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok((connection, channel))
}

/// Publishes one persistent message to `queue`; answers its confirm.
pub async fn publish_persistent(
    channel: &lapin::Channel,
    queue: &str,
    body: &[u8],
) -> Result<lapin::PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
}

/// Publishes arbitrary message bodies (empty, huge, binary) to `queue` with
/// publisher confirms, declaring it durable; persistent messages.
pub async fn publish_bodies<B: AsRef<[u8]>>(queue: &str, bodies: impl IntoIterator<Item = B>) {
    let (connection, channel) = confirming_channel(queue).await.expect("a channel");
    let mut confirms = std::collections::VecDeque::new();
    for body in bodies {
        let confirm = publish_persistent(&channel, queue, body.as_ref())
            .await
            .expect("publish");
        confirms.push_back(confirm);
        if confirms.len() >= 1000
            && let Some(confirm) = confirms.pop_front()
        {
            assert!(confirm.await.expect("confirm").is_ack(), "broker nacked");
        }
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack(), "broker nacked");
    }
    connection.close(200, "done".into()).await.ok();
}

/// Takes every message from the dead-letter queue `dead`: (body, reason).
async fn dead_letters(dead: &str) -> Vec<(Vec<u8>, String)> {
    drain(dead)
        .await
        .into_iter()
        .map(|(body, headers)| {
            let reason = headers.get("x-tandem-reason").cloned().unwrap_or_default();
            (body, reason)
        })
        .collect()
}

/// Every malformed message reached the dead-letter queue with its reason (a
/// crash between a dead letter's confirm and the delivery's ack may add a copy).
pub async fn assert_dead_letters(dead: &str, expect: &Expected) {
    let found: std::collections::BTreeSet<(Vec<u8>, String)> =
        dead_letters(dead).await.into_iter().collect();
    let wanted: std::collections::BTreeSet<(Vec<u8>, String)> =
        expect.dead.iter().cloned().collect();
    assert_eq!(found.len(), wanted.len(), "dead letters");
    assert!(found == wanted, "dead letters differ from the oracle's");
}

/// Waits until the dead-letter queue `dead` holds at least `n` messages (the
/// last ones may still await their confirms).
pub async fn dead_letters_published(dead: &str, n: usize) {
    eventually(
        Duration::from_secs(60),
        "every malformed message dead-lettered",
        async || {
            let held = ready_count(dead).await as usize;
            if held >= n { Ok(()) } else { Err(held) }
        },
    )
    .await;
}

/// `dead` holds each malformed message of `expect`, unchanged, with its
/// reason, as many times as it was published: none dead-lettered twice.
pub async fn assert_dead_lettered_once(dead: &str, expect: &Expected) {
    dead_letters_published(dead, expect.dead.len()).await;
    let mut got = dead_letters(dead).await;
    let mut want = expect.dead.clone();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "dead letters");
    assert!(
        got == want,
        "each malformed message, unchanged, with its reason"
    );
}

/// A process's resident set and its peak, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    (
        proc_status::status_kib(Some(pid), "VmRSS:"),
        proc_status::status_kib(Some(pid), "VmHWM:"),
    )
}

/// One sample from `/metrics`: `series` is the name with its labels as
/// exposed, e.g. `tandem_source_connected{source="orders"}`.
pub fn scrape(base: &str, series: &str) -> Option<f64> {
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// What a test needs from the machine is missing: the test fails, naming it,
/// unless the user asked to skip such tests with `TANDEM_SKIP_SERVICES=1`
/// (then this says so loudly and returns, and the caller skips its checks).
pub fn missing(what: &str, why: impl std::fmt::Display) {
    if std::env::var("TANDEM_SKIP_SERVICES").as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED (TANDEM_SKIP_SERVICES=1): {what} is missing ({why}); this test checked nothing ***\n"
        );
        return;
    }
    panic!(
        "{what} is missing: {why}. `bash scripts/test` sets up what the tests need; \
         TANDEM_SKIP_SERVICES=1 skips the tests that need it instead"
    );
}

/// The entry of the source called `name` in a `/v1/status` answer (null if none).
pub fn source_entry(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["sources"]
        .as_array()
        .and_then(|sources| sources.iter().find(|source| source["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// Events handled (accepted or rejected) per `/v1/status`.
pub fn handled(status: &serde_json::Value) -> u64 {
    let rejected: u64 = status["events_rejected"].as_object().map_or(0, |reasons| {
        reasons.values().filter_map(|n| n.as_u64()).sum()
    });
    status["events_accepted"].as_u64().unwrap_or(0) + rejected
}

/// Queues a test declared, deleted when this is dropped: also when the test
/// fails, so that nothing is left behind on the broker.
pub struct Queues(Vec<String>);

impl Queues {
    /// Takes charge of `names`.
    pub fn new(names: &[&str]) -> Queues {
        Queues(names.iter().map(|name| (*name).to_owned()).collect())
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        // A runtime of its own, on a thread of its own: the test may be async.
        std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Runtime::new() {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                runtime.block_on(delete_queues(&names));
            }
        })
        .join()
        .ok();
    }
}

/// What a test of the real binary on the broker starts with: a runtime, a
/// queue and its dead-letter queue (deleted when this is dropped), a
/// temporary directory, and the orders config reading the queue.
pub struct BrokerCase {
    /// For the async helpers.
    pub runtime: tokio::runtime::Runtime,
    /// The queue the daemon consumes.
    pub queue: String,
    /// Its dead-letter queue.
    pub dead: String,
    /// Where the daemon's config, logs and data_dir go.
    pub dir: tempfile::TempDir,
    /// [`orders_config`] with a RabbitMQ source on `queue`.
    pub config: String,
    _queues: Queues,
}

/// A [`BrokerCase`] with queues named after `prefix`; `None` (the test
/// skips) when the broker is away and `TANDEM_SKIP_SERVICES=1`.
pub fn broker_case(prefix: &str, batch_interval: &str) -> Option<BrokerCase> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if !runtime.block_on(broker_available()) {
        return None;
    }
    let queue = unique_queue(prefix);
    let dead = format!("{queue}.dead");
    Some(BrokerCase {
        runtime,
        config: orders_config(&rabbitmq_source(&queue, &dead), batch_interval),
        _queues: Queues::new(&[&queue, &dead]),
        queue,
        dead,
        dir: tempfile::tempdir().expect("tempdir"),
    })
}

/// `config/demo.toml` with `LISTEN` and `DATA_DIR` for [`Daemon::start`],
/// and a number of events to stop after, if given.
pub fn demo_config(events: Option<u64>) -> String {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
            .expect("read config/demo.toml");
    for (from, to) in [
        ("\"127.0.0.1:8080\"", "\"LISTEN\""),
        ("data_dir = \"data-demo\"", "data_dir = \"DATA_DIR\""),
    ] {
        assert!(text.contains(from), "config/demo.toml has no {from}");
        text = text.replace(from, to);
    }
    if let Some(events) = events {
        assert!(text.contains("\nrate = "), "config/demo.toml sets no rate");
        text = text.replace("\nrate = ", &format!("\nevents = {events}\nrate = "));
    }
    text
}
