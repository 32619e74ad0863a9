//! The HTTP API under abuse, on the real binary with a token and an HTTP
//! source: thousands of generated requests with bad paths, parameters,
//! methods, tokens, encodings, huge headers and bodies, and a crowd of slow
//! clients. Every answer is a 2xx, 3xx or 4xx (never a 5xx, never a dropped
//! connection for a well-formed request), the daemon never panics, and a
//! normal query is answered all along.

mod common;

use common::{Daemon, Rng};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "abuse-token-0123456789";

fn config() -> String {
    common::orders_config(
        "[[source]]\nname = \"push\"\ntype = \"http\"\nmax_body_bytes = 65536\nmax_events = 100\n",
        "1h",
    )
    .replace(
        "[http]\n",
        "[http]\nauth_token_env = \"TANDEM_TEST_TOKEN\"\n",
    )
}

/// Sends raw bytes as one request on a new connection and reads the answer's
/// status code; `None` when the server closed without answering.
fn raw(addr: &str, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The server may answer (and close) before it has read a huge request.
    stream.write_all(request).ok();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

const PATHS: &[&str] = &[
    "/",
    "/ui/app.js",
    "/ui/style.css",
    "/ui/../../etc/passwd",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/views",
    "/v1/views/by_product",
    "/v1/views/nope",
    "/v1/views/by_product/keys/p-00001",
    "/v1/views/by_product/keys/%FF%FE",
    "/v1/views/by_product/keys/%ZZ",
    "/v1/views/by_product/keys/",
    "/v1/views/by_product/totals",
    "/v1/views/by_product/top",
    "/v1/views/by_product/series",
    "/v1/views/%00/totals",
    "/v1/status",
    "/v1/recompute",
    "/v1/events",
    "//v1//views",
    "/v1/views/by_product/keys/a/b/c",
];

const PARAMS: &[&str] = &[
    "",
    "metric=orders",
    "metric=revenue&n=10",
    "metric=orders&n=0",
    "metric=orders&n=1001",
    "metric=orders&n=-1",
    "metric=orders&n=18446744073709551616",
    "metric=%FF",
    "metric=",
    "from=0&to=1",
    "from=-9223372036854775808&to=9223372036854775807",
    "from=9223372036854775807&to=-9223372036854775808",
    "from=2026-13-45T99:99:99Z",
    "from=2026-11-24T10:00:00Z&to=2026-11-24T10:00:00Z",
    "from=1e308",
    "layer=batch",
    "layer=everything",
    "layer=",
    "key=p-00001",
    "key=%00%01",
    "wait=true",
    "wait=maybe",
    "unknown=1",
    "from=1&from=2",
    "&&&==&",
    "%",
    "a=%E2%82",
];

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW",
];

const TOKENS: &[&str] = &[
    "",
    "Authorization: Bearer abuse-token-0123456789\r\n",
    "Authorization: Bearer abuse-token-0123456788\r\n",
    "Authorization: Bearer \r\n",
    "Authorization: Basic YWJ1c2U6dG9rZW4=\r\n",
    "Authorization: Bearer abuse-token-0123456789abuse-token-0123456789\r\n",
    "Authorization: Bearer \u{00e9}\u{00e9}\r\n",
];

const BODIES: &[(&str, &[u8])] = &[
    ("", b""),
    (
        "application/x-ndjson",
        b"{\"order_id\":\"x\"}\n{\n\xff\xfe\n",
    ),
    ("application/json", b"[1, {\"a\": [[[[[[]]]]]]}, null"),
    ("application/json", b"{}"),
    ("text/plain", b"\x00\x00\x00"),
    ("image/png", b"\x89PNG"),
];

#[test]
fn abuse_gets_4xx_never_5xx_and_the_daemon_keeps_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&config(), dir.path(), &[("TANDEM_TEST_TOKEN", TOKEN)]);
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    let healthy = || {
        let (code, body) = common::http(
            "GET",
            &format!("{}/v1/views/by_product/totals", daemon.base),
            Some(TOKEN),
        );
        assert_eq!(code, 200, "{body}");
    };

    // Some data, so that the queries have groups to range over.
    let jsonl = common::workload::generate(&["--events", "100", "--seed", "81"]);
    let (code, body) = common::post(
        &format!("{}/v1/events", daemon.base),
        Some(TOKEN),
        "application/x-ndjson",
        &jsonl,
    );
    assert_eq!(code, 200, "{body}");

    // Generated requests.
    let mut rng = Rng::new(0x7a6e_6465_6d21);
    let mut by_status = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..3000 {
        // Mostly well-addressed and authorized, so the parameters get parsed.
        let method = if rng.next() % 10 < 7 {
            rng.pick(&["GET", "POST"])
        } else {
            rng.pick(METHODS)
        };
        let path = rng.pick(PATHS);
        let params = rng.pick(PARAMS);
        let token = if rng.next() % 10 < 6 {
            TOKENS[1]
        } else {
            rng.pick(TOKENS)
        };
        let (content_type, body) = rng.pick(BODIES);
        let target = if params.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{params}")
        };
        let mut request =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{token}")
                .into_bytes();
        if !content_type.is_empty() {
            request.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
        let code = raw(&addr, &request).unwrap_or_else(|| {
            panic!(
                "no answer to {}:\n{}",
                String::from_utf8_lossy(&request),
                daemon.logs()
            )
        });
        assert!(
            code < 500,
            "{code} for {}:\n{}",
            String::from_utf8_lossy(&request),
            daemon.logs()
        );
        *by_status.entry(code).or_default() += 1;
        if i % 500 == 0 {
            healthy();
        }
    }
    println!("generated requests by status: {by_status:?}");
    assert!(by_status.contains_key(&200) && by_status.contains_key(&401));

    // Malformed request lines and headers, huge headers, huge bodies.
    let big_header = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    let many_headers = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
        "X-H: 1\r\n".repeat(500)
    );
    let huge_body = {
        let mut request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(b'{', 1_000_000));
        request
    };
    let long_path = format!(
        "GET /v1/views/by_product/keys/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "k".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage request line",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        ),
        ("bad version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        (
            "no host, lowercase method",
            b"get /v1/status HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "bad content length",
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
        ),
        (
            "chunked garbage",
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_vec(),
        ),
        ("200 kB header", big_header.into_bytes()),
        ("500 headers", many_headers.into_bytes()),
        ("50 MB body announced", huge_body),
        ("100 kB path", long_path.into_bytes()),
    ];
    for (what, request) in &cases {
        let code = raw(&addr, request);
        println!("{what}: {code:?}");
        assert!(
            code.is_none_or(|code| (400..500).contains(&code)),
            "{what}: {code:?}"
        );
        healthy();
    }

    // Slow clients: 64 connections that send half a request and stall. The
    // daemon keeps answering others, and times the stalled ones out itself.
    let slow: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut stream = TcpStream::connect(&addr).expect("connect");
            stream
                .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("write");
            stream
        })
        .collect();
    let started = Instant::now();
    for _ in 0..20 {
        healthy();
    }
    let served_among_slow = started.elapsed();
    for mut stream in slow {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut answer = Vec::new();
        // The server closes a stalled connection (with or without a 408).
        stream.read_to_end(&mut answer).ok();
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    let dropped_after = started.elapsed();
    println!(
        "64 slow clients: 20 queries served in {} ms meanwhile; the slow ones cut off after {} ms",
        served_among_slow.as_millis(),
        dropped_after.as_millis()
    );
    healthy();
    assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
}
