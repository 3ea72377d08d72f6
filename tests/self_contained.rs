//! Whoever clones plaid has only the repository: no tracked file may reach a path outside
//! it. A relative path that climbs above the root, Python's `Path(__file__).parents[N]`
//! past the root, or a folder named beside the clone all pass on a machine that happens to
//! have that folder and fail everywhere else, so only a test like this one catches them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked files (`git ls-files`), or every file outside build outputs where the tree
/// is not a git checkout (an unpacked archive).
fn tracked_files() -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(out) = listed {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect();
    }
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(root().join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = dir.join(entry.file_name());
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                if !matches!(name.as_str(), ".git" | "target" | "build" | ".venv") {
                    stack.push(rel);
                }
            } else {
                found.push(rel);
            }
        }
    }
    found
}

/// Markers after which a relative path starts at the repository's root.
const ROOT_MARKERS: [&str; 6] = [
    "CARGO_MANIFEST_DIR",
    "PROJECT_SOURCE_DIR",
    "CMAKE_SOURCE_DIR",
    "show-toplevel",
    "ROOT /",
    "ROOT.join",
];

/// Every way `line` of a file `depth` folders below the root reaches outside the
/// repository, as sentences.
fn escapes(line: &str, depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    let beside = format!("{}/{}", "..", "shared");
    if line.contains(&beside) {
        found.push(format!("names the folder `{beside}` beside the clone"));
    }
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let starts_component =
            i == 0 || !(bytes[i - 1] as char).is_alphanumeric() && bytes[i - 1] != b'.';
        if starts_component && &bytes[i..i + 2] == b".." && matches!(bytes[i + 2], b'/' | b'\\') {
            let mut climbs = 0;
            let mut j = i;
            while j + 2 < bytes.len()
                && &bytes[j..j + 2] == b".."
                && matches!(bytes[j + 2], b'/' | b'\\')
            {
                climbs += 1;
                j += 3;
            }
            // `$(dirname "$0")/..`, `__file__` and the CMake list dir start at the file's
            // folder; the markers above start at the root; anything else is taken as
            // relative to the file (a Markdown link, a CMake source).
            let before = &line[..i];
            let base = if ROOT_MARKERS.iter().any(|m| before.contains(m)) {
                0
            } else {
                depth
            };
            if climbs > base {
                found.push(format!(
                    "climbs {climbs} folder(s) up from a place {base} below the root"
                ));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    if line.contains("__file__") {
        let mut ancestors = 0;
        if let Some(at) = line.find(".parents[") {
            let digits: String = line[at + 9..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            ancestors += digits.parse::<usize>().unwrap_or(0) + 1;
        }
        ancestors += line.matches(".parent").count() - line.matches(".parents[").count();
        // The file's folder is ancestor 1; the root is ancestor depth + 1.
        if ancestors > depth + 1 {
            found.push(format!(
                "goes {ancestors} folders up from a file {depth} below the root"
            ));
        }
    }
    found
}

#[test]
fn no_tracked_file_refers_to_a_path_outside_the_repository() {
    let mut found = Vec::new();
    let files = tracked_files();
    assert!(files.len() > 50, "only {} files found", files.len());
    for file in files {
        let Ok(text) = std::fs::read(root().join(&file)) else {
            continue;
        };
        if text.iter().take(8192).any(|b| *b == 0) {
            continue; // binary
        }
        let text = String::from_utf8_lossy(&text);
        let depth = file.components().count() - 1;
        for (n, line) in text.lines().enumerate() {
            for why in escapes(line, depth) {
                found.push(format!(
                    "{}:{}: {why}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tracked files reach outside the repository:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_catches_each_way_out() {
    let up = "..";
    let at_root_dir = format!("PathBuf::from(env!(\"CARGO_MANIFEST_DIR\")).join(\"{up}/x\")");
    assert_eq!(escapes(&at_root_dir, 1).len(), 1);
    assert_eq!(
        escapes(&format!("see [{up}/a.md]({up}/{up}/a.md)"), 1).len(),
        1
    );
    assert!(escapes(&format!("see [a]({up}/README.md)"), 1).is_empty());
    assert_eq!(escapes(&format!("x = \"{up}/{}\"", "shared"), 0).len(), 2);
    let here = format!("Path({}file{})", "__", "__");
    let past_root = format!("F = {here}.resolve().parents[3].parent / \"x\"");
    assert_eq!(escapes(&past_root, 3).len(), 1);
    assert!(escapes(&format!("F = {here}.resolve().parents[3] / \"tests\""), 3).is_empty());
    assert_eq!(
        escapes(&format!("F = {here}.parent.parent.parent"), 1).len(),
        1
    );
    assert!(escapes(&format!("cd \"$(dirname \"$0\")/{up}/{up}\""), 2).is_empty());
    assert!(escapes("an ellipsis... and a../b", 0).is_empty());
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorizer")
        .is_dir());
}
