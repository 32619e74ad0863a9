//! `RawConfig` to `Config`: checks the meaning of every setting and collects
//! every problem before returning, so one `tandem check` shows them all.

use super::raw::{RawBatch, RawConfig, RawMetric, RawSource, RawToken, RawView};
use super::{
    BatchConfig, BatchEngine, Config, ConfigError, ConfigErrors, DemoSource, EventConfig,
    HttpConfig, HttpSource, MasterConfig, RabbitmqSource, Role, SourceConfig, SourceKind,
    SpeedConfig, TlsConfig, TokenFrom, TokenSpec, parse_duration,
};
use crate::aggregate::{Agg, MetricSpec, ViewSpec};
use crate::event::{Need, Schema};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_MAX_BYTES: u64 = 65_536;
const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_PREFETCH: u64 = 2_000;
const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
const MAX_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
const DEFAULT_MAX_EVENTS: u64 = 10_000;
const MAX_MAX_EVENTS: u64 = 1_000_000;
const DEFAULT_RATE: u64 = 500;
const MAX_RATE: u64 = 1_000_000;
const DEFAULT_PARTITIONS: u64 = 4;
const MAX_PARTITIONS: u64 = 256;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Snapshots kept on disk by default: the served one and the one before.
const DEFAULT_KEEP_SNAPSHOTS: u64 = 2;
/// A batch run reads the whole master dataset at least this often.
const DEFAULT_FULL_RUN_EVERY: Duration = Duration::from_secs(86_400);
/// How long a Spark run may take by default.
const DEFAULT_SPARK_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Most snapshots kept: each is a whole copy of the views.
const MAX_KEEP_SNAPSHOTS: u64 = 100;
/// How long the API answers 503 after the sources drained on SIGTERM.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES: u64 = 1024 * 1024;
const MAX_SEGMENT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
const MIN_BUCKET: Duration = Duration::from_secs(1);
const MAX_BUCKET: Duration = Duration::from_secs(86_400);

/// Problems collected so far.
struct Problems<'a> {
    file: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn push(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            problem: problem.into(),
            line: None,
        });
    }

    /// `value`, or a "missing" problem at `key`.
    fn required<T>(&mut self, value: Option<T>, key: &str) -> Option<T> {
        if value.is_none() {
            self.push(key, "is required");
        }
        value
    }

    /// A name used in URLs, metric labels and logs.
    fn name(&mut self, value: Option<String>, key: &str) -> Option<String> {
        let name = self.required(value, key)?;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            self.push(
                key,
                format!("{name:?} is not a valid name: use letters, digits, '_' and '-'"),
            );
            return None;
        }
        Some(name)
    }

    /// A JSON member name.
    fn field(&mut self, value: Option<String>, key: &str) -> Option<String> {
        let field = value?;
        if field.is_empty() {
            self.push(key, "a field name cannot be empty");
            return None;
        }
        Some(field)
    }

    fn duration(
        &mut self,
        value: Option<&str>,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let duration = match parse_duration(value?) {
            Ok(duration) => duration,
            Err(problem) => {
                self.push(key, problem);
                return None;
            }
        };
        if duration < min || duration > max {
            let (min, max) = (super::format_duration(min), super::format_duration(max));
            self.push(
                key,
                format!(
                    "{} is out of range: must lie within {min}..={max}",
                    super::format_duration(duration)
                ),
            );
            return None;
        }
        Some(duration)
    }

    /// A share within 0..=1.
    fn fraction(&mut self, value: Option<f64>, key: &str, default: f64) -> Option<f64> {
        let value = value.unwrap_or(default);
        if !(0.0..=1.0).contains(&value) {
            self.push(
                key,
                format!("{value} is out of range: a share lies within 0..=1"),
            );
            return None;
        }
        Some(value)
    }

    fn range(&mut self, value: u64, key: &str, min: u64, max: u64) -> Option<u64> {
        if value < min || value > max {
            self.push(
                key,
                format!("{value} is out of range: must lie within {min}..={max}"),
            );
            return None;
        }
        Some(value)
    }
}

pub(super) fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut raw = deserialize(text, file).map_err(|error| ConfigErrors(vec![*error]))?;
    let mut problems = Problems {
        file,
        list: Vec::new(),
    };
    let mut env_problems = Vec::new();
    raw.expand_env(env, &mut env_problems);
    for (key, problem) in env_problems {
        problems.push(key, problem);
    }
    let config = validate(raw, &mut problems);
    match config {
        Some(config) if problems.list.is_empty() => Ok(config),
        _ => Err(ConfigErrors(problems.list)),
    }
}

/// Phase one: the TOML syntax and the shape of every table, with the key
/// path, the line and that line's text.
fn deserialize(text: &str, file: &str) -> Result<RawConfig, Box<ConfigError>> {
    let error = |key: String, message: &str, span: Option<std::ops::Range<usize>>| {
        let start = span.map(|span| span.start.min(text.len()));
        let line = start.map(|start| text[..start].matches('\n').count() + 1);
        let shown = start
            .and_then(|start| text[start..].lines().next().map(|rest| (start, rest)))
            .map(|(start, rest)| {
                let begin = text[..start].rfind('\n').map_or(0, |newline| newline + 1);
                format!("{}{rest}", &text[begin..start])
            })
            .map(|whole| whole.trim().to_owned())
            .filter(|whole| !whole.is_empty());
        let problem = match shown {
            Some(whole) => format!("{}, in: {whole}", plain_words(message)),
            None => plain_words(message),
        };
        Box::new(ConfigError {
            file: file.to_owned(),
            key,
            problem,
            line,
        })
    };
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|err| error(String::new(), err.message(), err.span()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let key = if key == "." { String::new() } else { key };
        error(key, inner.message(), inner.span())
    })
}

/// serde's "invalid type: string \"x\", expected a number" as "expected a
/// number, found string \"x\"": what the user must write comes first, and
/// serde's "sequence" and "map" are TOML's list and table.
fn plain_words(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let found = match found {
                "sequence" => "a list",
                "map" => "a table",
                other => other,
            };
            return format!("expected {expected}, found {found}");
        }
    }
    message.trim().to_owned()
}

/// Phase two: the meaning of every setting.
fn validate(raw: RawConfig, problems: &mut Problems<'_>) -> Option<Config> {
    let data_dir = match raw.data_dir {
        Some(dir) if dir.trim().is_empty() => {
            problems.push("data_dir", "cannot be empty");
            None
        }
        dir => problems.required(dir, "data_dir"),
    };

    let id = problems.field(raw.event.id, "event.id");
    let time = problems.field(raw.event.time, "event.time");
    let max_bytes = problems.range(
        raw.event.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
        "event.max_bytes",
        1,
        MAX_MAX_BYTES,
    );

    let mut source_names = HashSet::new();
    let mut sources = Vec::new();
    for (i, source) in raw.source.into_iter().enumerate() {
        if let Some(source) = validate_source(source, i, problems) {
            if !source_names.insert(source.name.clone()) {
                problems.push(
                    format!("source[{i}].name"),
                    format!("{:?} is already the name of another source", source.name),
                );
            }
            sources.push(source);
        }
    }
    if sources
        .iter()
        .filter(|source| matches!(source.kind, SourceKind::Http(_)))
        .count()
        > 1
    {
        problems.push(
            "source",
            "at most one source of type \"http\": every http source would share POST /v1/events",
        );
    }

    let partitions = problems.range(
        raw.speed.partitions.unwrap_or(DEFAULT_PARTITIONS),
        "speed.partitions",
        1,
        MAX_PARTITIONS,
    );
    let interval = match raw.batch.interval.as_deref() {
        Some(text) => problems.duration(
            Some(text),
            "batch.interval",
            Duration::from_secs(1),
            Duration::from_secs(7 * 86_400),
        ),
        None => Some(DEFAULT_INTERVAL),
    };
    let full_run_every = match raw.batch.full_run_every.as_deref() {
        Some(text) => problems.duration(
            Some(text),
            "batch.full_run_every",
            Duration::from_millis(1),
            Duration::from_secs(366 * 86_400),
        ),
        None => Some(DEFAULT_FULL_RUN_EVERY),
    };
    let engine = validate_engine(&raw.batch, raw.master.parquet_dir.is_some(), problems);
    let keep_snapshots = problems.range(
        raw.batch.keep_snapshots.unwrap_or(DEFAULT_KEEP_SNAPSHOTS),
        "batch.keep_snapshots",
        1,
        MAX_KEEP_SNAPSHOTS,
    );
    let listen = raw.http.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = match listen.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(
                "http.listen",
                format!("{listen:?} is not an address: expected IP:PORT, e.g. \"127.0.0.1:8080\""),
            );
            None
        }
    };
    let auth_token_env = problems.field(raw.http.auth_token_env, "http.auth_token_env");
    let mut tokens: Vec<TokenSpec> = auth_token_env
        .iter()
        .map(|var| TokenSpec {
            role: Role::Admin,
            from: TokenFrom::Env(var.clone()),
            key: "http.auth_token_env".to_owned(),
            optional: true,
        })
        .collect();
    for (i, token) in raw.http.token.into_iter().enumerate() {
        tokens.extend(validate_token(token, i, problems));
    }
    let allow_unauthenticated = raw.http.allow_unauthenticated.unwrap_or(false);
    let shutdown_grace = match raw.http.shutdown_grace.as_deref() {
        Some(text) => problems.duration(
            Some(text),
            "http.shutdown_grace",
            Duration::ZERO,
            Duration::from_secs(60),
        ),
        None => Some(DEFAULT_SHUTDOWN_GRACE),
    };
    // [http.tls]: both files named; they are read at start (and on SIGHUP).
    let tls = raw.http.tls.map(|tls| {
        let mut path = |value: Option<String>, key: &str, what: &str| {
            let path = value.filter(|path| !path.is_empty());
            if path.is_none() {
                problems.push(
                    key,
                    format!("is required with [http.tls]: the PEM file of {what}"),
                );
            }
            path.map(PathBuf::from)
        };
        let cert = path(tls.cert, "http.tls.cert", "the certificate chain");
        let key = path(tls.key, "http.tls.key", "the private key");
        Some(TlsConfig {
            cert: cert?,
            key: key?,
        })
    });
    let segment_max_bytes = problems.range(
        raw.master
            .segment_max_bytes
            .unwrap_or(DEFAULT_SEGMENT_BYTES),
        "master.segment_max_bytes",
        MIN_SEGMENT_BYTES,
        MAX_SEGMENT_BYTES,
    );

    let mut schema = Schema::new(
        id.as_deref(),
        time.as_deref(),
        max_bytes.unwrap_or(1) as usize,
    );
    if raw.view.is_empty() {
        problems.push("view", "at least one [[view]] is required");
    }
    let parquet_dir = match raw.master.parquet_dir {
        Some(dir) if dir.trim().is_empty() => {
            problems.push("master.parquet_dir", "cannot be empty");
            None
        }
        dir => dir.map(PathBuf::from),
    };
    let mut view_names = HashSet::new();
    let mut views = Vec::new();
    for (i, view) in raw.view.into_iter().enumerate() {
        if let Some(view) = validate_view(view, i, &mut schema, problems) {
            if !view_names.insert(view.name.clone()) {
                problems.push(
                    format!("view[{i}].name"),
                    format!("{:?} is already the name of another view", view.name),
                );
            }
            views.push(Arc::new(view));
        }
    }
    if parquet_dir.is_some()
        && let Err(err) = crate::export::check_columns(&schema, &views)
    {
        problems.push("master.parquet_dir", err.to_string());
    }

    Some(Config {
        data_dir: data_dir?.into(),
        event: EventConfig {
            id,
            time,
            max_bytes: max_bytes? as usize,
        },
        sources,
        speed: SpeedConfig {
            partitions: partitions? as u16,
        },
        batch: BatchConfig {
            interval: interval?,
            keep_snapshots: keep_snapshots? as usize,
            full_run_every: full_run_every?,
            engine: engine?,
        },
        http: HttpConfig {
            listen: listen?,
            auth_token_env,
            tokens,
            allow_unauthenticated,
            shutdown_grace: shutdown_grace?,
            tls: tls.map_or(Some(None), |tls| tls.map(Some))?,
        },
        master: MasterConfig {
            segment_max_bytes: segment_max_bytes?,
            parquet_dir,
        },
        views,
        schema: Arc::new(schema),
    })
}

/// `batch.engine`, and for Spark its `submit` and `spark_timeout`.
fn validate_engine(
    batch: &RawBatch,
    parquet_dir: bool,
    problems: &mut Problems,
) -> Option<BatchEngine> {
    match batch.engine.as_deref().unwrap_or("native") {
        "native" => {
            for (given, key) in [
                (batch.submit.is_some(), "batch.submit"),
                (batch.spark_timeout.is_some(), "batch.spark_timeout"),
                (batch.spark_dir.is_some(), "batch.spark_dir"),
            ] {
                if given {
                    problems.push(key, "is used only with batch.engine = \"spark\"");
                }
            }
            Some(BatchEngine::Native)
        }
        "spark" => {
            if !parquet_dir {
                problems.push(
                    "batch.engine",
                    "\"spark\" reads the master dataset as Parquet: set master.parquet_dir (shared storage the Spark cluster reads)",
                );
            }
            let submit = match batch.submit.clone() {
                Some(submit)
                    if submit
                        .first()
                        .is_some_and(|program| !program.trim().is_empty()) =>
                {
                    Some(submit)
                }
                Some(_) => {
                    problems.push("batch.submit", "must name a program first, e.g. [\"spark-submit\", \"--master\", \"yarn\"]");
                    None
                }
                None => {
                    problems.push(
                        "batch.submit",
                        "is required with batch.engine = \"spark\": the command that runs a PySpark program, e.g. [\"spark-submit\", \"--master\", \"yarn\"]",
                    );
                    None
                }
            };
            let timeout = match batch.spark_timeout.as_deref() {
                Some(text) => problems.duration(
                    Some(text),
                    "batch.spark_timeout",
                    Duration::from_secs(1),
                    Duration::from_secs(7 * 86_400),
                ),
                None => Some(DEFAULT_SPARK_TIMEOUT),
            };
            let dir = match batch.spark_dir.as_deref() {
                Some(dir) if dir.trim().is_empty() => {
                    problems.push("batch.spark_dir", "cannot be empty");
                    return None;
                }
                dir => dir.map(PathBuf::from),
            };
            Some(BatchEngine::Spark {
                submit: submit?,
                timeout: timeout?,
                dir,
            })
        }
        other => {
            problems.push(
                "batch.engine",
                format!("{other:?} is not an engine: use \"native\" or \"spark\""),
            );
            None
        }
    }
}

/// One `[[http.token]]`: a role and exactly one of `env` and `file`.
fn validate_token(token: RawToken, i: usize, problems: &mut Problems) -> Option<TokenSpec> {
    let key = format!("http.token[{i}]");
    let names = || {
        Role::ALL
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let role = match token.role.as_deref() {
        None => {
            problems.push(
                format!("{key}.role"),
                format!("a token needs a role: one of {}", names()),
            );
            None
        }
        Some(text) => {
            let role = Role::ALL
                .iter()
                .find(|(name, _)| *name == text)
                .map(|(_, role)| *role);
            if role.is_none() {
                problems.push(
                    format!("{key}.role"),
                    format!("{text:?} is not a role: one of {}", names()),
                );
            }
            role
        }
    };
    let from = match (token.env, token.file) {
        (Some(var), None) if !var.is_empty() => Some(TokenFrom::Env(var)),
        (None, Some(path)) if !path.is_empty() => Some(TokenFrom::File(path.into())),
        (Some(_), Some(_)) => {
            problems.push(key.clone(), "set env or file, not both");
            None
        }
        _ => {
            problems.push(
                key.clone(),
                "set env (an environment variable holding the token) or file (a file holding it)",
            );
            None
        }
    };
    Some(TokenSpec {
        role: role?,
        from: from?,
        key,
        optional: false,
    })
}

/// The `type`s a source can have.
const SOURCE_TYPES: [&str; 3] = ["rabbitmq", "http", "demo"];

fn validate_source(raw: RawSource, i: usize, problems: &mut Problems<'_>) -> Option<SourceConfig> {
    let at = |key: &str| format!("source[{i}].{key}");
    let name = problems.name(raw.name, &at("name"));
    let kind = problems.required(raw.kind, &at("type"))?;
    // Which settings each type takes.
    let settings: [(&str, bool, &[&str]); 13] = [
        ("uri", raw.uri.is_some(), &["rabbitmq"]),
        ("queue", raw.queue.is_some(), &["rabbitmq"]),
        ("prefetch", raw.prefetch.is_some(), &["rabbitmq"]),
        (
            "dead_letter_queue",
            raw.dead_letter_queue.is_some(),
            &["rabbitmq"],
        ),
        ("max_body_bytes", raw.max_body_bytes.is_some(), &["http"]),
        ("max_events", raw.max_events.is_some(), &["http"]),
        ("rate", raw.rate.is_some(), &["demo"]),
        ("seed", raw.seed.is_some(), &["demo"]),
        ("events", raw.events.is_some(), &["demo"]),
        ("late_frac", raw.late_frac.is_some(), &["demo"]),
        ("late_max", raw.late_max.is_some(), &["demo"]),
        ("dup_frac", raw.dup_frac.is_some(), &["demo"]),
        ("bad_frac", raw.bad_frac.is_some(), &["demo"]),
    ];
    if SOURCE_TYPES.contains(&kind.as_str()) {
        for (key, set, types) in settings {
            if set && !types.contains(&kind.as_str()) {
                problems.push(
                    at(key),
                    format!("is not a setting of a source of type {kind:?}"),
                );
            }
        }
    }
    match kind.as_str() {
        "rabbitmq" => {
            let uri = problems.required(raw.uri, &at("uri"));
            if let Some(uri) = &uri
                && let Err(problem) = uri.parse::<lapin::uri::AMQPUri>()
            {
                problems.push(at("uri"), format!("not an AMQP URI: {problem}"));
            }
            let queue = problems.required(raw.queue, &at("queue"));
            let queue = queue.filter(|queue| queue_name(queue, &at("queue"), problems));
            let prefetch = problems.range(
                raw.prefetch.unwrap_or(DEFAULT_PREFETCH),
                &at("prefetch"),
                1,
                u64::from(u16::MAX),
            );
            let dead_letter_queue = match (raw.dead_letter_queue, &queue) {
                (Some(dlq), _) => {
                    Some(dlq).filter(|dlq| queue_name(dlq, &at("dead_letter_queue"), problems))
                }
                (None, Some(queue)) => Some(format!("{queue}.dead")),
                (None, None) => None,
            };
            if let (Some(queue), Some(dlq)) = (&queue, &dead_letter_queue)
                && queue == dlq
            {
                problems.push(
                    at("dead_letter_queue"),
                    "must differ from the queue it serves",
                );
            }
            Some(SourceConfig {
                name: name?,
                kind: SourceKind::Rabbitmq(RabbitmqSource {
                    uri: uri?,
                    queue: queue?,
                    prefetch: prefetch? as u16,
                    dead_letter_queue: dead_letter_queue?,
                }),
            })
        }
        "http" => {
            let max_body_bytes = problems.range(
                raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
                &at("max_body_bytes"),
                1,
                MAX_MAX_BODY_BYTES,
            );
            let max_events = problems.range(
                raw.max_events.unwrap_or(DEFAULT_MAX_EVENTS),
                &at("max_events"),
                1,
                MAX_MAX_EVENTS,
            );
            Some(SourceConfig {
                name: name?,
                kind: SourceKind::Http(HttpSource {
                    max_body_bytes: max_body_bytes? as usize,
                    max_events: max_events? as usize,
                }),
            })
        }
        "demo" => {
            let rate = problems.range(raw.rate.unwrap_or(DEFAULT_RATE), &at("rate"), 1, MAX_RATE);
            let events = match raw.events {
                Some(events) => problems.range(events, &at("events"), 1, u64::MAX).map(Some),
                None => Some(None),
            };
            let defaults = crate::workload::Workload::default();
            let late_max = match raw.late_max.as_deref() {
                Some(text) => problems.duration(
                    Some(text),
                    &at("late_max"),
                    Duration::ZERO,
                    Duration::from_secs(7 * 86_400),
                ),
                None => Some(Duration::from_millis(defaults.late_max_ms as u64)),
            };
            let late_frac = problems.fraction(raw.late_frac, &at("late_frac"), defaults.late_frac);
            let dup_frac = problems.fraction(raw.dup_frac, &at("dup_frac"), defaults.dup_frac);
            let bad_frac = problems.fraction(raw.bad_frac, &at("bad_frac"), defaults.bad_frac);
            Some(SourceConfig {
                name: name?,
                kind: SourceKind::Demo(DemoSource {
                    rate: rate? as u32,
                    seed: raw.seed.unwrap_or(defaults.seed),
                    events: events?,
                    late_frac: late_frac?,
                    late_max: late_max?,
                    dup_frac: dup_frac?,
                    bad_frac: bad_frac?,
                }),
            })
        }
        other => {
            problems.push(
                at("type"),
                format!(
                    "unknown source type {other:?}: expected one of {}",
                    SOURCE_TYPES
                        .iter()
                        .map(|kind| format!("{kind:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            None
        }
    }
}

fn queue_name(queue: &str, key: &str, problems: &mut Problems<'_>) -> bool {
    if queue.is_empty() || queue.len() > 255 {
        problems.push(key, "a queue name must be 1 to 255 bytes long");
        return false;
    }
    true
}

fn validate_view(
    raw: RawView,
    i: usize,
    schema: &mut Schema,
    problems: &mut Problems<'_>,
) -> Option<ViewSpec> {
    let at = |key: &str| format!("view[{i}].{key}");
    let name = problems.name(raw.name, &at("name"));
    let key = problems.required(raw.key, &at("key"));
    let mut key_slots = Vec::new();
    if let Some(key) = &key {
        if key.is_empty() {
            problems.push(at("key"), "needs at least one field");
        }
        let mut seen = HashSet::new();
        for (k, field) in key.iter().enumerate() {
            if field.is_empty() {
                problems.push(at(&format!("key[{k}]")), "a field name cannot be empty");
            } else if !seen.insert(field) {
                problems.push(
                    at(&format!("key[{k}]")),
                    format!("field {field:?} appears twice in the key"),
                );
            } else {
                key_slots.push(schema.slot(field, Need::Scalar, true));
            }
        }
    }
    let bucket = problems.required(raw.bucket, &at("bucket"));
    let bucket = problems.duration(bucket.as_deref(), &at("bucket"), MIN_BUCKET, MAX_BUCKET);
    if let Some(bucket) = bucket
        && bucket.as_millis() % 1000 != 0
    {
        problems.push(at("bucket"), "must be a whole number of seconds");
    }
    let retention = match raw.retention.as_deref() {
        Some(text) => {
            let retention = problems.duration(
                Some(text),
                &at("retention"),
                MIN_BUCKET,
                Duration::from_secs(100 * 365 * 86_400),
            );
            if let (Some(retention), Some(bucket)) = (retention, bucket)
                && retention < bucket
            {
                problems.push(at("retention"), "must be at least one bucket long");
            }
            retention.map(Some)
        }
        None => Some(None),
    };
    let raw_metrics = problems.required(raw.metrics, &at("metrics"));
    let mut metrics = Vec::new();
    let mut metric_names = HashSet::new();
    if let Some(raw_metrics) = raw_metrics {
        if raw_metrics.is_empty() {
            problems.push(at("metrics"), "needs at least one metric");
        }
        for (m, metric) in raw_metrics.into_iter().enumerate() {
            if let Some(metric) =
                validate_metric(metric, &at(&format!("metrics[{m}]")), schema, problems)
            {
                if !metric_names.insert(metric.name.clone()) {
                    problems.push(
                        at(&format!("metrics[{m}].name")),
                        format!(
                            "{:?} is already the name of another metric of this view",
                            metric.name
                        ),
                    );
                }
                metrics.push(metric);
            }
        }
    }
    Some(ViewSpec {
        name: name?,
        key: key?,
        key_slots,
        bucket_ms: bucket?.as_millis() as i64,
        retention_ms: retention?.map(|retention| retention.as_millis() as i64),
        metric_names: metrics
            .iter()
            .map(|metric| Arc::clone(&metric.name))
            .collect(),
        metrics,
    })
}

fn validate_metric(
    raw: RawMetric,
    at: &str,
    schema: &mut Schema,
    problems: &mut Problems<'_>,
) -> Option<MetricSpec> {
    let key = |name: &str| format!("{at}.{name}");
    let name = problems.name(raw.name, &key("name"));
    let agg_name = problems.required(raw.agg, &key("agg"))?;
    let agg = match agg_name.as_str() {
        "count" => Agg::Count,
        "sum" => Agg::Sum,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "mean" => Agg::Mean,
        "distinct" => Agg::Distinct,
        "quantile" => match raw.q {
            Some(q) if (0.0..=1.0).contains(&q) => Agg::Quantile { q },
            Some(q) => {
                problems.push(
                    key("q"),
                    format!("{q} is out of range: a quantile lies within 0..=1"),
                );
                return None;
            }
            None => {
                problems.push(key("q"), "is required for agg \"quantile\" (e.g. q = 0.95)");
                return None;
            }
        },
        other => {
            problems.push(
                key("agg"),
                format!(
                    "unknown aggregation {other:?}: expected one of {}",
                    Agg::NAMES.join(", ")
                ),
            );
            return None;
        }
    };
    if raw.q.is_some() && !matches!(agg, Agg::Quantile { .. }) {
        problems.push(
            key("q"),
            format!("only agg \"quantile\" takes q, not {:?}", agg.name()),
        );
    }
    let field = problems.field(raw.field, &key("field"));
    let slot = match (&agg, &field) {
        (Agg::Count, Some(_)) => {
            problems.push(
                key("field"),
                "agg \"count\" counts events and takes no field",
            );
            return None;
        }
        (Agg::Count, None) => None,
        (agg, None) => {
            problems.push(
                key("field"),
                format!("is required for agg {:?}", agg.name()),
            );
            return None;
        }
        (agg, Some(field)) => {
            let need = if agg.needs_number() {
                Need::Number
            } else {
                Need::Scalar
            };
            Some(schema.slot(field, need, !agg.needs_number()))
        }
    };
    Some(MetricSpec {
        name: name?.into(),
        agg,
        field,
        slot,
    })
}
