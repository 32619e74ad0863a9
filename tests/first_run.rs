//! First-run errors: what a new user meets when something is in the way is
//! one line on stderr that names it, exit code 1, and nothing left behind.

mod common;

use std::process::{Command, Output};

/// Runs tandem; fails the test if it has not ended within 30 s.
fn tandem(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        // The default log filter, whatever the caller's shell sets.
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tandem");
    let ended = common::poll(std::time::Duration::from_secs(30), || {
        child.try_wait().expect("try_wait").ok_or(())
    });
    if ended.is_err() {
        child.kill().ok();
        panic!("tandem {args:?} did not end within 30 s");
    }
    child.wait_with_output().expect("output")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_busy_port_is_one_line_exit_1_and_no_data_dir() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let config = common::demo_config(None)
        .replace("LISTEN", &address)
        .replace(
            "\"DATA_DIR\"",
            &format!("{:?}", data_dir.display().to_string()),
        );
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, config).expect("write config");
    let out = tandem(&["run", "--config", path.to_str().expect("utf-8 path")]);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    assert!(
        lines[0].starts_with("error: cannot listen on ") && lines[0].contains(&address),
        "{lines:#?}"
    );
    assert!(lines[0].contains("in use"), "{lines:#?}");
    assert!(!data_dir.exists(), "the data_dir was created");
    drop(taken);
}

#[test]
fn publish_names_a_broker_it_cannot_reach_without_the_password_and_says_the_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("orders.jsonl");
    std::fs::write(&file, common::workload::generate(&["--events", "2000"])).expect("write");
    let closed = common::free_port();
    let uri = format!("amqp://guest:s3cret-pw@127.0.0.1:{closed}/%2f");
    let out = tandem(&[
        "publish",
        "--uri",
        &uri,
        "--queue",
        "nowhere",
        file.to_str().expect("utf-8 path"),
    ]);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    let line = &lines[0];
    assert!(!line.contains("s3cret-pw"), "the password is shown: {line}");
    assert!(
        line.contains(&format!("amqp://guest:***@127.0.0.1:{closed}/%2f")),
        "{line}"
    );
    assert_eq!(line.matches("Connection refused").count(), 1, "{line}");

    // Many more batches than posters: reading stops once every poster has failed.
    let out = tandem(&[
        "publish",
        "--batch",
        "10",
        "--http",
        &format!("http://127.0.0.1:{closed}"),
        file.to_str().expect("utf-8 path"),
    ]);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:#?}");
    assert_eq!(lines.len(), 1, "one line: {lines:#?}");
    let url = format!("http://127.0.0.1:{closed}/v1/events");
    assert_eq!(lines[0].matches(&url).count(), 1, "{lines:#?}");
    assert_eq!(
        lines[0].matches("Connection refused").count(),
        1,
        "{lines:#?}"
    );
}
