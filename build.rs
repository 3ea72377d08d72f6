//! Compiles `proto/plaid.proto` without `protoc` and sets the shared library's SONAME.

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
    let abi = "1";
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" || target_os == "android" || target_os == "freebsd" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libplaid.so.{abi}");
    }
    println!("cargo:rustc-env=PLAID_ABI_VERSION={abi}");
    Ok(())
}
