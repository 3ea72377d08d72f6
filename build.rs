//! Compiles `proto/plaid.proto` without `protoc`, sets the shared library's SONAME and
//! puts the SONAME link beside the library cargo builds.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/plaid.proto");
    let descriptors = protox::compile(["proto/plaid.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // A BTreeMap keeps metadata in key order, so the same model always serializes
    // to the same bytes.
    config.btree_map(["."]);
    config.compile_fds(descriptors)?;

    // The ABI major travels in the SONAME so that an incompatible library is never
    // picked up by a program built against another ABI.
    let abi = "2";
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "android" || target_os == "freebsd" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libplaid.so.{abi}");
        soname_link(abi);
    }
    println!("cargo:rustc-env=PLAID_ABI_VERSION={abi}");
    Ok(())
}

/// A program linked with `-L target/release -lplaid` records the SONAME
/// `libplaid.so.<ABI version>` (`libplaid.so.2`), which cargo never creates: without this link it links but cannot start. Cargo gives a
/// build script no path for its final artifacts, so the profile folder (`target/release`,
/// or `target/<triple>/release`) is found as `OUT_DIR`'s third ancestor
/// (`<profile>/build/plaid-<hash>/out`). The link is relative, made before the library
/// exists, and left alone where the layout is not the expected one.
#[cfg(unix)]
fn soname_link(abi: &str) {
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return;
    };
    let out_dir = std::path::PathBuf::from(out_dir);
    let Some(profile) = out_dir.ancestors().nth(3) else {
        return;
    };
    if out_dir.ancestors().nth(2).and_then(|b| b.file_name()) != Some("build".as_ref()) {
        return;
    }
    let link = profile.join(format!("libplaid.so.{abi}"));
    if std::fs::symlink_metadata(&link).is_err() {
        if let Err(e) = std::os::unix::fs::symlink("libplaid.so", &link) {
            println!("cargo:warning=could not create {}: {e}", link.display());
        }
    }
}

#[cfg(not(unix))]
fn soname_link(_abi: &str) {}
