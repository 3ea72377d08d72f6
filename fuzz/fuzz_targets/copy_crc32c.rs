//! The fused copy-and-CRC kernels on arbitrary bytes, split at arbitrary points and at
//! arbitrary misalignments: every kernel copies exactly and agrees with crc-fast, chained
//! across the pieces.
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use libfuzzer_sys::fuzz_target;
use plaid::format::crc_copy;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // Low 6 bits: the source's misalignment; high 2: the destination's, in 16-byte steps.
    let (src_skew, dst_skew) = (usize::from(control & 63), usize::from(control >> 6) * 16 + 1);
    let mut shifted = vec![0u8; src_skew];
    shifted.extend_from_slice(rest);
    let src = &shifted[src_skew..];
    let expected = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, src) as u32;
    for kernel in crc_copy::kernels() {
        let mut out = vec![0u8; src.len() + dst_skew];
        let dst = &mut out[dst_skew..];
        // Pieces whose lengths come from the data itself.
        let (mut at, mut crc) = (0usize, 0u32);
        while at < src.len() {
            let step = (usize::from(src[at]) * 37 % 600 + 1).min(src.len() - at);
            crc = (kernel.run)(&mut dst[at..at + step], &src[at..at + step], crc);
            at += step;
        }
        assert_eq!(crc, expected, "{}", kernel.name);
        assert_eq!(&dst[..], src, "{}", kernel.name);
    }
});
