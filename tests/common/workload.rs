//! The reference workload, from `tandem generate`: the tests and the
//! benchmarks run the binary with the flags a user would give it. Shared by
//! the tests, the criterion benches and the end-to-end benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `tandem` binary: cargo names it for tests and benches; an example
/// finds it in the target directory it was built in.
pub fn tandem_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_tandem") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tandem"))
        .unwrap_or_default()
}

/// Runs `tandem generate` with `args` (e.g. `["--events", "1000", "--seed", "7"]`)
/// and returns its JSON lines.
///
/// # Panics
/// When the binary is missing or fails: a test cannot go on without its workload.
pub fn generate(args: &[&str]) -> Vec<u8> {
    let binary = tandem_binary();
    let out = Command::new(&binary)
        .arg("generate")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {} generate: {err}", binary.display()));
    assert!(
        out.status.success(),
        "tandem generate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A dirty order stream, as a broker delivers one: `events` events over
/// `products` products, 5% sent twice, 3% malformed, 10% late, then the
/// `extra` flags (`--id-prefix`, `--span`).
#[allow(
    dead_code,
    reason = "the benches include this file and use the plain generator"
)]
pub fn dirty(events: u64, seed: u64, products: u64, extra: &[&str]) -> Vec<u8> {
    let (events, seed, products) = (events.to_string(), seed.to_string(), products.to_string());
    let mut args = vec![
        "--events",
        &events,
        "--seed",
        &seed,
        "--products",
        &products,
        "--dup-frac",
        "0.05",
        "--bad-frac",
        "0.03",
        "--late-frac",
        "0.1",
    ];
    args.extend_from_slice(extra);
    generate(&args)
}

/// The generator's output split into lines.
pub fn lines(jsonl: &[u8]) -> Vec<&[u8]> {
    jsonl
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .collect()
}
