//! The reference workload: runs `shared/bench/gen_events.py` (or the script
//! named by `TANDEM_GEN_EVENTS`) and returns its JSONL output. Shared by the
//! tests and the benchmarks.

use std::path::PathBuf;
use std::process::Command;

/// Where the generator script is.
pub fn generator() -> PathBuf {
    match std::env::var_os("TANDEM_GEN_EVENTS") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/gen_events.py"),
    }
}

/// Runs the generator with `args` (e.g. `["--events", "1000", "--seed", "7"]`).
///
/// # Panics
/// When the script is missing or fails: a test cannot go on without its workload.
pub fn generate(args: &[&str]) -> Vec<u8> {
    let script = generator();
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run python3 {}: {err}", script.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The generator's output split into lines.
pub fn lines(jsonl: &[u8]) -> Vec<&[u8]> {
    jsonl
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .collect()
}
