//! HTTPS on the real binary: with `[http.tls]` the API answers over TLS with
//! the configured certificate (generated here), `tandem publish --http`
//! posts to it when told which certificate to trust, a plain-HTTP client
//! gets no answer, SIGHUP serves a renewed certificate without a restart, a reload
//! that fails keeps the certificate in use, and a key that does not fit its
//! certificate refuses the start in one line.

mod common;

use common::Daemon;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A self-signed certificate for localhost: (certificate PEM, key PEM, DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a certificate");
    (
        generated.cert.pem(),
        generated.signing_key.serialize_pem(),
        generated.cert.der().clone(),
    )
}

/// The orders config with a push source and `[http.tls]` naming the two files.
fn config(cert: &Path, key: &Path) -> String {
    common::orders_config("[[source]]\nname = \"push\"\ntype = \"http\"\n", "1h").replace(
        "listen = \"LISTEN\"",
        &format!(
            "listen = \"LISTEN\"\n[http.tls]\ncert = \"{}\"\nkey = \"{}\"",
            cert.display(),
            key.display()
        ),
    )
}

/// One HTTPS request to `port`, trusting only `trusted`: the status, the
/// body, and the certificate the server presented.
fn https(
    port: u16,
    trusted: &[&CertificateDer<'static>],
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String, CertificateDer<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).map_err(|err| err.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").map_err(|err| err.to_string())?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|err| err.to_string())?;
    let socket =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|err| err.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| err.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|err| format!("write: {err}"))?;
    let mut response = Vec::new();
    // The server closes the connection without close_notify at times; what
    // was read by then is the whole response (Connection: close).
    if let Err(err) = stream.read_to_end(&mut response)
        && err.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(format!("read: {err}"));
    }
    let presented = stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("no certificate presented")?
        .clone()
        .into_owned();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body, presented))
}

fn port_of(daemon: &Daemon) -> u16 {
    daemon
        .base
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the daemon's port")
}

#[test]
fn the_api_speaks_https_only_and_serves_a_renewed_certificate_after_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (first_pem, first_key, first) = certificate();
    std::fs::write(&cert_path, &first_pem).expect("write cert");
    std::fs::write(&key_path, &first_key).expect("write key");
    let mut daemon = Daemon::spawn(&config(&cert_path, &key_path), dir.path(), &[]);
    let port = port_of(&daemon);
    daemon.until(Duration::from_secs(30), "ready over https", |daemon| {
        if let Ok(Some(exit)) = daemon.child.try_wait() {
            panic!("tandem run exited with {exit}:\n{}", daemon.logs());
        }
        match https(port, &[&first], "GET", "/readyz", b"") {
            Ok((200, _, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // The API works over TLS: an event pushed is read back.
    let event =
        br#"{"order_id":"o-1","ts":"2026-11-24T00:00:00.000Z","product_id":"p-1","amount":2.5}"#;
    let (status, body, presented) =
        https(port, &[&first], "POST", "/v1/events", event).expect("push over https");
    assert_eq!(status, 200, "{body}");
    assert_eq!(presented, first, "the configured certificate is served");
    let (status, body, _) = https(port, &[&first], "GET", "/v1/views/by_product/totals", b"")
        .expect("query over https");
    assert_eq!(status, 200, "{body}");
    let totals: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(common::orders(&totals), 1, "{totals}");

    // `tandem publish --http` over https: refused without a trusted
    // certificate, and with the daemon's own certificate given, accepted.
    let lines = dir.path().join("three.jsonl");
    std::fs::write(
        &lines,
        (2..5)
            .map(|i| format!(r#"{{"order_id":"o-{i}","ts":"2026-11-24T00:00:00.000Z","product_id":"p-1","amount":1}}"#))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .expect("write lines");
    let publish = |ca: Option<&Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
        command.args(["publish", "--http", &format!("https://localhost:{port}")]);
        if let Some(ca) = ca {
            command.arg("--ca-cert").arg(ca);
        }
        command.arg(&lines).output().expect("run tandem publish")
    };
    let refused = publish(None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot post lines from")
            && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    let trusted = publish(Some(&cert_path));
    let stderr = String::from_utf8_lossy(&trusted.stderr);
    assert!(trusted.status.success(), "{stderr}");
    let (_, body, _) = https(port, &[&first], "GET", "/v1/views/by_product/totals", b"")
        .expect("query over https");
    let totals: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(common::orders(&totals), 4, "{totals}");

    // A plain-HTTP client gets no answer, and the server goes on.
    let plain = ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(10))
        .call();
    assert!(
        matches!(plain, Err(ureq::Error::Transport(_))),
        "plain HTTP must not be answered: {plain:?}"
    );
    // A client that does not trust the certificate fails its handshake.
    let (_, _, other) = certificate();
    let untrusted = https(port, &[&other], "GET", "/healthz", b"");
    assert!(untrusted.is_err(), "{untrusted:?}");

    // SIGHUP after the files are renewed: the next handshake presents the
    // new certificate, with no restart.
    let (second_pem, second_key, second) = certificate();
    std::fs::write(&cert_path, &second_pem).expect("write cert");
    std::fs::write(&key_path, &second_key).expect("write key");
    daemon.hangup();
    daemon.until(
        Duration::from_secs(20),
        "the renewed certificate",
        |_| match https(port, &[&first, &second], "GET", "/healthz", b"") {
            Ok((200, _, presented)) if presented == second => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|(status, body, _)| (status, body))
            )),
        },
    );

    // A reload that fails (a certificate file cut short) keeps the one in
    // use, and says why.
    std::fs::write(&cert_path, &second_pem[..second_pem.len() / 2]).expect("write cert");
    daemon.hangup();
    let cert_text = format!(
        "http.tls.cert: cannot read a certificate from {}",
        cert_path.display()
    );
    daemon.until_logged("the failed reload logged", |line| {
        line.contains("SIGHUP: kept the TLS certificate in use") && line.contains(&cert_text)
    });
    let (status, _, presented) =
        https(port, &[&second], "GET", "/healthz", b"").expect("still serving");
    assert_eq!((status, &presented), (200, &second));
    let (status, body, _) = https(port, &[&second], "GET", "/v1/views/by_product/totals", b"")
        .expect("query after the reloads");
    let totals: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!((status, common::orders(&totals)), (200, 4), "{totals}");
}

#[test]
fn a_key_that_does_not_fit_its_certificate_refuses_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (cert, _, _) = certificate();
    let (_, other_key, _) = certificate();
    std::fs::write(&cert_path, cert).expect("write cert");
    std::fs::write(&key_path, other_key).expect("write key");
    let mut daemon = Daemon::spawn(&config(&cert_path, &key_path), dir.path(), &[]);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    let logs = daemon.logs();
    let lines: Vec<&str> = logs.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{logs}");
    assert!(
        lines[0].starts_with("error: cannot start: http.tls: the key in ")
            && lines[0].contains("cannot serve the certificate in"),
        "{logs}"
    );
    assert!(!dir.path().join("data").exists(), "nothing is created");

    // A key file with no key in it, named as such.
    std::fs::write(&key_path, "not a key\n").expect("write key");
    let mut daemon = Daemon::spawn(&config(&cert_path, &key_path), dir.path(), &[]);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    assert!(
        daemon.logs().contains(&format!(
            "cannot start: http.tls.key: cannot read a private key from {}",
            key_path.display()
        )),
        "{}",
        daemon.logs()
    );
}
