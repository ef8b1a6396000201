//! The library's layers, checked from its source: which module may use which, and that the
//! domain does no IO. ARCHITECTURE.md ("Layers") says why; this test is how it stays true.
//!
//! Each file under `src/` (the binaries aside) belongs to one part. A part may use only the
//! parts it is allowed to, in its code outside `#[cfg(test)]` modules and comments:
//!
//! | part | may use |
//! |---|---|
//! | `error` | nothing |
//! | `domain` | `error` |
//! | `config` | `error`, `domain` |
//! | `ledger` (the core) | `error`, `domain`, `config` |
//! | `provider`, `kafka`, `webhook` | the core and below |
//! | `http` | the core and below, `kafka` and `webhook` (the relays', the replica's and the webhooks' status) |
//! | `node` (the composition root) | everything |
//! | `fixture` (benchmarks and tests) | the core and below |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn part_of(relative: &str) -> &'static str {
    for (prefix, part) in [
        ("domain/", "domain"),
        ("ledger/", "ledger"),
        ("adapters/http/", "http"),
        ("adapters/kafka/", "kafka"),
        ("adapters/provider", "provider"),
        ("adapters/webhook", "webhook"),
        ("adapters/mod.rs", "adapters"),
        ("config.rs", "config"),
        ("error.rs", "error"),
        ("node.rs", "node"),
        ("fixture.rs", "fixture"),
        ("testing.rs", "testing"),
        ("lib.rs", "lib"),
    ] {
        if relative.starts_with(prefix) {
            return part;
        }
    }
    panic!("src/{relative} belongs to no layer: add it to tests/layers.rs and ARCHITECTURE.md");
}

fn allowed(part: &str) -> &'static [&'static str] {
    match part {
        "error" => &[],
        "domain" => &["error"],
        "config" => &["error", "domain"],
        "ledger" => &["error", "domain", "config"],
        "provider" | "kafka" | "webhook" | "fixture" => &["error", "domain", "config", "ledger"],
        "http" => &["error", "domain", "config", "ledger", "kafka", "webhook"],
        _ => &[
            "error", "domain", "config", "ledger", "kafka", "http", "provider", "webhook", "adapters",
        ],
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().unwrap() != "bin" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code: test modules and comments left out.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The parts a file's code names through `crate::`.
fn uses(code: &str) -> BTreeSet<&'static str> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segments = path.split("::");
        let first = segments.next().unwrap_or("");
        let part = match first {
            "adapters" => match segments.next() {
                Some("http") => "http",
                Some("kafka") => "kafka",
                Some("provider") => "provider",
                Some("webhook") => "webhook",
                _ => "adapters",
            },
            "domain" => "domain",
            "ledger" | "Ledger" => "ledger",
            "config" | "Config" => "config",
            "error" | "Error" | "Result" => "error",
            "node" => "node",
            "fixture" => "fixture",
            "testing" => "testing",
            other => panic!("crate::{other} is not a module of a known layer"),
        };
        found.insert(part);
    }
    found
}

#[test]
fn every_part_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "the source tree was not found");
    let mut wrong = Vec::new();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let part = part_of(&relative);
        // lib.rs only declares; tests.rs and testing.rs are compiled for tests only.
        if part == "lib" || part == "testing" || relative.ends_with("/tests.rs") {
            continue;
        }
        let used = uses(&code(&std::fs::read_to_string(file).unwrap()));
        for u in &used {
            if *u != part && !allowed(part).contains(u) {
                wrong.push(format!("src/{relative} ({part}) uses {u}"));
            }
            graph.entry(part).or_default().insert(u);
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // And no cycle between parts (a cycle would need an allowed edge back down; this holds
    // the table above to being a hierarchy if it is ever edited).
    fn reaches<'a>(
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        from: &'a str,
        to: &str,
        seen: &mut BTreeSet<&'a str>,
    ) -> bool {
        graph
            .get(from)
            .into_iter()
            .flatten()
            .any(|next| *next != from && (*next == to || (seen.insert(next) && reaches(graph, next, to, seen))))
    }
    for part in graph.keys() {
        assert!(
            !reaches(&graph, part, part, &mut BTreeSet::new()),
            "{part} is in a cycle of parts: {graph:?}"
        );
    }
}

/// The core's files name each other without a cycle (`checkpoint <-> ledger` and
/// `writer <-> indexer` were cycles once): a file's module is `ledger` for `ledger/mod.rs`,
/// else its path (`alerts::store`); `crate::ledger::X` names the file X when there is one, else
/// `ledger` itself (its API); `super::x` in `ledger/alerts/` names `alerts::x`.
#[test]
fn the_core_has_no_cycle_between_its_files() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ledger");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    let module_of = |f: &Path| -> String {
        let rel = f.strip_prefix(&core).unwrap().to_string_lossy().replace('\\', "/");
        let rel = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .trim_end_matches("mod");
        if rel.is_empty() {
            "ledger".to_owned()
        } else {
            rel.replace('/', "::")
        }
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        let code = code(&std::fs::read_to_string(f).unwrap());
        let mut edges = BTreeSet::new();
        for (at, _) in code.match_indices("crate::ledger::") {
            let rest = &code[at + "crate::ledger::".len()..];
            let path: Vec<&str> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .collect();
            let two = path.iter().take(2).copied().collect::<Vec<_>>().join("::");
            let target = if modules.contains(&two) {
                two
            } else if modules.contains(path[0]) {
                path[0].to_owned()
            } else {
                "ledger".to_owned()
            };
            edges.insert(target);
        }
        if me.starts_with("alerts::") {
            for (at, _) in code.match_indices("super::") {
                let name: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                edges.insert(format!("alerts::{name}"));
            }
        }
        edges.remove(&me);
        graph.insert(me, edges);
    }
    assert!(graph.len() > 10, "the core's files were not found: {graph:?}");
    fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, at: &str, path: &mut Vec<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            return Some(path[i..].to_vec());
        }
        path.push(at.to_owned());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(c) = cycle(graph, next, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    for start in graph.keys() {
        if let Some(c) = cycle(&graph, start, &mut Vec::new()) {
            panic!("a cycle in the core: {} -> {}", c.join(" -> "), c[0]);
        }
    }
}

#[test]
fn the_domain_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let forbidden = [
        "std::fs",
        "std::net::Tcp",
        "std::net::Udp",
        "std::thread",
        "std::env",
        "std::process",
        "tokio",
        "sled",
        "rdkafka",
        "axum",
        "hyper",
        "getrandom",
        "Utc::now",
        "SystemTime",
        "Instant::now",
        "File::",
    ];
    let mut wrong = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("tests.rs")) {
        let code = code(&std::fs::read_to_string(file).unwrap());
        for f in forbidden {
            if code.contains(f) {
                wrong.push(format!("{}: {f}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "IO in the domain:\n{}", wrong.join("\n"));
}

#[test]
fn the_checks_above_would_see_a_wrong_use() {
    // The checker itself: a use across layers, in code, is found; in a comment or a test
    // module it is not.
    assert_eq!(uses(&code("use crate::ledger::Ledger;")), BTreeSet::from(["ledger"]));
    assert!(uses(&code("// see crate::adapters::http")).is_empty());
    assert!(uses(&code(
        "fn a() {}\n#[cfg(test)]\nmod tests {\n use crate::node::Node;\n}"
    ))
    .is_empty());
    assert!(!allowed("domain").contains(&"ledger"));
    assert!(!allowed("ledger").contains(&"kafka"));
}
