//! What a job's bytes pass through on their way to the destination: a chain of stages fed
//! pieces of any size and alignment, in order. Transforms before verification (the place
//! of tensorizer's decrypt stage: its hashes cover the plaintext), then verification, then
//! transforms after it (the place of plaid's decrypt stage: its CRCs cover the stored
//! bytes).
//!
//! Verification stages keep their state across pieces: the CRC-32C block accumulator
//! carries a partial block from one piece to the next, so a piece may end anywhere;
//! whole-tensor hashes (tensorizer's SHA-256 and CRC-32) are fed in order; a piece of a
//! tensor whose CRC-32 covers all of it keeps its own CRC, combined with the others' once
//! every piece is in ([`SplitCrcs`]).

use crate::error::Result;
use crate::format::verify::{Check, SplitCrcs, Transform, Verify};
use crate::format::TensorInfo;

/// Pieces fused copy-and-check works on: each is checked right after it is copied, while
/// it is in cache. (Smaller pieces measured two to three times slower when copying out of a
/// file mapping.)
const FUSED_PIECE: usize = 1 << 20;

#[derive(Clone)]
pub(crate) struct Chain<'t> {
    file: &'t str,
    /// Position in the tensor's stored bytes of the next byte fed.
    at: u64,
    before: Vec<Box<dyn Transform>>,
    check: Check<'t>,
    after: Vec<Box<dyn Transform>>,
}

impl<'t> Chain<'t> {
    /// The chain of a job covering `len` stored bytes of `tensor` from `start` on. `start`
    /// is a multiple of the tensor's checksum unit, and so is `start + len` unless it is
    /// the tensor's end.
    pub(crate) fn new(
        file: &'t str,
        tensor: &'t TensorInfo,
        verify: Verify,
        start: u64,
        len: u64,
        split: &'t SplitCrcs,
    ) -> Chain<'t> {
        Chain {
            file,
            at: start,
            before: Vec::new(),
            check: Check::new(tensor, verify, start, len, split),
            after: Vec::new(),
        }
    }

    /// Add a transform that runs before verification (decryption).
    pub(crate) fn before(mut self, stage: Box<dyn Transform>) -> Self {
        self.before.push(stage);
        self
    }

    /// The bytes the stages must see whole: pieces fed start at multiples of it.
    pub(crate) fn unit(&self) -> usize {
        self.before
            .iter()
            .chain(&self.after)
            .map(|s| s.unit() as usize)
            .fold(1, usize::max)
    }

    /// Pieces of about `FUSED_PIECE` bytes, whole units of the stages.
    fn piece(&self) -> usize {
        let unit = self.unit();
        super::whole_units(FUSED_PIECE, unit)
    }

    /// Add a transform that runs after verification (plaid's decryption).
    pub(crate) fn after(mut self, stage: Box<dyn Transform>) -> Self {
        self.after.push(stage);
        self
    }

    /// The next bytes, in place where they will stay (the destination, a staging buffer):
    /// transformed and checked.
    pub(crate) fn feed(&mut self, bytes: &mut [u8]) -> Result<()> {
        for stage in &mut self.before {
            stage.apply(self.at, bytes)?;
        }
        self.check.update(self.file, bytes)?;
        for stage in &mut self.after {
            stage.apply(self.at, bytes)?;
        }
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// The next bytes, lent by the source (`src`), copied into `dst` (as long) and passed
    /// through the stages there; with nothing to transform first, each piece is checked
    /// right after it is copied.
    pub(crate) fn copy(&mut self, src: &[u8], dst: &mut [u8]) -> Result<()> {
        if matches!(self.check, Check::Off) && self.before.is_empty() && self.after.is_empty() {
            // Nothing to do in cache: one copy, streamed past it where large.
            crate::format::crc_copy::stream_copy(dst, src);
            self.at += src.len() as u64;
            return Ok(());
        }
        let piece = self.piece();
        if let (Check::Blocks(blocks), true) = (&mut self.check, self.before.is_empty()) {
            // One pass: each byte is stored and folded into its block's CRC-32C as it is
            // loaded (format::crc_copy), never read back; then what comes after
            // verification runs on the piece while it is in cache.
            if self.after.is_empty() {
                blocks.copy(self.file, src, dst)?;
                self.at += src.len() as u64;
                return Ok(());
            }
            if let [stage] = &mut self.after[..] {
                // One stage after verification (decryption): each piece is checked where it
                // lies, then transformed from there into the destination in one pass.
                for (s, d) in src.chunks(piece).zip(dst.chunks_mut(piece)) {
                    blocks.update(self.file, s)?;
                    stage.apply_from(self.at, s, d)?;
                    self.at += s.len() as u64;
                }
                return Ok(());
            }
            for (s, d) in src.chunks(piece).zip(dst.chunks_mut(piece)) {
                blocks.copy(self.file, s, d)?;
                for stage in &mut self.after {
                    stage.apply(self.at, d)?;
                }
                self.at += s.len() as u64;
            }
            return Ok(());
        }
        if let (Check::Off, true, [stage]) =
            (&self.check, self.before.is_empty(), &mut self.after[..])
        {
            for (s, d) in src.chunks(piece).zip(dst.chunks_mut(piece)) {
                stage.apply_from(self.at, s, d)?;
                self.at += s.len() as u64;
            }
            return Ok(());
        }
        for (s, d) in src.chunks(piece).zip(dst.chunks_mut(piece)) {
            d.copy_from_slice(s);
            self.feed(d)?;
        }
        Ok(())
    }

    /// The next bytes, lent read-only, only to be checked (verification without a
    /// destination). Transforms need a copy, made piece by piece: decryption
    /// authenticates.
    pub(crate) fn inspect(&mut self, bytes: &[u8]) -> Result<()> {
        if self.before.is_empty() && self.after.is_empty() {
            self.check.update(self.file, bytes)?;
            self.at += bytes.len() as u64;
            return Ok(());
        }
        let step = self.piece();
        let mut piece = vec![0u8; bytes.len().min(step)];
        for s in bytes.chunks(step) {
            let d = &mut piece[..s.len()];
            d.copy_from_slice(s);
            self.feed(d)?;
        }
        Ok(())
    }

    /// Every byte of the job went through: compare what is compared at the end.
    pub(crate) fn finish(self) -> Result<()> {
        self.check.finish(self.file)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::format::checksum::{block_crcs, crc32c};
    use crate::format::Checksum;
    use crate::format::TensorRole;
    use crate::DType;

    fn tensor(data: &[u8], block: u64) -> TensorInfo {
        TensorInfo {
            name: "t".into(),
            dtype: DType::U8,
            shape: smallvec::smallvec![data.len() as u64],
            nbytes: data.len() as u64,
            index: 0,
            offset: 1000,
            checksum: Checksum::Crc32cBlocks {
                block_size: block,
                crcs: block_crcs(data, block).into(),
            },
            zero_fill: false,
            role: TensorRole::Unspecified,
            module_index: 0,
            path: None,
            encryption: None,
        }
    }

    const ON: Verify = Verify {
        on: true,
        sha256: true,
    };

    /// Feed `data[start..end]` in pieces of the given sizes (cycled).
    fn feed_in(chain: &mut Chain<'_>, data: &[u8], sizes: &[usize]) -> Result<()> {
        let mut at = 0;
        let mut k = 0;
        let mut buffer = data.to_vec();
        while at < buffer.len() {
            let n = sizes[k % sizes.len()].min(buffer.len() - at);
            chain.feed(&mut buffer[at..at + n])?;
            at += n;
            k += 1;
        }
        Ok(())
    }

    #[test]
    fn blocks_are_checked_whatever_the_pieces() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let t = tensor(&data, 4096);
        let split = SplitCrcs::default();
        for sizes in [&[1][..], &[7, 4096, 3], &[4095, 2], &[10_000], &[4096]] {
            let mut chain = Chain::new("f", &t, ON, 0, data.len() as u64, &split);
            feed_in(&mut chain, &data, sizes).unwrap();
            chain.finish().unwrap();
        }
        // A job of blocks 1..2 only.
        let mut chain = Chain::new("f", &t, ON, 4096, 4096, &split);
        feed_in(&mut chain, &data[4096..8192], &[100, 5000]).unwrap();
        chain.finish().unwrap();
    }

    #[test]
    fn a_damaged_byte_is_found_at_every_position_of_a_block_and_piece() {
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 13) as u8).collect();
        let t = tensor(&data, 4096);
        let split = SplitCrcs::default();
        for bad in [0, 1, 4095, 4096, 4097, 8191, 8192, 3 * 4096 - 1] {
            for sizes in [&[1][..], &[4096], &[4095], &[4097], &[3, 1000]] {
                let mut damaged = data.clone();
                damaged[bad] ^= 0x20;
                let mut chain = Chain::new("f", &t, ON, 0, data.len() as u64, &split);
                let err = feed_in(&mut chain, &damaged, sizes).unwrap_err();
                match err {
                    Error::Checksum { block, offset, .. } => {
                        assert_eq!(block, bad as u64 / 4096, "byte {bad}, pieces {sizes:?}");
                        assert_eq!(offset, 1000 + block * 4096);
                    }
                    other => panic!("{other}"),
                }
            }
        }
    }

    #[test]
    fn copying_checks_and_a_job_ending_inside_a_block_is_refused() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let t = tensor(&data, 4096);
        let split = SplitCrcs::default();
        let mut dst = vec![0u8; data.len()];
        let mut chain = Chain::new("f", &t, ON, 0, 5000, &split);
        chain.copy(&data, &mut dst).unwrap();
        chain.finish().unwrap();
        assert_eq!(dst, data);
        let mut chain = Chain::new("f", &t, ON, 0, 5000, &split);
        chain.inspect(&data[..100]).unwrap();
        assert!(chain.finish().is_err());
        assert_eq!(crc32c(&data[4096..]), block_crcs(&data, 4096)[1]);
    }

    /// A stand-in cipher: XOR with a byte that depends on the position.
    #[derive(Clone)]
    struct Xor;
    impl Transform for Xor {
        fn apply(&mut self, at: u64, bytes: &mut [u8]) -> Result<()> {
            for (i, b) in bytes.iter_mut().enumerate() {
                *b ^= (at + i as u64) as u8 ^ 0x5a;
            }
            Ok(())
        }
        fn boxed_clone(&self) -> Box<dyn Transform> {
            Box::new(self.clone())
        }
    }

    #[test]
    fn transforms_run_before_and_after_verification_at_the_right_positions() {
        let plain: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        let t = tensor(&plain, 4096);
        let split = SplitCrcs::default();
        let mut cipher = plain.clone();
        Xor.apply(0, &mut cipher).unwrap();
        // Decrypting before verification: the checksums (of the plaintext) pass, in any
        // pieces, lent or in place.
        let mut dst = vec![0u8; cipher.len()];
        let mut chain = Chain::new("f", &t, ON, 0, 9000, &split).before(Box::new(Xor));
        chain.copy(&cipher[..5000], &mut dst[..5000]).unwrap();
        let mut rest = cipher[5000..].to_vec();
        chain.feed(&mut rest[..1]).unwrap();
        chain.feed(&mut rest[1..]).unwrap();
        chain.finish().unwrap();
        dst[5000..].copy_from_slice(&rest);
        assert_eq!(dst, plain);
        let mut chain = Chain::new("f", &t, ON, 0, 9000, &split).before(Box::new(Xor));
        chain.inspect(&cipher).unwrap();
        chain.finish().unwrap();
        // Without decryption the ciphertext fails; a transform after verification sees
        // verified plaintext and its output reaches the destination.
        let mut chain = Chain::new("f", &t, ON, 0, 9000, &split);
        assert!(chain.inspect(&cipher).is_err());
        let mut out = plain.clone();
        let mut chain = Chain::new("f", &t, ON, 0, 9000, &split).after(Box::new(Xor));
        chain.feed(&mut out[..4097]).unwrap();
        chain.feed(&mut out[4097..]).unwrap();
        chain.finish().unwrap();
        assert_eq!(out, cipher);
    }
}
