//! The layers, held by the compiler: each layer is a crate of the workspace, and a crate can
//! only name the crates it depends on, so a use across layers upwards does not compile. These
//! tests check the dependency graph itself (so that a new dependency cannot quietly turn the
//! layers into one), where sled, librdkafka and axum may appear, and two properties the crate
//! graph cannot see: the files of the core, the schema, the Kafka and the HTTP crates have no
//! cycle between them, and the domain does no IO.
//! ARCHITECTURE.md ("Layers") says why.
//!
//! | crate | may depend on (normal dependencies) |
//! |---|---|
//! | `bindledger-events` | nothing of ours |
//! | `bindledger-domain` | events |
//! | `bindledger-core` | events, domain |
//! | `bindledger-kafka` | events, domain, core |
//! | `bindledger-http` | events, domain, core, kafka (the server shows the relays' status) |
//! | `bindledger-fixture` (benchmarks and tests) | events, domain, core |
//! | `bindledger` (the node and the binaries) | everything |
//! | `bindledger-replay` (the audit tool) | events, `bindledger` without its server, fixture |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [(&str, &str, &[&str]); 8] = [
    ("events", "bindledger-events", &[]),
    ("crates/domain", "bindledger-domain", &["bindledger-events"]),
    (
        "crates/core",
        "bindledger-core",
        &["bindledger-events", "bindledger-domain"],
    ),
    (
        "crates/kafka",
        "bindledger-kafka",
        &["bindledger-events", "bindledger-domain", "bindledger-core"],
    ),
    (
        "crates/http",
        "bindledger-http",
        &[
            "bindledger-events",
            "bindledger-domain",
            "bindledger-core",
            "bindledger-kafka",
        ],
    ),
    (
        "crates/fixture",
        "bindledger-fixture",
        &["bindledger-events", "bindledger-domain", "bindledger-core"],
    ),
    (
        ".",
        "bindledger",
        &[
            "bindledger-events",
            "bindledger-domain",
            "bindledger-core",
            "bindledger-kafka",
            "bindledger-http",
            "bindledger-fixture",
        ],
    ),
    (
        "replay",
        "bindledger-replay",
        &["bindledger-events", "bindledger", "bindledger-fixture"],
    ),
];

/// A manifest's name and its normal dependencies (not dev- or build-dependencies).
fn manifest(dir: &str) -> (String, BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: toml::Table = toml::from_str(&text).unwrap();
    let name = value["package"]["name"].as_str().unwrap().to_owned();
    let deps = value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    (name, deps)
}

#[test]
fn each_crate_depends_only_on_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (dir, name, allowed) in CRATES {
        let (found, deps) = manifest(dir);
        assert_eq!(found, name, "{dir}");
        for d in deps.iter().filter(|d| d.starts_with("bindledger")) {
            if !allowed.contains(&d.as_str()) {
                wrong.push(format!("{name} depends on {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // Every crate of the workspace is in the table.
    let (_, _) = manifest(".");
    let root: toml::Table =
        toml::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap())
            .unwrap();
    let members: BTreeSet<&str> = root["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let listed: BTreeSet<&str> = CRATES.iter().map(|c| c.0).collect();
    assert_eq!(members, listed, "a workspace member is missing from this test's table");
}

/// sled is the core's (and the binary's, whose benchmark measures raw sled as its baseline; the
/// audit tool reads a directory through the core, its events as `EventBytes`); librdkafka is the
/// Kafka crate's and the binaries'; axum is the HTTP crate's and the binary's. The domain
/// depends on none of them.
#[test]
fn storage_kafka_and_http_libraries_stay_in_their_crates() {
    for (dir, name, _) in CRATES {
        let (_, deps) = manifest(dir);
        for (lib, allowed) in [
            ("sled", &["bindledger-core", "bindledger"][..]),
            ("rdkafka", &["bindledger-kafka", "bindledger", "bindledger-replay"][..]),
            ("axum", &["bindledger-http", "bindledger"][..]),
        ] {
            assert!(
                !deps.contains(lib) || allowed.contains(&name),
                "{name} depends on {lib}"
            );
        }
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

/// The core's files name each other without a cycle (`checkpoint <-> ledger` and
/// `writer <-> indexer` were cycles once): a file's module is `ledger` for `lib.rs`, else its
/// path (`alerts::store`); `crate::X` names the file X when there is one, else `ledger` itself
/// (its API; `crate::domain`, `crate::error`, `crate::Error` and `crate::Result` are the domain
/// crate's); `super::x` in
/// `alerts/` names `alerts::x`.
#[test]
fn the_core_has_no_cycle_between_its_files() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/core/src");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    let module_of = |f: &Path| -> String {
        let rel = f.strip_prefix(&core).unwrap().to_string_lossy().replace('\\', "/");
        let rel = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .trim_end_matches("mod");
        if rel.is_empty() || rel == "lib" {
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
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if ["domain::", "error::", "Error", "Result"]
                .iter()
                .any(|d| rest.starts_with(d))
            {
                continue; // the domain crate's
            }
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

/// The files of a flat crate (one module per file, no folders) as a graph: which files each
/// names through `crate::` or `super::` (its code only; its test module may name any).
fn file_graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let module_of = |f: &Path| f.file_stem().unwrap().to_string_lossy().into_owned();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).filter(|m| m != "lib").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        if me == "lib" {
            continue;
        }
        let code = code(&std::fs::read_to_string(f).unwrap());
        let mut edges = BTreeSet::new();
        for prefix in ["crate::", "super::"] {
            for (at, _) in code.match_indices(prefix) {
                let name: String = code[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) && name != me {
                    edges.insert(name);
                }
            }
        }
        graph.insert(me, edges);
    }
    graph
}

/// The first file found in a cycle of `graph`, with the graph, or `None`.
fn in_a_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str, seen: &mut BTreeSet<String>) -> bool {
        graph
            .get(from)
            .into_iter()
            .flatten()
            .any(|next| next == to || (seen.insert(next.clone()) && reaches(graph, next, to, seen)))
    }
    graph
        .keys()
        .find(|m| reaches(graph, m, m, &mut BTreeSet::new()))
        .map(|m| format!("{m} is in a cycle: {graph:?}"))
}

/// The files of the event schema, the Kafka adapters and the HTTP layer name each other
/// without a cycle. Each was one once: the schema's `types -> chain -> codec -> canonical ->
/// chain` (the hash now lives in `hash`, the schema version with the types), Kafka's
/// `reader <-> terms` through `SeqRecord` (the record and its fence now live with the rules
/// that read them), HTTP's `server <-> console` and `server <-> metrics` through `AppState`
/// (what the handlers share now lives in `state`, which names none of them).
#[test]
fn the_schema_kafka_and_http_crates_have_no_cycle_between_their_files() {
    for (dir, at_least) in [("events/src", 5), ("crates/kafka/src", 8), ("crates/http/src", 5)] {
        let graph = file_graph(dir);
        assert!(graph.len() >= at_least, "the files of {dir} were not found: {graph:?}");
        if let Some(cycle) = in_a_cycle(&graph) {
            panic!("{dir}: {cycle}");
        }
    }
    // The check itself sees a cycle.
    let mut graph = file_graph("crates/http/src");
    graph.get_mut("state").unwrap().insert("server".into());
    assert!(in_a_cycle(&graph).is_some());
}

#[test]
fn the_domain_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/domain/src");
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
        "sled::",
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
    assert!(files.len() > 8, "the domain's files were not found");
    for file in files
        .iter()
        .filter(|f| !f.ends_with("tests.rs") && !f.ends_with("testing.rs"))
    {
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
    // The checker itself: a name in code is found; in a comment or a test module it is not.
    assert!(code("use crate::writer::Writer;").contains("crate::writer"));
    assert!(!code("// see crate::writer").contains("crate::writer"));
    assert!(!code("fn a() {}\n#[cfg(test)]\nmod tests {\n use crate::writer::Writer;\n}").contains("crate::writer"));
    // And the table refuses an upward edge.
    let core = CRATES.iter().find(|c| c.1 == "bindledger-core").unwrap();
    assert!(!core.2.contains(&"bindledger-kafka"));
}
