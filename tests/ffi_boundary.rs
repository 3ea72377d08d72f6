//! Every exported function's body must be one `ffi_boundary!` (src/ffi/boundary.rs), so
//! that no panic unwinds into C and every error sets the thread's message.

use std::path::Path;

/// The bodies of all `extern "C" fn`s in `source`, as (name, body text) pairs.
fn exported_bodies(source: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("extern \"C\" fn ") {
        let after = &rest[at + "extern \"C\" fn ".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body starts at the first `{` after the parameter list closes.
        let mut depth = 0i32;
        let mut body_start = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '{' if depth == 0 => {
                    body_start = Some(i + 1);
                    break;
                }
                _ => {}
            }
        }
        let body_start = body_start.expect("function body");
        found.push((name, after[body_start..].trim_start().to_owned()));
        rest = &after[body_start..];
    }
    found
}

/// The macros that are a whole export body, each made of one `ffi_boundary!`.
const BODY_MACROS: [&str; 2] = ["set_option", "free_handle"];

/// The text after the group that `text` starts with (`{ ... }` or `( ... )`, balanced).
fn after_group(text: &str, open: char, close: char) -> &str {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return &text[i + 1..];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced {open}{close}: {text}");
}

#[test]
fn every_export_goes_through_the_boundary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let mut exported = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        for (name, body) in exported_bodies(&source) {
            if name.is_empty() {
                continue; // a function-pointer type such as `plaid_place_fn`
            }
            // The whole body is one `ffi_boundary!` (after any comment): nothing runs
            // before it, nothing after it.
            let code = body
                .lines()
                .map(str::trim_start)
                .skip_while(|l| l.starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            // `set_option!` and `free_handle!` (src/ffi/mod.rs) are `ffi_boundary!`s.
            let after = if let Some(rest) = BODY_MACROS
                .iter()
                .find_map(|m| code.strip_prefix(&format!("{m}!")))
            {
                after_group(rest, '(', ')')
            } else {
                assert!(
                    code.starts_with("ffi_boundary! {"),
                    "{}: `{name}` does not start with ffi_boundary!",
                    path.display()
                );
                after_group(&code["ffi_boundary! ".len()..], '{', '}')
            };
            assert!(
                after.trim_start().starts_with('}'),
                "{}: `{name}` does something after its ffi_boundary!: {}",
                path.display(),
                &after[..after.len().min(80)]
            );
            exported.push(name);
        }
    }
    // `set_option!` and `free_handle!` are each one `ffi_boundary!`.
    let ffi = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
    for m in BODY_MACROS {
        let definition = ffi
            .split_once(&format!("macro_rules! {m} {{"))
            .unwrap_or_else(|| panic!("{m}! is not defined in src/ffi/mod.rs"))
            .1;
        let arm = definition.split_once("=>").unwrap().1.trim_start();
        assert!(
            arm.starts_with("{\n        ffi_boundary! {"),
            "{m}! must expand to one ffi_boundary!"
        );
    }
    // Every function in the header is one of them, and vice versa.    // Every function in the header is one of them, and vice versa.
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/plaid.h"))
            .unwrap();
    let mut declared: Vec<String> = header
        .lines()
        .filter(|l| {
            !l.starts_with(' ')
                && !l.starts_with("typedef")
                && l.contains("plaid_")
                && l.contains('(')
        })
        .filter_map(|l| {
            let before_paren = &l[..l.find('(')?];
            before_paren
                .split([' ', '*'])
                .next_back()
                .map(str::to_owned)
        })
        .collect();
    declared.sort();
    exported.sort();
    assert_eq!(declared, exported);
    assert!(
        exported.len() >= 30,
        "found only {} exports",
        exported.len()
    );
}

#[test]
fn the_shared_library_exports_only_the_c_api() {
    // target/<profile>/deps/<this test> -> target/<profile>/libplaid.so
    let exe = std::env::current_exe().unwrap();
    let lib = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("libplaid.so");
    assert!(
        lib.exists(),
        "{} is missing: run `cargo build` before `cargo test`",
        lib.display()
    );
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) is needed for this test");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let functions: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "T").then_some(name)
        })
        .collect();
    // crc-fast's C API comes along unasked: object_store (the remote feature) depends on
    // crc-fast with its default features, `ffi` among them, cargo unifies features, and
    // rustc exports every `#[no_mangle]` function of every crate linked into a cdylib (a
    // version script can only add to rustc's own). They are prefixed and harmless; anything
    // else is not.
    let foreign: Vec<&&str> = functions
        .iter()
        .filter(|n| !n.starts_with("plaid_"))
        .filter(|n| !(cfg!(feature = "remote") && n.starts_with("crc_fast_")))
        .collect();
    assert!(foreign.is_empty(), "exports beyond the C API: {foreign:?}");
    assert!(functions.len() >= 30);
}
