//! Fails when `include/plaid.h` differs from what cbindgen generates from the sources.
//! Regenerate with `PLAID_BLESS=1 cargo test --test header`.

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    // The version string comes from Cargo.toml, the one place it is written.
    config.after_includes = Some(format!(
        "\n/** The release version as a string. */\n#define PLAID_VERSION \"{}\"",
        env!("CARGO_PKG_VERSION")
    ));
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("utf-8 header");
    let path = root.join("include/plaid.h");
    if std::env::var_os("PLAID_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/plaid.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/plaid.h is stale: run `PLAID_BLESS=1 cargo test --test header` and commit it"
    );
}

/// Every macro of the C API carries the library's prefix: a core constant that leaks into
/// the header (`MAX_VERSION`, say) would collide with a caller's own names.
#[test]
fn every_macro_is_prefixed() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/plaid.h"))
            .expect("include/plaid.h");
    let unprefixed: Vec<&str> = header
        .lines()
        .filter_map(|line| line.strip_prefix("#define "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| !name.starts_with("PLAID_"))
        .collect();
    assert!(
        unprefixed.is_empty(),
        "unprefixed macros in plaid.h: {unprefixed:?} (exclude them in cbindgen.toml)"
    );
}

/// Doc comments become C comments in the header: a `*/` or `/*` inside one would end or nest
/// the comment and break every C and C++ program including it.
#[test]
fn no_doc_comment_breaks_the_c_comment_around_it() {
    let ffi = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(&ffi).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("///") && (line.contains("*/") || line.contains("/*")) {
                bad.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "doc comments that break C comments:\n{}",
        bad.join("\n")
    );
}
