//! The library's modules stand on the floors `src/lib.rs` states: an import of a module on
//! a higher floor, a cycle between modules sharing a floor, or a module on no floor fails
//! here, naming the file and the import.
//!
//! Imports are read from the source text: every `crate::name` outside comments and test
//! modules (`#[cfg(test)] mod tests`, which may use anything). The library writes one path
//! per `use crate::` (no `crate::{a, b}` groups), so each names its module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The floors of `lib.rs`'s "Floors" section, bottom first: each a set of module names.
fn floors(lib: &str) -> Vec<Vec<String>> {
    let section = lib
        .split_once("//! # Floors")
        .expect("lib.rs has a `# Floors` section")
        .1;
    let block = section
        .split_once("//! ```text\n")
        .expect("the Floors section has a ```text block")
        .1
        .split_once("//! ```")
        .expect("the block is closed")
        .0;
    let mut floors: Vec<Vec<String>> = block
        .lines()
        .map(|line| {
            line.trim_start_matches("//!")
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|floor| !floor.is_empty())
        .collect();
    floors.reverse();
    floors
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/pipeline/plan.rs`: `pipeline`), or `None`
/// for `lib.rs`.
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(SRC).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib").then(|| name.to_owned())
}

/// The code of a file without its comments and its test module.
fn code(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| match line.find(" // ") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module a file's code names through `crate::`, with the line naming it first.
fn imports(code: &str) -> Result<BTreeMap<String, String>, String> {
    let mut found = BTreeMap::new();
    for line in code.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            // `$crate::` is a macro's own crate, the same thing; a longer identifier
            // ending in `crate` is not a path.
            let before = rest[..at].chars().next_back();
            let after = &rest[at + "crate::".len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if after.starts_with('{') {
                return Err(format!(
                    "a grouped import (`crate::{{..}}`): {}",
                    line.trim()
                ));
            }
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.entry(name).or_insert_with(|| line.trim().to_owned());
        }
    }
    Ok(found)
}

struct Graph {
    floor_of: BTreeMap<String, usize>,
    /// module -> (imported module -> (file, line))
    edges: BTreeMap<String, BTreeMap<String, (String, String)>>,
}

/// Check the graph against the floors: every problem, one per line.
fn problems(graph: &Graph, modules: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for module in modules {
        if !graph.floor_of.contains_key(module) {
            problems.push(format!(
                "module `{module}` stands on no floor: add it to lib.rs's Floors"
            ));
        }
    }
    for (from, targets) in &graph.edges {
        let Some(&own) = graph.floor_of.get(from) else {
            continue;
        };
        for (to, (file, line)) in targets {
            match graph.floor_of.get(to) {
                None if !modules.contains(to) => {} // a crate-root item (`crate::Result`)
                None => {}                          // reported above
                Some(&floor) if floor > own => problems.push(format!(
                    "{file}: `{from}` (floor {own}) imports `{to}` (floor {floor}), above it: {line}"
                )),
                Some(_) => {}
            }
        }
    }
    // Cycles among modules of one floor.
    for cycle in cycles(graph) {
        problems.push(format!("an import cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// The cycles of the graph (each found once from its smallest module).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in graph.edges.get(node).into_iter().flat_map(|t| t.keys()) {
            if graph.floor_of.contains_key(next) && next != node {
                visit(graph, next, path, done, found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.edges.keys() {
        visit(graph, node, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn graph_of(lib: &str, files: &[(PathBuf, String)]) -> (Graph, BTreeSet<String>, Vec<String>) {
    let mut floor_of = BTreeMap::new();
    for (n, floor) in floors(lib).into_iter().enumerate() {
        for module in floor {
            assert!(
                floor_of.insert(module.clone(), n).is_none(),
                "`{module}` stands on two floors"
            );
        }
    }
    let mut graph = Graph {
        floor_of,
        edges: BTreeMap::new(),
    };
    let mut modules = BTreeSet::new();
    let mut errors = Vec::new();
    for (path, text) in files {
        let Some(module) = module_of(path) else {
            continue;
        };
        modules.insert(module.clone());
        let file = path.strip_prefix(SRC).unwrap().display().to_string();
        match imports(&code(text)) {
            Err(e) => errors.push(format!("src/{file}: {e}")),
            Ok(found) => {
                let targets = graph.edges.entry(module.clone()).or_default();
                for (to, line) in found {
                    if to != module {
                        targets
                            .entry(to)
                            .or_insert_with(|| (format!("src/{file}"), line));
                    }
                }
            }
        }
    }
    (graph, modules, errors)
}

fn sources() -> (String, Vec<(PathBuf, String)>) {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let mut paths = Vec::new();
    rust_files(Path::new(SRC), &mut paths);
    paths.sort();
    let files = paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    (lib, files)
}

#[test]
fn every_import_goes_down_a_floor_and_none_makes_a_cycle() {
    let (lib, files) = sources();
    let (graph, modules, mut all) = graph_of(&lib, &files);
    assert!(
        modules.len() >= 15 && graph.floor_of.len() >= 15,
        "the library's modules were not found: {modules:?}"
    );
    all.extend(problems(&graph, &modules));
    assert!(all.is_empty(), "the floors are broken:\n{}", all.join("\n"));
}

#[test]
fn a_climbing_import_or_a_cycle_is_caught() {
    let (lib, mut files) = sources();
    // `format` reaching up into `pipeline`.
    let format = files
        .iter_mut()
        .find(|(p, _)| p.ends_with("format/mod.rs"))
        .unwrap();
    format.1 = format!("use crate::pipeline::LoadStats;\n{}", format.1);
    let (graph, modules, _) = graph_of(&lib, &files);
    let found = problems(&graph, &modules);
    assert!(
        found.iter().any(|p| p.contains("src/format/mod.rs")
            && p.contains("`format`")
            && p.contains("imports `pipeline`")),
        "{found:?}"
    );
    // Two modules of one floor importing each other.
    let (lib, mut files) = sources();
    let dtype = files
        .iter_mut()
        .find(|(p, _)| p.ends_with("src/dtype.rs"))
        .unwrap();
    dtype.1 = format!("use crate::pool::threads_or_cores;\n{}", dtype.1);
    let pool = files
        .iter_mut()
        .find(|(p, _)| p.ends_with("src/pool.rs"))
        .unwrap();
    pool.1 = format!("use crate::dtype::DType;\n{}", pool.1);
    let (graph, modules, _) = graph_of(&lib, &files);
    let found = problems(&graph, &modules);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("an import cycle") && p.contains("dtype") && p.contains("pool")),
        "{found:?}"
    );
    // Comments and test modules do not count; a grouped import is refused.
    assert!(imports(&code(
        "// crate::ffi\n#[cfg(test)]\nmod tests { crate::ffi }"
    ))
    .unwrap()
    .is_empty());
    assert!(imports("use crate::{ffi, format};").is_err());
    assert_eq!(
        imports("let x = crate::format::x(); $crate::dtype::y")
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["dtype", "format"]
    );
}
