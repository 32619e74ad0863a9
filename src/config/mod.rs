//! `Config`: the validated, typed form of the TOML file, and how to load it.
//!
//! Loading is two-phase: `raw` mirrors the file with serde (unknown keys
//! refused), then `validate` checks meaning and collects every problem, each
//! with the file, the key path and what is wrong. Key paths index arrays from
//! 0: `view[1].metrics[2].field` is the third metric of the second view.

mod raw;
mod validate;

use crate::aggregate::ViewSpec;
use crate::event::Schema;
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where the master dataset, snapshots and the lock file live (relative to
    /// the working directory when not absolute).
    pub data_dir: PathBuf,
    /// The event format.
    pub event: EventConfig,
    /// Where events come from.
    pub sources: Vec<SourceConfig>,
    /// The speed layer.
    pub speed: SpeedConfig,
    /// The batch layer.
    pub batch: BatchConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// The master dataset.
    pub master: MasterConfig,
    /// The views, in config order.
    pub views: Vec<Arc<ViewSpec>>,
    /// The fields the views use, compiled into slots.
    #[serde(skip)]
    pub schema: Arc<Schema>,
}

/// `[event]`: how events are read.
#[derive(Debug, Clone, Serialize)]
pub struct EventConfig {
    /// Field holding the event id; duplicates (same id) are counted once by the batch layer.
    pub id: Option<String>,
    /// Field holding the event time (RFC 3339 or epoch milliseconds); absent means ingest time.
    pub time: Option<String>,
    /// Larger messages are rejected as `too_large`. Default 65536.
    pub max_bytes: usize,
}

/// One `[[source]]`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceConfig {
    /// Unique name, used in logs, metrics and the status API.
    pub name: String,
    /// What kind of source, with its settings.
    pub kind: SourceKind,
}

/// The kinds of source.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceKind {
    /// A RabbitMQ queue.
    Rabbitmq(RabbitmqSource),
    /// Events pushed to `POST /v1/events` on the HTTP listener.
    Http(HttpSource),
    /// Generated orders: the reference e-commerce workload at a steady rate.
    Demo(DemoSource),
}

impl SourceKind {
    /// The `type` of the source, as the config writes it.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Rabbitmq(_) => "rabbitmq",
            SourceKind::Http(_) => "http",
            SourceKind::Demo(_) => "demo",
        }
    }
}

/// `type = "demo"`: generates orders of the reference workload
/// ([`crate::workload`]) into the pipeline, recorded, deduplicated, batched
/// and served like any other source. Order ids carry the source's start
/// time, so a restarted demo never repeats an id of an earlier run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoSource {
    /// Events per second (1..=1000000). Default 500.
    pub rate: u32,
    /// Seed of the generator. Default 1.
    pub seed: u64,
    /// Stop after this many events (duplicates not counted); none: run until stopped.
    pub events: Option<u64>,
    /// Share of events whose time lies up to `late_max` in the past. Default 0.02.
    pub late_frac: f64,
    /// How late a late event is at most. Default 10m.
    #[serde(serialize_with = "serialize_duration")]
    pub late_max: Duration,
    /// Share of events sent twice. Default 0.005.
    pub dup_frac: f64,
    /// Share of events replaced by a malformed line. Default 0.
    pub bad_frac: f64,
}

/// `type = "http"`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpSource {
    /// Largest request body accepted, bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Most events in one request. Default 10000.
    pub max_events: usize,
}

/// `type = "rabbitmq"`.
#[derive(Debug, Clone, Serialize)]
pub struct RabbitmqSource {
    /// AMQP URI of the broker (`amqp://` or `amqps://`).
    #[serde(skip)]
    pub uri: String,
    /// Durable queue consumed; declared when missing.
    pub queue: String,
    /// Unacknowledged deliveries the broker may send ahead (1..=65535). More
    /// gives throughput, and costs memory while batches wait to become durable.
    /// Default 2000.
    pub prefetch: u16,
    /// Where rejected messages go, with the reason in a header; default `<queue>.dead`.
    pub dead_letter_queue: String,
}

/// `[speed]`.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedConfig {
    /// Number of speed actors; each key is owned by exactly one (1..=256). Default 4.
    pub partitions: u16,
}

/// `[batch]`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchConfig {
    /// How often a new epoch starts and a recompute runs (at least 1s). Default 60s.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// Snapshots kept on disk, the newest included (1..=100). Default 2:
    /// queries with `at_epoch` read the older ones.
    pub keep_snapshots: usize,
    /// A batch run reads the whole master dataset (every view from it, every
    /// record's crc checked) when the last one that did is older than this
    /// (1ms..=366d). Default 1d. The runs between start from the batch cache.
    #[serde(serialize_with = "serialize_duration")]
    pub full_run_every: Duration,
    /// What carries out the batch runs.
    #[serde(flatten)]
    pub engine: BatchEngine,
}

impl BatchEngine {
    /// With Spark, where its job, outputs and logs go: `batch.spark_dir`,
    /// or `<data_dir>/spark`.
    pub fn spark_dir(&self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            BatchEngine::Native => None,
            BatchEngine::Spark { dir, .. } => {
                Some(dir.clone().unwrap_or_else(|| data_dir.join("spark")))
            }
        }
    }
}

/// `batch.engine`: what computes the batch views of a sealed epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "engine", rename_all = "snake_case")]
pub enum BatchEngine {
    /// tandem's own batch run (the default).
    Native,
    /// Apache Spark: for each sealed epoch, once `master.parquet_dir` holds
    /// it, `submit` runs the job `tandem spark-job` writes, and its output
    /// is imported as the snapshot ([`crate::spark`]).
    Spark {
        /// The command line that runs a PySpark program, before the program
        /// and its arguments: `["spark-submit", "--master", "..."]`.
        submit: Vec<String>,
        /// A run still going after this long is killed and fails. Default 1h.
        #[serde(serialize_with = "serialize_duration")]
        timeout: Duration,
        /// Where the job, its output and its log go: storage the cluster
        /// writes and tandem reads. Default `<data_dir>/spark`.
        #[serde(skip_serializing_if = "Option::is_none")]
        dir: Option<PathBuf>,
    },
}

/// `[http]`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    /// Address the API listens on. Default 127.0.0.1:8080. An address that is
    /// not loopback needs a token, or `allow_unauthenticated`.
    pub listen: SocketAddr,
    /// Environment variable holding a bearer token of the admin role (every
    /// route); when set, every route but the health checks needs a token.
    pub auth_token_env: Option<String>,
    /// The bearer tokens, each with its role: `auth_token_env` (admin) first,
    /// then every `[[http.token]]`. Empty: the API is open.
    pub tokens: Vec<TokenSpec>,
    /// Listen on an address that is not loopback without a token, knowingly.
    pub allow_unauthenticated: bool,
    /// On SIGTERM, how long the API goes on answering once the sources have
    /// drained: a push then gets 503 with `Retry-After` rather than a closed
    /// port, and a load balancer sees `/readyz` fail. Default 1 s.
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_grace: Duration,
    /// `[http.tls]`: serve HTTPS only, with this certificate and key.
    pub tls: Option<TlsConfig>,
}

impl HttpConfig {
    /// Why the API would be open to the network by mistake: it listens on an
    /// address that is not loopback, no token is configured, and
    /// `allow_unauthenticated` is not set. Not a config error, since commands
    /// that do not listen (`tandem recompute`) take such a config: `tandem
    /// check` reports it as an error, and `tandem run` refuses to start.
    pub fn exposure(&self) -> Option<String> {
        let exposed = !self.listen.ip().is_loopback()
            && self.tokens.is_empty()
            && !self.allow_unauthenticated;
        exposed.then(|| {
            format!(
                "{} is not a loopback address and no token is set, so anyone who can reach it \
                 could push events, start batch runs and read every view: set a token \
                 (http.auth_token_env = \"VAR\", or [[http.token]] with a role and an env or file), \
                 or set http.allow_unauthenticated = true to accept that knowingly",
                self.listen
            )
        })
    }
}

/// `[http.tls]`: PEM files, read at start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What a bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, status, metrics, the dashboard's data.
    Read,
    /// `POST /v1/events`.
    Ingest,
    /// Everything, including what changes state (`POST /v1/recompute`).
    Admin,
}

impl Role {
    /// The roles, by name.
    pub const ALL: [(&'static str, Role); 3] = [
        ("read", Role::Read),
        ("ingest", Role::Ingest),
        ("admin", Role::Admin),
    ];

    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
            Role::Admin => "admin",
        }
    }

    /// Whether a token of this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

/// Where a token is read from, at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFrom {
    /// An environment variable.
    Env(String),
    /// A file (a secret mounted by an orchestrator); one trailing newline is dropped.
    File(PathBuf),
}

/// `[[http.token]]`: a bearer token and its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenSpec {
    /// What it may do.
    pub role: Role,
    /// Where it is read from.
    pub from: TokenFrom,
    /// Its key in the config, for errors (`http.token[1]`, `http.auth_token_env`).
    pub key: String,
    /// Whether the API may start without it (`http.auth_token_env`, "when
    /// the variable is set"): on a loopback address only.
    pub optional: bool,
}

impl TokenSpec {
    /// The token's text.
    ///
    /// # Errors
    /// The variable is not set or empty, or the file cannot be read or is
    /// empty: one line that names the config key and the variable or file.
    pub fn read(&self) -> Result<String, String> {
        let (text, from) = match &self.from {
            TokenFrom::Env(var) => (std::env::var(var).ok(), format!("the variable {var}")),
            TokenFrom::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => (Some(text), format!("the file {}", path.display())),
                Err(err) => {
                    return Err(format!(
                        "{}: cannot read {}: {err}",
                        self.key,
                        path.display()
                    ));
                }
            },
        };
        let text = text.unwrap_or_default();
        let token = text
            .strip_suffix('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .unwrap_or(&text);
        if token.is_empty() {
            return Err(format!(
                "{}: {from} is not set or empty, so the {} token has no value",
                self.key,
                self.role.as_str()
            ));
        }
        Ok(token.to_owned())
    }
}

/// `[master]`.
#[derive(Debug, Clone, Serialize)]
pub struct MasterConfig {
    /// A segment file is closed and a new one started past this size
    /// (1 MiB ..= 4 GiB). Default 64 MiB.
    pub segment_max_bytes: u64,
    /// When set, every sealed epoch is exported there as Parquet
    /// ([`crate::export`]), off the async threads.
    pub parquet_dir: Option<PathBuf>,
}

fn serialize_duration<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

/// Formats a duration in the largest unit that divides it: `90s`, `5m`, `1d`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given.
    pub file: String,
    /// The key path, arrays indexed from 0: `view[1].metrics[2].field`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// The line, when the TOML parser knows it.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.problem)
    }
}

/// Every problem found in a config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// Every problem found, or the read error, each naming the file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                key: String::new(),
                problem: format!("cannot read: {err}"),
                line: None,
            }])
        })?;
        Config::parse(&text, &file)
    }

    /// Validates config text; `file` names it in errors. `${VAR}` references
    /// are taken from the process environment.
    ///
    /// # Errors
    /// Every problem found.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        validate::parse(text, file, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::parse`], with `${VAR}` references taken from `env`.
    ///
    /// # Errors
    /// Every problem found.
    pub fn parse_with_env(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        validate::parse(text, file, env)
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<&Arc<ViewSpec>> {
        self.views.iter().find(|view| view.name == name)
    }
}

/// Parses a duration with one unit: `500ms`, `30s`, `5m`, `1h`, `7d`.
///
/// # Errors
/// A phrase saying what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let expected = || {
        format!(
            "{text:?} is not a duration: expected a whole number and a unit (ms, s, m, h, d), e.g. \"60s\""
        )
    };
    let amount: u64 = digits.parse().map_err(|_| expected())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(expected()),
    };
    amount
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A config of one view counting events per key `k` and minute, for unit tests.
#[cfg(test)]
pub(crate) const ONE_COUNT_VIEW: &str = r#"
    data_dir = "d"
    [event]
    id = "id"
    [[view]]
    name = "v"
    key = ["k"]
    bucket = "1m"
    metrics = [{ name = "n", agg = "count" }]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_one_unit() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "s", "10", "1.5s", "5 minutes", "-1s", "1w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_format_in_their_largest_unit() {
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
