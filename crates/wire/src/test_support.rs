//! Helpers shared by the crate's unit tests.

/// Runs `case` on every input of a cargo-fuzz target's corpus committed in
/// `fuzz/regressions/<target>` (the replay on stable Rust of what
/// `scripts/fuzz` runs under libFuzzer), and fails if the corpus is empty.
pub(crate) fn replay_fuzz_corpus(target: &str, mut case: impl FnMut(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regression corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("case");
        case(&data);
        n += 1;
    }
    assert!(n > 0, "no cases in {}", dir.display());
}
