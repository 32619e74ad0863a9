//! Access on the real binary: bearer tokens have roles (read: queries,
//! status, metrics; ingest: `POST /v1/events`; admin: everything), a token
//! of one role gets 403 on what another role does, tokens come from
//! environment variables or files, and a daemon that would be open by
//! mistake refuses to start, in one line.

mod common;

use common::{Daemon, http, post};
use std::time::Duration;

const PUSH_SOURCE: &str = "[[source]]\nname = \"push\"\ntype = \"http\"\n";
const ADMIN: &str = "admin-token-3f1c";
const READ: &str = "read-token-92ab";
const INGEST: &str = "ingest-token-77d0";

/// The orders config with an admin token from `TANDEM_TEST_TOKEN`, a read
/// token from `TANDEM_TEST_READ_TOKEN` and an ingest token from `ingest_file`.
fn config(ingest_file: &std::path::Path) -> String {
    common::orders_config(PUSH_SOURCE, "1h").replace(
        "listen = \"LISTEN\"",
        &format!(
            "listen = \"LISTEN\"\nauth_token_env = \"TANDEM_TEST_TOKEN\"\n\
             [[http.token]]\nrole = \"read\"\nenv = \"TANDEM_TEST_READ_TOKEN\"\n\
             [[http.token]]\nrole = \"ingest\"\nfile = \"{}\"",
            ingest_file.display()
        ),
    )
}

#[test]
fn each_role_may_do_its_own_part_and_gets_403_on_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("ingest.secret");
    // As an orchestrator mounts a secret: with a trailing newline.
    std::fs::write(&secret, format!("{INGEST}\n")).expect("write secret");
    let daemon = Daemon::start(
        &config(&secret),
        dir.path(),
        &[
            ("TANDEM_TEST_TOKEN", ADMIN),
            ("TANDEM_TEST_READ_TOKEN", READ),
        ],
    );
    let base = &daemon.base;
    let event =
        br#"{"order_id":"o-1","ts":"2026-11-24T00:00:00.000Z","product_id":"p-1","amount":2.5}"#;
    let push = |token| {
        post(
            &format!("{base}/v1/events"),
            token,
            "application/x-ndjson",
            event,
        )
        .0
    };
    let read = |token| http("GET", &format!("{base}/v1/views/by_product/totals"), token).0;
    let status = |token| http("GET", &format!("{base}/v1/status"), token).0;
    let metrics = |token| http("GET", &format!("{base}/metrics"), token).0;
    let recompute = |token| http("POST", &format!("{base}/v1/recompute"), token).0;

    // No token, or one that is not configured: 401 everywhere but the health checks.
    for token in [None, Some("not-a-token"), Some("")] {
        assert_eq!(push(token), 401);
        assert_eq!(read(token), 401);
        assert_eq!(status(token), 401);
        assert_eq!(recompute(token), 401);
    }
    assert_eq!(http("GET", &format!("{base}/healthz"), None).0, 200);
    assert_eq!(http("GET", &format!("{base}/readyz"), None).0, 200);

    // Read: queries, status and metrics; not ingest, not admin.
    assert_eq!(read(Some(READ)), 200);
    assert_eq!(status(Some(READ)), 200);
    assert_eq!(metrics(Some(READ)), 200);
    let (code, body) = post(
        &format!("{base}/v1/events"),
        Some(READ),
        "application/x-ndjson",
        event,
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|error| error.contains(
            "this token's role is read; POST /v1/events needs a token of the ingest or admin role"
        )),
        "{body}"
    );
    assert_eq!(recompute(Some(READ)), 403);

    // Ingest: pushes only.
    assert_eq!(push(Some(INGEST)), 200);
    assert_eq!(read(Some(INGEST)), 403);
    assert_eq!(status(Some(INGEST)), 403);
    assert_eq!(recompute(Some(INGEST)), 403);

    // Admin: everything.
    assert_eq!(push(Some(ADMIN)), 200);
    assert_eq!(read(Some(ADMIN)), 200);
    assert_eq!(metrics(Some(ADMIN)), 200);
    assert_eq!(recompute(Some(ADMIN)), 202);

    // What was refused changed nothing: the one order, pushed twice, once.
    let (code, body) = http(
        "GET",
        &format!("{base}/v1/views/by_product/totals"),
        Some(READ),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(common::orders(&body), 1, "{body}");
}

#[test]
fn a_rotated_token_file_is_read_again_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("ingest.secret");
    std::fs::write(&secret, format!("{INGEST}\n")).expect("write secret");
    let mut daemon = Daemon::start(
        &config(&secret),
        dir.path(),
        &[
            ("TANDEM_TEST_TOKEN", ADMIN),
            ("TANDEM_TEST_READ_TOKEN", READ),
        ],
    );
    let url = format!("{}/v1/events", daemon.base);
    let push = |token| {
        let event = br#"{"order_id":"o-1","ts":"2026-11-24T00:00:00.000Z","product_id":"p-1","amount":2.5}"#;
        post(&url, Some(token), "application/x-ndjson", event).0
    };
    assert_eq!(push(INGEST), 200);

    // The orchestrator rotates the secret; SIGHUP: the new token is
    // accepted and the old one refused, with no restart.
    let rotated = "ingest-token-rotated-5e1b";
    std::fs::write(&secret, format!("{rotated}\n")).expect("write secret");
    daemon.hangup();
    daemon.until(Duration::from_secs(20), "the rotated token", |_| {
        match (push(rotated), push(INGEST)) {
            (200, 401) => Ok(()),
            other => Err(other),
        }
    });
    // The tokens from variables stay as they were.
    assert_eq!(push(ADMIN), 200);

    // A file that cannot be read at the next SIGHUP: the tokens in use stay, and the log says why.
    std::fs::remove_file(&secret).expect("remove secret");
    daemon.hangup();
    daemon.until_logged("the failed reload logged", |line| {
        line.contains("SIGHUP: kept the bearer tokens in use")
            && line.contains("http.token[1]: cannot read")
    });
    assert_eq!(push(rotated), 200);
    assert_eq!(push(INGEST), 401);
}

/// Starts `tandem run` on `text` and answers the line that says why it
/// refused, once it exits (a config refused by `tandem check`'s rules is
/// followed by the count of problems).
fn refused_start(text: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::spawn(text, dir.path(), env);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{status}:\n{}", daemon.logs());
    let logs = daemon.logs();
    let lines: Vec<&str> = logs.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{logs}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created:\n{logs}"
    );
    lines[0].to_owned()
}

#[test]
fn a_daemon_that_would_be_open_by_mistake_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such.secret");

    // A [[http.token]] whose variable is not set, or whose file is missing.
    let line = refused_start(&config(&missing), &[("TANDEM_TEST_TOKEN", ADMIN)]);
    assert!(
        line.contains(
            "cannot start: http.token[0]: the variable TANDEM_TEST_READ_TOKEN is not set or empty, so the read token has no value"
        ),
        "{line}"
    );
    let line = refused_start(
        &config(&missing),
        &[
            ("TANDEM_TEST_TOKEN", ADMIN),
            ("TANDEM_TEST_READ_TOKEN", READ),
        ],
    );
    assert!(
        line.contains("cannot start: http.token[1]: cannot read"),
        "{line}"
    );
    assert!(line.contains("no-such.secret"), "{line}");

    // Not loopback: without any token configured, or with
    // http.auth_token_env naming a variable that is not set, the start is
    // refused, saying how to set a token.
    let public = common::orders_config(PUSH_SOURCE, "1h").replace(
        "listen = \"LISTEN\"",
        &format!("listen = \"0.0.0.0:{}\"", common::free_port()),
    );
    let line = refused_start(&public, &[]);
    assert!(
        line.starts_with("error: cannot start: http.listen: 0.0.0.0:")
            && line.contains("is not a loopback address and no token is set")
            && line.contains("set a token (http.auth_token_env = \"VAR\", or [[http.token]]")
            && line.contains("http.allow_unauthenticated = true"),
        "{line}"
    );
    let with_unset = public.replace(
        "[http]\n",
        "[http]\nauth_token_env = \"TANDEM_TEST_SURELY_UNSET_TOKEN\"\n",
    );
    let line = refused_start(&with_unset, &[]);
    assert!(
        line.contains("cannot start: http.listen: 0.0.0.0:")
            && line.contains("is not a loopback address and no token has a value")
            && line.contains("TANDEM_TEST_SURELY_UNSET_TOKEN is not set or empty"),
        "{line}"
    );
}
