//! The tensorizer reader on arbitrary bytes: an index or an error, never a crash, a hang or an
//! allocation beyond the documented limits.
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use libfuzzer_sys::fuzz_target;
use plaid::source::MemorySource;

fuzz_target!(|data: &[u8]| {
    let source = MemorySource::new("fuzz", data.to_vec());
    let _ = plaid::format::tensorizer::read_index(&source);
});
