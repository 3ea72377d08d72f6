//! Verification, the format layer's rules for checking a tensor's stored bytes as they
//! pass, and the [`Transform`] a stage that changes them (decryption) implements.
//!
//! Verification keeps its state across pieces: the CRC-32C block accumulator
//! ([`BlockCrcs`]) carries a partial block from one piece to the next, so a piece may end
//! anywhere; whole-tensor hashes (tensorizer's SHA-256 and CRC-32, after the tensor's
//! header bytes) are fed in order; a piece of a tensor whose CRC-32 covers all of it keeps
//! its own CRC, combined with the others' once every piece is in ([`SplitCrcs`]). A new
//! format brings its checksum kind here: a [`Checksum`] variant and its arm in
//! [`Check::new`].

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::format::checksum::WholeHasher;
use crate::format::{Checksum, TensorInfo};

/// What to verify.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verify {
    /// Anything at all.
    pub(crate) on: bool,
    /// SHA-256 hashes too, where the file has them.
    pub(crate) sha256: bool,
}

impl Verify {
    /// Whether verifying `tensor` takes a hash that must see all of its bytes in order, in
    /// one job.
    pub(crate) fn sequential(&self, tensor: &TensorInfo) -> bool {
        self.on
            && matches!(&tensor.checksum, Checksum::WholeTensor { sha256: Some(_), .. } if self.sha256)
    }
}

/// A stage that changes bytes in place as they pass (same length in and out), given their
/// position in the tensor's stored bytes.
pub(crate) trait Transform: Send {
    /// Transform `bytes`, the stored bytes of the tensor from position `at` on.
    fn apply(&mut self, at: u64, bytes: &mut [u8]) -> Result<()>;
    /// Transform `src` (lent, read-only) into `dst` (as long): [`Transform::apply`] on a
    /// copy, unless the stage reads one and writes the other in a single pass.
    fn apply_from(&mut self, at: u64, src: &[u8], dst: &mut [u8]) -> Result<()> {
        dst.copy_from_slice(src);
        self.apply(at, dst)
    }
    /// A copy of this stage in its current state.
    fn boxed_clone(&self) -> Box<dyn Transform>;
    /// The bytes this stage must see whole (a cipher's chunk): it is fed pieces that start
    /// at multiples of this, each a multiple long but for the tensor's last.
    fn unit(&self) -> u64 {
        1
    }
}

impl Clone for Box<dyn Transform> {
    fn clone(&self) -> Self {
        self.boxed_clone()
    }
}

/// Verification of one job's bytes.
#[derive(Clone)]
pub(crate) enum Check<'t> {
    Off,
    Blocks(Box<BlockCrcs<'t>>),
    Whole(&'t TensorInfo, Box<WholeHasher>),
    /// Part of a tensor whose CRC-32 covers all of it: this piece's CRC, combined with the
    /// others' once every piece is in.
    Piece {
        tensor: &'t TensorInfo,
        start: u64,
        len: u64,
        crc: Box<crc_fast::Digest>,
        split: &'t SplitCrcs,
    },
}

impl<'t> Check<'t> {
    pub(crate) fn new(
        tensor: &'t TensorInfo,
        verify: Verify,
        start: u64,
        len: u64,
        split: &'t SplitCrcs,
    ) -> Self {
        if !verify.on {
            return Check::Off;
        }
        match &tensor.checksum {
            Checksum::None => Check::Off,
            Checksum::Crc32cBlocks { block_size, crcs } => Check::Blocks(Box::new(BlockCrcs {
                tensor,
                block_size: *block_size,
                crcs,
                at: start,
                crc: 0,
            })),
            Checksum::WholeTensor { crc32: Some(_), .. }
                if (start != 0 || len != tensor.stored_len()) && !verify.sequential(tensor) =>
            {
                Check::Piece {
                    tensor,
                    start,
                    len,
                    crc: Box::new(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc)),
                    split,
                }
            }
            Checksum::WholeTensor {
                prefix,
                crc32,
                sha256,
            } => {
                let sha256 = sha256.is_some() && verify.sha256;
                if crc32.is_none() && !sha256 {
                    return Check::Off;
                }
                let mut hasher = Box::new(WholeHasher::with(crc32.is_some(), sha256));
                hasher.update(prefix);
                Check::Whole(tensor, hasher)
            }
        }
    }

    pub(crate) fn update(&mut self, file: &str, data: &[u8]) -> Result<()> {
        match self {
            Check::Off => Ok(()),
            Check::Blocks(blocks) => blocks.update(file, data),
            Check::Whole(_, hasher) => {
                hasher.update(data);
                Ok(())
            }
            Check::Piece { crc, .. } => {
                crc.update(data);
                Ok(())
            }
        }
    }

    pub(crate) fn finish(self, file: &str) -> Result<()> {
        match self {
            Check::Off => Ok(()),
            Check::Blocks(blocks) => blocks.finish(file),
            Check::Whole(tensor, hasher) => compare_whole(file, tensor, *hasher),
            Check::Piece {
                tensor,
                start,
                len,
                crc,
                split,
            } => split.add(file, tensor, start, len, crc.finalize() as u32),
        }
    }
}

/// The CRC-32C block accumulator: each block's CRC is built from the pieces that cover
/// it, whatever their sizes, and compared as soon as its last byte is in.
#[derive(Clone)]
pub(crate) struct BlockCrcs<'t> {
    tensor: &'t TensorInfo,
    block_size: u64,
    crcs: &'t [u32],
    /// Position in the tensor of the next byte.
    at: u64,
    /// The CRC-32C of the current block's bytes so far.
    crc: u32,
}

impl BlockCrcs<'_> {
    /// Fold `data`, the next bytes, into the blocks' CRCs.
    pub(crate) fn update(&mut self, file: &str, data: &[u8]) -> Result<()> {
        self.advance(file, data.len(), &mut |crc, at, take| {
            crate::format::crc_copy::crc32c_append(crc, &data[at..at + take])
        })
    }

    /// Copy `src` into `dst` while checking it: one pass over the bytes.
    pub(crate) fn copy(&mut self, file: &str, src: &[u8], dst: &mut [u8]) -> Result<()> {
        self.advance(file, src.len(), &mut |crc, at, take| {
            crate::format::crc_copy::copy_crc32c(&mut dst[at..at + take], &src[at..at + take], crc)
        })
    }

    /// Take the next `len` bytes block by block: `step(crc, offset, count)` folds `count`
    /// bytes from `offset` into `crc`; each block is compared when its last byte is in.
    fn advance(
        &mut self,
        file: &str,
        len: usize,
        step: &mut dyn FnMut(u32, usize, usize) -> u32,
    ) -> Result<()> {
        let stored = self.tensor.stored_len();
        let mut done = 0;
        while done < len {
            let block = self.at / self.block_size;
            let block_end = (block + 1).saturating_mul(self.block_size).min(stored);
            if self.at >= block_end {
                return Err(Error::invalid(format!(
                    "internal error: {} bytes fed past the end of tensor '{}'",
                    len - done,
                    self.tensor.name
                )));
            }
            let take =
                usize::try_from(block_end - self.at).map_or(len - done, |n| n.min(len - done));
            self.crc = step(self.crc, done, take);
            self.at += take as u64;
            done += take;
            if self.at == block_end {
                self.compare(file, block)?;
            }
        }
        Ok(())
    }

    fn compare(&mut self, file: &str, block: u64) -> Result<()> {
        let actual = std::mem::take(&mut self.crc);
        let expected = usize::try_from(block)
            .ok()
            .and_then(|b| self.crcs.get(b))
            .copied()
            .ok_or_else(|| {
                Error::invalid(format!(
                    "internal error: tensor '{}' has no checksum for block {block}",
                    self.tensor.name
                ))
            })?;
        if actual != expected {
            return Err(Error::Checksum {
                file: file.to_owned(),
                tensor: self.tensor.name.to_string(),
                offset: self.tensor.offset + block * self.block_size,
                block,
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// A job ends on a block boundary or at the tensor's end: a partial block left over
    /// means the planner cut it wrong.
    fn finish(self, _file: &str) -> Result<()> {
        if !self.at.is_multiple_of(self.block_size) && self.at != self.tensor.stored_len() {
            return Err(Error::invalid(format!(
                "internal error: a job of tensor '{}' ended inside checksum block {}",
                self.tensor.name,
                self.at / self.block_size
            )));
        }
        Ok(())
    }
}

/// The CRC-32s of the pieces of tensors read in several jobs, by tensor, until every piece
/// is in and they can be combined into the tensor's CRC.
#[derive(Default)]
pub(crate) struct SplitCrcs {
    pieces: Mutex<HashMap<usize, Vec<PieceCrc>>>,
}

/// A piece of a tensor: its start, its length and its CRC-32.
type PieceCrc = (u64, u64, u32);

impl SplitCrcs {
    /// Record the CRC of `len` bytes from `start`; with the last piece of the tensor,
    /// combine them (after the CRC of its header) and compare with the stored CRC-32.
    fn add(&self, file: &str, tensor: &TensorInfo, start: u64, len: u64, crc: u32) -> Result<()> {
        let mut pieces = {
            let mut all = self.pieces.lock();
            let mine = all.entry(tensor.index).or_default();
            mine.push((start, len, crc));
            if mine.iter().map(|p| p.1).sum::<u64>() < tensor.stored_len() {
                return Ok(());
            }
            all.remove(&tensor.index).unwrap_or_default()
        };
        pieces.sort_unstable();
        let Checksum::WholeTensor { prefix, crc32, .. } = &tensor.checksum else {
            return Ok(());
        };
        let algorithm = crc_fast::CrcAlgorithm::Crc32IsoHdlc;
        let mut whole = crc_fast::checksum(algorithm, prefix);
        for (_, len, crc) in pieces {
            whole = crc_fast::checksum_combine(algorithm, whole, u64::from(crc), len);
        }
        match crc32 {
            Some(stored) if *stored != whole as u32 => Err(Error::HashMismatch {
                file: file.to_owned(),
                tensor: tensor.name.to_string(),
                offset: tensor.offset,
                detail: format!(
                    "stored crc32 {stored:#010x}, computed {:#010x}",
                    whole as u32
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Compare the hashes of a whole tensor with the stored ones.
fn compare_whole(file: &str, tensor: &TensorInfo, hasher: WholeHasher) -> Result<()> {
    let Checksum::WholeTensor { crc32, sha256, .. } = &tensor.checksum else {
        return Ok(());
    };
    let (crc, sha) = hasher.finish();
    let mismatch = |detail: String| Error::HashMismatch {
        file: file.to_owned(),
        tensor: tensor.name.to_string(),
        offset: tensor.offset,
        detail,
    };
    if let (Some(stored), Some(actual)) = (crc32, crc) {
        if *stored != actual {
            return Err(mismatch(format!(
                "stored crc32 {stored:#010x}, computed {actual:#010x}"
            )));
        }
    }
    if let (Some(stored), Some(actual)) = (sha256, sha) {
        if **stored != actual {
            return Err(mismatch(format!(
                "stored sha256 {}, computed {}",
                hex(&stored[..]),
                hex(&actual)
            )));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
