//! Replays the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) and every
//! input a fuzzer found (`fuzz/regressions/<target>/`) through the checks of
//! `tandem::fuzzing`, on the stable toolchain: what a fuzzer once found stays
//! fixed without a fuzzer. The fuzzers themselves: `fuzz/README.md`.

use std::path::Path;

fn replay(target: &str, check: Check) {
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

/// A target's check of one input.
type Check = fn(&[u8]);

/// Every fuzz target, by its folder name, with its check.
const TARGETS: [(&str, Check); 6] = [
    ("event", tandem::fuzzing::event),
    ("push_body", tandem::fuzzing::push_body),
    ("segment", tandem::fuzzing::segment),
    ("epochs", tandem::fuzzing::epochs),
    ("config", tandem::fuzzing::config),
    ("snapshot", tandem::fuzzing::snapshot),
];

#[test]
fn every_seed_and_finding_passes_its_targets_check() {
    for (target, check) in TARGETS {
        replay(target, check);
    }
}
