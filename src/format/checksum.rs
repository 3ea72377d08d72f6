//! CRC-32C (Castagnoli) over fixed-size blocks.

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

pub use super::crc_copy::copy_crc32c;

/// CRC-32 (IEEE, as zlib) and SHA-256 of a byte stream, each only where wanted.
#[derive(Clone)]
pub struct WholeHasher {
    crc32: Option<crc_fast::Digest>,
    sha256: Option<sha2::Sha256>,
}

impl WholeHasher {
    /// A hasher computing the hashes `checksum` stores.
    pub fn new(checksum: &super::Checksum) -> Self {
        let (crc, sha) = match checksum {
            super::Checksum::WholeTensor { crc32, sha256, .. } => {
                (crc32.is_some(), sha256.is_some())
            }
            _ => (false, false),
        };
        WholeHasher::with(crc, sha)
    }

    /// A hasher computing the CRC-32 and/or the SHA-256.
    pub fn with(crc32: bool, sha256: bool) -> Self {
        use sha2::Digest;
        WholeHasher {
            crc32: crc32.then(|| crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc)),
            sha256: sha256.then(sha2::Sha256::new),
        }
    }

    /// Feed the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        if let Some(crc) = &mut self.crc32 {
            crc.update(data);
        }
        if let Some(sha) = &mut self.sha256 {
            sha.update(data);
        }
    }

    /// The CRC-32 and SHA-256 of everything fed.
    pub fn finish(self) -> (Option<u32>, Option<[u8; 32]>) {
        use sha2::Digest;
        (
            self.crc32.map(|c| c.finalize() as u32),
            self.sha256.map(|s| s.finalize().into()),
        )
    }
}

/// Number of `block_size` blocks covering `len` bytes.
pub fn block_count(len: u64, block_size: u64) -> u64 {
    len.div_ceil(block_size)
}

/// CRC-32C of every `block_size` block of `data`.
pub fn block_crcs(data: &[u8], block_size: u64) -> Vec<u32> {
    let block = usize::try_from(block_size).unwrap_or(usize::MAX);
    data.chunks(block).map(crc32c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The CRC-32C check value from the CRC catalogue.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // CRC-32 (zlib) and SHA-256 check values.
        let mut h = WholeHasher::with(true, true);
        h.update(b"1234");
        h.update(b"56789");
        let (crc, sha) = h.finish();
        assert_eq!(crc, Some(0xCBF4_3926));
        assert_eq!(
            sha.unwrap()[..4],
            [0x15, 0xe2, 0xb0, 0xd3],
            "sha256(\"123456789\") starts 15e2b0d3"
        );
    }

    #[test]
    fn blocks_cover_data() {
        let data = vec![7u8; 10_000];
        let crcs = block_crcs(&data, 4096);
        assert_eq!(crcs.len() as u64, block_count(10_000, 4096));
        assert_eq!(crcs[2], crc32c(&data[8192..]));
        assert!(block_crcs(&[], 4096).is_empty());
        let src: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        assert_eq!(copy_crc32c(&mut dst, &src, 0), crc32c(&src));
        assert_eq!(dst, src);
    }
}
