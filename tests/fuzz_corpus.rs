//! Every file of the fuzz corpus (`fuzz/corpus/<target>/`) through its target's checks, on the
//! stable toolchain: what `make fuzz` found interesting stays a regression test.

#[path = "../fuzz/src/checks.rs"]
mod checks;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn run(target: &str, check: fn(&[u8])) {
    let inputs = corpus(target);
    assert!(inputs.len() >= 5, "the {target} corpus has {} files", inputs.len());
    for (name, data) in inputs {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{name} breaks the {target} checks");
        }
    }
}

#[test]
fn the_decoder_corpus_passes() {
    run("decoder", checks::decoder);
}

#[test]
fn the_rules_corpus_passes() {
    run("rules", checks::rules);
}

#[test]
fn the_bodies_corpus_passes() {
    run("bodies", checks::bodies);
}
