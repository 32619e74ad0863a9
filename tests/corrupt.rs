//! Damaged data_dirs: a flipped byte in an old segment, a truncated snapshot,
//! missing snapshots, and an epoch index newer than the segments (a partial
//! restore). Start-up either recovers and answers exactly what it answered
//! before, or refuses in one line that names the file and the offset and says
//! what to do; never a silently wrong answer. `tandem inspect` reports each.

mod common;

use common::{Daemon, http, post};
use serde_json::Value;
use std::path::{Path, PathBuf};

const SOURCES: &str = r#"
[[source]]
name = "push"
type = "http"
[master]
segment_max_bytes = 1048576
"#;

fn config() -> String {
    common::orders_config(SOURCES, "1h")
}

/// Every answer a reader can see: the totals and each product, merged.
fn answers(daemon: &Daemon, products: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    let (code, totals) = http(
        "GET",
        &format!("{}/v1/views/by_product/totals", daemon.base),
        None,
    );
    assert_eq!(code, 200, "{totals}");
    out.push(totals["metrics"].clone());
    for product in products {
        let (code, body) = http(
            "GET",
            &format!("{}/v1/views/by_product/keys/{product}", daemon.base),
            None,
        );
        assert_eq!(code, 200, "{body}");
        out.push(body["metrics"].clone());
    }
    out
}

struct Built {
    /// A tempdir holding the data_dir under `data/`.
    dir: tempfile::TempDir,
    /// `master/` as it was after the first half.
    early_master: tempfile::TempDir,
    products: Vec<String>,
    answers: Vec<Value>,
}

/// A data_dir with two segments, two snapshots and a tail after the newest,
/// built through the daemon; and a copy of its master/ from half-way.
fn build() -> Built {
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = common::workload::generate(&[
        "--events",
        "13000",
        "--seed",
        "71",
        "--products",
        "40",
        "--dup-frac",
        "0.05",
        "--bad-frac",
        "0.02",
        "--late-frac",
        "0.1",
    ]);
    let lines = common::workload::lines(&jsonl);
    let expect = common::expected(&lines);
    let products: Vec<String> = expect.products.keys().cloned().collect();
    let chunks: Vec<Vec<u8>> = lines.chunks(3250).map(|chunk| chunk.join(&b'\n')).collect();
    let push = |daemon: &Daemon, chunk: &[u8]| {
        let (code, body) = post(
            &format!("{}/v1/events", daemon.base),
            None,
            "application/x-ndjson",
            chunk,
        );
        assert_eq!(code, 200, "{body}");
    };
    let recompute = |daemon: &Daemon| {
        let (code, body) = http(
            "POST",
            &format!("{}/v1/recompute?wait=true", daemon.base),
            None,
        );
        assert_eq!(code, 200, "{body}");
    };
    let mut daemon = Daemon::start(&config(), dir.path(), &[]);
    push(&daemon, &chunks[0]);
    recompute(&daemon);
    push(&daemon, &chunks[1]);
    assert_eq!(daemon.terminate().0, Some(0));
    let early_master = tempfile::tempdir().expect("tempdir");
    common::copy_dir(&dir.path().join("data/master"), early_master.path());

    let mut daemon = Daemon::start(&config(), dir.path(), &[]);
    push(&daemon, &chunks[2]);
    recompute(&daemon);
    push(&daemon, &chunks[3]);
    let answers = answers(&daemon, &products);
    assert_eq!(daemon.terminate().0, Some(0));
    let segments = std::fs::read_dir(dir.path().join("data/master"))
        .expect("master")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(segments >= 2, "{segments} segments");
    Built {
        dir,
        early_master,
        products,
        answers,
    }
}

/// A copy of the built data_dir to damage.
fn copy_of(built: &Built) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    common::copy_dir(&built.dir.path().join("data"), &dir.path().join("data"));
    dir
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    common::files_ending(&dir.join("data/snapshots"), "snap")
}

/// `tandem inspect`: (exit code, report).
fn inspect(dir: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["inspect", "--data"])
        .arg(dir.join("data"))
        .output()
        .expect("tandem inspect");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Starts on a damaged data_dir that must be refused: the exit code and the
/// one line it printed.
fn refused(dir: &Path) -> (i32, String) {
    let mut daemon = Daemon::spawn(&config(), dir, &[]);
    let status = daemon.wait_exit(std::time::Duration::from_secs(30));
    let logs = daemon.logs();
    let line = logs
        .lines()
        .rfind(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{logs}"))
        .to_owned();
    (status.code().unwrap_or(-1), line)
}

/// Flips one byte in the middle of a segment.
fn flip_byte(path: &Path) -> u64 {
    let at = std::fs::metadata(path).expect("stat segment").len() / 2;
    common::xor_byte(path, at, 0x5a);
    at
}

#[test]
fn damaged_data_dirs_are_recovered_exactly_or_refused_by_name() {
    let built = build();

    // Missing snapshots: a full replay gives the same answers.
    let dir = copy_of(&built);
    for snapshot in snapshots(dir.path()) {
        std::fs::remove_file(snapshot).expect("remove");
    }
    let (code, report) = inspect(dir.path());
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("snapshots 0"), "{report}");
    let daemon = Daemon::start(&config(), dir.path(), &[]);
    assert_eq!(
        answers(&daemon, &built.products),
        built.answers,
        "no snapshots"
    );
    drop(daemon);

    // A truncated newest snapshot: refused, the older one used, same answers.
    let dir = copy_of(&built);
    let all = snapshots(dir.path());
    let newest = all.last().expect("a snapshot");
    let len = std::fs::metadata(newest).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .and_then(|file| file.set_len(len / 2))
        .expect("truncate");
    let (code, report) = inspect(dir.path());
    assert_eq!(code, 1, "{report}");
    let name = newest
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        report
            .lines()
            .any(|line| line.contains(&name) && line.contains("DAMAGED")),
        "{report}"
    );
    let daemon = Daemon::start(&config(), dir.path(), &[]);
    assert_eq!(
        answers(&daemon, &built.products),
        built.answers,
        "truncated snapshot"
    );
    assert!(
        daemon.logs().contains(&name),
        "the log names the snapshot:\n{}",
        daemon.logs()
    );
    drop(daemon);

    // A flipped byte in the oldest segment, covered by a snapshot: the daemon
    // serves what it served; a full recompute (an incremental one reads only
    // the records after the batch cache) refuses, names segment and offset,
    // and leaves the answers as they were.
    let dir = copy_of(&built);
    let segment = dir.path().join("data/master/segment-0000000000.log");
    flip_byte(&segment);
    let (code, report) = inspect(dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(
        report
            .lines()
            .any(|line| line.contains("segment-0000000000.log")
                && line.contains("DAMAGED")
                && line.contains("offset")),
        "{report}"
    );
    let daemon = Daemon::start(&config(), dir.path(), &[]);
    assert_eq!(
        answers(&daemon, &built.products),
        built.answers,
        "flipped byte"
    );
    let (code, body) = http(
        "POST",
        &format!("{}/v1/recompute?wait=true&full=true", daemon.base),
        None,
    );
    assert_eq!(code, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("segment-0000000000.log") && error.contains("offset"),
        "{error}"
    );
    let status = daemon.status();
    assert_eq!(status["recompute_error"].as_str(), Some(error));
    // A failing batch layer is visible with what it costs: nothing expires the
    // speed layer meanwhile, and its size is there to watch.
    assert_eq!(status["recompute_failing"]["runs"], 1, "{status}");
    assert!(status["recompute_failing"]["since"].is_string(), "{status}");
    let speed_groups = status["speed"]["groups"].as_u64().unwrap_or_default();
    assert!(speed_groups > 0, "the tail after the snapshot: {status}");
    assert_eq!(
        common::scrape(&daemon.base, "tandem_recompute_failing_runs"),
        Some(1.0)
    );
    assert_eq!(
        common::scrape(&daemon.base, "tandem_speed_groups"),
        Some(speed_groups as f64)
    );
    assert_eq!(
        answers(&daemon, &built.products),
        built.answers,
        "after the failed run"
    );
    drop(daemon);

    // The same flip with no snapshot to cover it: refused by name.
    for snapshot in snapshots(dir.path()) {
        std::fs::remove_file(snapshot).expect("remove");
    }
    let (code, line) = refused(dir.path());
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("segment-0000000000.log")
            && line.contains("offset")
            && line.contains("tandem inspect"),
        "{line}"
    );

    // An epoch index newer than the segments (master/ restored from an older
    // backup, but not its epochs file): refused by name.
    let dir = copy_of(&built);
    let master = dir.path().join("data/master");
    for entry in std::fs::read_dir(&master).expect("master") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "log") {
            std::fs::remove_file(path).expect("remove");
        }
    }
    for entry in std::fs::read_dir(built.early_master.path()).expect("backup") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "log") {
            std::fs::copy(&path, master.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let (code, report) = inspect(dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("DAMAGED: epoch"), "{report}");
    let (code, line) = refused(dir.path());
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("master/epochs") && line.contains("offset") && line.contains("restore"),
        "{line}"
    );
}
