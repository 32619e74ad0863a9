//! `RawConfig`: the serde mirror of the TOML file, before any meaning is checked.
//!
//! Every struct refuses unknown keys. Strings are kept as written (durations,
//! aggregations, addresses) so that `validate` can report every problem at once
//! instead of stopping at the first one serde meets. A value of the wrong
//! type is named in words a user knows ("a whole number", "a list of field
//! names", "a table"), never by a Rust type.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a TOML document")]
pub(crate) struct RawConfig {
    pub data_dir: Option<String>,
    #[serde(default)]
    pub event: RawEvent,
    #[serde(default, deserialize_with = "sources")]
    pub source: Vec<RawSource>,
    #[serde(default)]
    pub speed: RawSpeed,
    #[serde(default)]
    pub batch: RawBatch,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub master: RawMaster,
    #[serde(default, deserialize_with = "views")]
    pub view: Vec<RawView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [event]")]
pub(crate) struct RawEvent {
    pub id: Option<String>,
    pub time: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [[source]]")]
pub(crate) struct RawSource {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub uri: Option<String>,
    pub queue: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub prefetch: Option<u64>,
    pub dead_letter_queue: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_events: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub rate: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub seed: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub events: Option<u64>,
    #[serde(default, deserialize_with = "number")]
    pub late_frac: Option<f64>,
    pub late_max: Option<String>,
    #[serde(default, deserialize_with = "number")]
    pub dup_frac: Option<f64>,
    #[serde(default, deserialize_with = "number")]
    pub bad_frac: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [speed]")]
pub(crate) struct RawSpeed {
    #[serde(default, deserialize_with = "whole_number")]
    pub partitions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [batch]")]
pub(crate) struct RawBatch {
    pub interval: Option<String>,
    pub keep_snapshots: Option<u64>,
    pub full_run_every: Option<String>,
    pub engine: Option<String>,
    pub submit: Option<Vec<String>>,
    pub spark_timeout: Option<String>,
    pub spark_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [http]")]
pub(crate) struct RawHttp {
    pub listen: Option<String>,
    pub auth_token_env: Option<String>,
    pub shutdown_grace: Option<String>,
    pub allow_unauthenticated: Option<bool>,
    #[serde(default)]
    pub token: Vec<RawToken>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [http.tls]")]
pub(crate) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [[http.token]]")]
pub(crate) struct RawToken {
    pub role: Option<String>,
    pub env: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [master]")]
pub(crate) struct RawMaster {
    #[serde(default, deserialize_with = "whole_number")]
    pub segment_max_bytes: Option<u64>,
    pub parquet_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table: [[view]]")]
pub(crate) struct RawView {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "field_names")]
    pub key: Option<Vec<String>>,
    pub bucket: Option<String>,
    pub retention: Option<String>,
    #[serde(default, deserialize_with = "metrics")]
    pub metrics: Option<Vec<RawMetric>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a metric: a table like { name = \"orders\", agg = \"count\" }"
)]
pub(crate) struct RawMetric {
    pub name: Option<String>,
    pub agg: Option<String>,
    pub field: Option<String>,
    #[serde(default, deserialize_with = "number")]
    pub q: Option<f64>,
}

/// A TOML integer of at least 0.
struct WholeNumber;

impl Visitor<'_> for WholeNumber {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| {
            E::invalid_value(
                de::Unexpected::Signed(value),
                &"a whole number of at least 0",
            )
        })
    }
}

/// A TOML integer or float.
struct Number;

impl Visitor<'_> for Number {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
        Ok(value as f64)
    }
}

/// A TOML array, described in the user's words when something else is found.
struct List<T> {
    what: &'static str,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }
}

fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    deserializer.deserialize_seq(List {
        what,
        item: PhantomData,
    })
}

fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer.deserialize_u64(WholeNumber).map(Some)
}

fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    deserializer.deserialize_f64(Number).map(Some)
}

fn field_names<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    list(
        deserializer,
        "a list of field names, e.g. key = [\"product_id\"]",
    )
    .map(Some)
}

fn metrics<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<RawMetric>>, D::Error> {
    list(
        deserializer,
        "a list of metrics, e.g. metrics = [{ name = \"orders\", agg = \"count\" }]",
    )
    .map(Some)
}

fn sources<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RawSource>, D::Error> {
    list(deserializer, "a list of [[source]] tables")
}

fn views<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RawView>, D::Error> {
    list(deserializer, "a list of [[view]] tables")
}

impl RawConfig {
    /// Replaces `${VAR}` in every string with the environment variable's value,
    /// reporting each variable that is not set at the key where it appears.
    pub fn expand_env(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<(String, String)>,
    ) {
        let mut expand = |value: &mut Option<String>, key: String| {
            if let Some(text) = value.as_mut() {
                match expand_vars(text, env) {
                    Ok(expanded) => *text = expanded,
                    Err(problem) => problems.push((key, problem)),
                }
            }
        };
        expand(&mut self.data_dir, "data_dir".into());
        expand(&mut self.event.id, "event.id".into());
        expand(&mut self.event.time, "event.time".into());
        for (i, source) in self.source.iter_mut().enumerate() {
            expand(&mut source.name, format!("source[{i}].name"));
            expand(&mut source.kind, format!("source[{i}].type"));
            expand(&mut source.uri, format!("source[{i}].uri"));
            expand(&mut source.queue, format!("source[{i}].queue"));
            expand(
                &mut source.dead_letter_queue,
                format!("source[{i}].dead_letter_queue"),
            );
            expand(&mut source.late_max, format!("source[{i}].late_max"));
        }
        expand(&mut self.batch.interval, "batch.interval".into());
        expand(&mut self.http.listen, "http.listen".into());
        expand(&mut self.http.auth_token_env, "http.auth_token_env".into());
        for (i, token) in self.http.token.iter_mut().enumerate() {
            expand(&mut token.role, format!("http.token[{i}].role"));
            expand(&mut token.env, format!("http.token[{i}].env"));
            expand(&mut token.file, format!("http.token[{i}].file"));
        }
        if let Some(tls) = &mut self.http.tls {
            expand(&mut tls.cert, "http.tls.cert".into());
            expand(&mut tls.key, "http.tls.key".into());
        }
        for (i, view) in self.view.iter_mut().enumerate() {
            expand(&mut view.name, format!("view[{i}].name"));
            expand(&mut view.bucket, format!("view[{i}].bucket"));
            expand(&mut view.retention, format!("view[{i}].retention"));
            for (k, field) in view.key.iter_mut().flatten().enumerate() {
                let mut wrapped = Some(std::mem::take(field));
                expand(&mut wrapped, format!("view[{i}].key[{k}]"));
                *field = wrapped.unwrap_or_default();
            }
            for (m, metric) in view.metrics.iter_mut().flatten().enumerate() {
                expand(&mut metric.name, format!("view[{i}].metrics[{m}].name"));
                expand(&mut metric.agg, format!("view[{i}].metrics[{m}].agg"));
                expand(&mut metric.field, format!("view[{i}].metrics[{m}].field"));
            }
        }
    }
}

/// Expands `${NAME}` references; `$` followed by anything else stays as written.
fn expand_vars(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed \"${{\" in {text:?}"));
        };
        let name = &after[..end];
        if name.is_empty() {
            return Err(format!("empty variable name in {text:?}"));
        }
        match env(name) {
            Some(value) => out.push_str(&value),
            None => return Err(format!("environment variable {name:?} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand_vars;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "rabbit".to_owned())
    }

    #[test]
    fn expands_known_variables_and_keeps_plain_dollars() {
        assert_eq!(
            expand_vars("amqp://${HOST}:5672/$x", &env).as_deref(),
            Ok("amqp://rabbit:5672/$x")
        );
    }

    #[test]
    fn names_the_missing_variable() {
        let err = expand_vars("${NOPE}", &env).unwrap_err();
        assert!(err.contains("\"NOPE\""), "{err}");
    }

    #[test]
    fn refuses_an_unclosed_reference() {
        assert!(expand_vars("${HOST", &env).is_err());
    }
}
