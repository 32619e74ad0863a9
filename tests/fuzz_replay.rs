//! Replays the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) and every
//! input a fuzzer found (`fuzz/regressions/<target>/`) through the checks of
//! `tandem::fuzzing`, on the stable toolchain: what a fuzzer once found stays
//! fixed without a fuzzer. The fuzzers themselves: `fuzz/README.md`.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("list the corpus").path();
            let data = std::fs::read(&path).expect("read a corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "{target}: no seed to replay");
}

#[test]
fn event_corpus() {
    replay("event", tandem::fuzzing::event);
}

#[test]
fn push_body_corpus() {
    replay("push_body", tandem::fuzzing::push_body);
}

#[test]
fn segment_corpus() {
    replay("segment", tandem::fuzzing::segment);
}

#[test]
fn epochs_corpus() {
    replay("epochs", tandem::fuzzing::epochs);
}

#[test]
fn config_corpus() {
    replay("config", tandem::fuzzing::config);
}

#[test]
fn snapshot_corpus() {
    replay("snapshot", tandem::fuzzing::snapshot);
}
