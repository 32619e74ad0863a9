//! `tandem check`: every shipped config passes; each kind of mistake exits 2
//! and names the file, the key path and the problem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tandem_check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run tandem")
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml")
}

/// Writes the shipped config with `edit` applied and runs `tandem check` on it.
fn check_edited(edit: impl Fn(String) -> String) -> (i32, String) {
    let text = std::fs::read_to_string(shipped()).expect("read shipped config");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the config");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edited.toml");
    std::fs::write(&path, edited).expect("write config");
    let out = tandem_check(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("list config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let out = tandem_check(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn the_plan_lists_sources_views_metrics_and_buckets() {
    let out = tandem_check(&shipped());
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "orders  rabbitmq  queue=orders prefetch=2000 dead_letter_queue=orders.dead",
        "sales_by_product  key=[product_id]  bucket=1m  retention=7d",
        "sales_by_category  key=[category]  bucket=5m",
        "sales_by_country  key=[country]  bucket=1h",
        "p95_amount       quantile(amount, q=0.95)",
        "buyers           distinct(user_id)",
    ] {
        assert!(plan.contains(expected), "plan lacks {expected:?}:\n{plan}");
    }
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let (code, err) = check_edited(|text| text.replace("[speed]\n", "[speed]\npartitons = 4\n"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("edited.toml"), "{err}");
    assert!(
        err.contains("speed.partitons: unknown field `partitons`"),
        "{err}"
    );
}

#[test]
fn a_bad_duration_is_refused_by_key() {
    let (code, err) =
        check_edited(|text| text.replace("interval = \"60s\"", "interval = \"sixty\""));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("edited.toml: batch.interval: \"sixty\" is not a duration"),
        "{err}"
    );
}

#[test]
fn an_unknown_agg_is_refused_by_key() {
    let (code, err) = check_edited(|text| text.replacen("agg = \"mean\"", "agg = \"median\"", 1));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("view[0].metrics[4].agg: unknown aggregation \"median\""),
        "{err}"
    );
}

#[test]
fn a_quantile_without_q_is_refused_by_key() {
    let (code, err) = check_edited(|text| text.replacen(", q = 0.95 }", " }", 1));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("view[0].metrics[3].q: is required for agg \"quantile\""),
        "{err}"
    );
}

#[test]
fn a_metric_without_a_field_is_refused_by_key() {
    let (code, err) = check_edited(|text| {
        text.replacen("agg = \"sum\",      field = \"qty\"", "agg = \"sum\"", 1)
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("view[1].metrics[2].field: is required for agg \"sum\""),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let (code, err) = check_edited(|text| {
        text.replace("interval = \"60s\"", "interval = \"1x\"")
            .replacen("bucket = \"1m\"", "bucket = \"2d\"", 1)
            .replace("partitions = 4", "partitions = 0")
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"localhost\"")
            .replace("keep_snapshots = 2", "keep_snapshots = 0")
    });
    assert_eq!(code, 2, "{err}");
    for key in [
        "batch.interval",
        "batch.keep_snapshots",
        "view[0].bucket",
        "speed.partitions",
        "http.listen",
    ] {
        assert!(
            err.contains(&format!("edited.toml: {key}: ")),
            "no error for {key}:\n{err}"
        );
    }
    assert!(err.contains("5 problems"), "{err}");
    assert!(
        err.contains("batch.keep_snapshots: 0 is out of range: must lie within 1..=100"),
        "{err}"
    );
}

#[test]
fn a_missing_environment_variable_is_named() {
    let (code, err) = check_edited(|text| {
        text.replace("amqp://guest:guest@", "amqp://${TANDEM_TEST_SURELY_UNSET}@")
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("source[0].uri: environment variable \"TANDEM_TEST_SURELY_UNSET\" is not set"),
        "{err}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_line_and_shows_its_text() {
    let (code, err) = check_edited(|text| text.replace("partitions = 4", "partitions 4"));
    assert_eq!(code, 2, "{err}");
    let line = std::fs::read_to_string(shipped())
        .expect("read")
        .lines()
        .position(|line| line == "partitions = 4")
        .expect("the shipped config sets partitions")
        + 1;
    assert!(err.contains(&format!("edited.toml:{line}: ")), "{err}");
    assert!(err.contains("in: partitions 4"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_named_in_plain_words() {
    for (from, to, expected) in [
        (
            "partitions = 4",
            "partitions = \"four\"",
            "speed.partitions: expected a whole number, found string \"four\", in: partitions = \"four\"",
        ),
        (
            "partitions = 4",
            "partitions = -4",
            "speed.partitions: expected a whole number of at least 0, found integer `-4`",
        ),
        (
            "key = [\"product_id\"]",
            "key = \"product_id\"",
            "view[0].key: expected a list of field names, e.g. key = [\"product_id\"], found string \"product_id\"",
        ),
        (
            "data_dir = \"data\"",
            "master = 4\ndata_dir = \"data\"",
            "master: expected a table: [master], found integer `4`",
        ),
        (
            "q = 0.95",
            "q = \"high\"",
            "view[0].metrics[3].q: expected a number, found string \"high\"",
        ),
    ] {
        let (code, err) = check_edited(|text| text.replacen(from, to, 1));
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(expected), "{to}: {err}");
        for rust_words in ["u64", "f64", "sequence", "struct Raw", "Option"] {
            assert!(!err.contains(rust_words), "{to}: {err}");
        }
    }
}

#[test]
fn demo_source_settings_are_checked_by_type_and_range() {
    let demo = "[[source]]\nname = \"gen\"\ntype = \"demo\"\nrate = 0\ndup_frac = 1.5\nqueue = \"q\"\nlate_max = \"soon\"\n\n[speed]\n";
    let (code, err) = check_edited(|text| text.replace("[speed]\n", demo));
    assert_eq!(code, 2, "{err}");
    for expected in [
        "source[1].rate: 0 is out of range: must lie within 1..=1000000",
        "source[1].dup_frac: 1.5 is out of range: a share lies within 0..=1",
        "source[1].queue: is not a setting of a source of type \"demo\"",
        "source[1].late_max: \"soon\" is not a duration",
    ] {
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let (code, err) = check_edited(|text| text.replace("prefetch = 2000", "rate = 10"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("source[0].rate: is not a setting of a source of type \"rabbitmq\""),
        "{err}"
    );
}

#[test]
fn http_source_settings_are_checked_by_type() {
    let http =
        "[[source]]\nname = \"push\"\ntype = \"http\"\nmax_events = 0\nqueue = \"q\"\n\n[speed]\n";
    let (code, err) = check_edited(|text| text.replace("[speed]\n", http));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("source[1].max_events"), "{err}");
    assert!(
        err.contains("source[1].queue: is not a setting of a source of type \"http\""),
        "{err}"
    );
    let (code, err) = check_edited(|text| text.replace("prefetch = 2000", "max_events = 10"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("source[0].max_events: is not a setting of a source of type \"rabbitmq\""),
        "{err}"
    );
    let two = "[[source]]\nname = \"a\"\ntype = \"http\"\n\n[[source]]\nname = \"b\"\ntype = \"http\"\n\n[speed]\n";
    let (code, err) = check_edited(|text| text.replace("[speed]\n", two));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most one source of type \"http\""), "{err}");
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    // `tandem check | head -1`: the pipe closes before the plan is printed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "--config"])
        .arg(shipped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tandem check");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

const SHIPPED_HTTP: &str = "listen = \"127.0.0.1:8080\"\nauth_token_env = \"TANDEM_TOKEN\"";

#[test]
fn a_listener_that_is_not_loopback_needs_a_token_or_a_knowing_opt_out() {
    let open = "listen = \"0.0.0.0:8080\"";
    let (code, err) = check_edited(|text| text.replace(SHIPPED_HTTP, open));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.listen: 0.0.0.0:8080 is not a loopback address and no token is set"),
        "{err}"
    );
    assert!(err.contains("http.allow_unauthenticated = true"), "{err}");

    let knowingly = format!("{open}\nallow_unauthenticated = true");
    let (code, err) = check_edited(|text| text.replace(SHIPPED_HTTP, &knowingly));
    assert_eq!(code, 0, "{err}");
    let with_token = format!("{open}\n[[http.token]]\nrole = \"read\"\nenv = \"READ_TOKEN\"");
    let (code, err) = check_edited(|text| text.replace(SHIPPED_HTTP, &with_token));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn https_needs_both_a_certificate_and_a_key() {
    let no_key = format!("{SHIPPED_HTTP}\n[http.tls]\ncert = \"/etc/tandem/cert.pem\"");
    let (code, err) = check_edited(|text| text.replace(SHIPPED_HTTP, &no_key));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.tls.key: is required with [http.tls]: the PEM file of the private key"),
        "{err}"
    );
    assert!(!err.contains("http.tls.cert"), "{err}");

    let both = format!("{no_key}\nkey = \"/etc/tandem/key.pem\"");
    let (code, out) = check_edited(|text| text.replace(SHIPPED_HTTP, &both));
    assert_eq!(code, 0, "{out}");
    let typo = format!("{both}\nkeyfile = \"x\"");
    let (code, err) = check_edited(|text| text.replace(SHIPPED_HTTP, &typo));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("keyfile"), "{err}");
}

#[test]
fn a_token_needs_a_known_role_and_one_place_to_come_from() {
    let tokens = format!(
        "{SHIPPED_HTTP}\n[[http.token]]\nrole = \"root\"\nenv = \"A\"\n\
         [[http.token]]\nrole = \"read\"\nenv = \"A\"\nfile = \"/run/secrets/a\"\n\
         [[http.token]]\nfile = \"/run/secrets/b\""
    );
    let (code, err) = check_edited(|text| text.replace(SHIPPED_HTTP, &tokens));
    assert_eq!(code, 2, "{err}");
    for expected in [
        "http.token[0].role: \"root\" is not a role: one of read, ingest, admin",
        "http.token[1]: set env or file, not both",
        "http.token[2].role: a token needs a role: one of read, ingest, admin",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }
}

#[test]
fn the_plan_names_each_token_with_its_role_and_where_it_comes_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.toml");
    let text = std::fs::read_to_string(shipped()).expect("read shipped config");
    let tokens = format!(
        "{SHIPPED_HTTP}\n[[http.token]]\nrole = \"ingest\"\nfile = \"/run/secrets/ingest\""
    );
    std::fs::write(&path, text.replace(SHIPPED_HTTP, &tokens)).expect("write config");
    let out = tandem_check(&path);
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(
            "http      127.0.0.1:8080 (bearer tokens: admin from $TANDEM_TOKEN, ingest from /run/secrets/ingest)"
        ),
        "{plan}"
    );
}

#[test]
fn the_spark_engine_needs_its_command_and_the_parquet_master_dataset() {
    let spark = |extra: &'static str| {
        move |text: String| {
            text.replace(
                "interval = \"60s\"",
                &format!("interval = \"60s\"\nengine = \"spark\"\n{extra}"),
            )
        }
    };
    let (code, err) = check_edited(spark(""));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "batch.engine: \"spark\" reads the master dataset as Parquet: set master.parquet_dir"
        ),
        "{err}"
    );
    assert!(
        err.contains("batch.submit: is required with batch.engine = \"spark\""),
        "{err}"
    );
    let (code, err) = check_edited(spark("submit = []\nspark_timeout = \"forever\""));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batch.submit: must name a program first"),
        "{err}"
    );
    assert!(
        err.contains("batch.spark_timeout: \"forever\" is not a duration"),
        "{err}"
    );
    let (code, err) = check_edited(|text| {
        text.replace(
            "interval = \"60s\"",
            "interval = \"60s\"\nengine = \"flink\"",
        )
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batch.engine: \"flink\" is not an engine: use \"native\" or \"spark\""),
        "{err}"
    );
    let (code, err) = check_edited(|text| {
        text.replace(
            "interval = \"60s\"",
            "interval = \"60s\"\nsubmit = [\"spark-submit\"]",
        )
    });
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("batch.submit: is used only with batch.engine = \"spark\""),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spark.toml");
    let text = std::fs::read_to_string(shipped()).expect("read shipped config");
    std::fs::write(
        &path,
        text.replace(
            "interval = \"60s\"",
            "interval = \"60s\"\nengine = \"spark\"\nsubmit = [\"spark-submit\", \"--master\", \"yarn\"]\nspark_dir = \"/shared/batch\"",
        ) + "\n[master]\nparquet_dir = \"/shared/tandem\"\n",
    )
    .expect("write config");
    let out = tandem_check(&path);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{plan}");
    assert!(
        plan.contains(
            "on Spark: spark-submit --master yarn JOB (in /shared/batch), killed after 1h"
        ),
        "{plan}"
    );
}
