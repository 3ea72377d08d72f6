//! Copy bytes and compute their CRC-32C in one pass.
//!
//! A verified load copies every byte once (out of a mapping, into a staging buffer) and
//! checksums it. Copying, then checksumming the copy, reads the bytes twice. Here each
//! 32-byte load is stored to the destination and folded into the CRC in the same loop
//! iteration, so the bytes are read once.
//!
//! The folding is the carry-less multiplication scheme of Intel's "Fast CRC Computation
//! for Generic Polynomials Using PCLMULQDQ" (the one crc-fast and ISA-L use), written for
//! this loop: four 256-bit accumulators (eight 128-bit lanes), each lane moved 1024 bits
//! further along the message per iteration by multiplying its halves by
//! `x^(1024+63) mod P` and `x^(1024-1) mod P` (the
//! `-1` absorbs the one-bit offset of a carry-less product of bit-reflected operands), then
//! folded into one, and reduced to 32 bits by the CPU's own CRC-32C instruction (a 128-bit
//! remainder has the same CRC as the message it stands for). The constants are computed by
//! `const fn` below from the polynomial, not copied from a table.
//!
//! Kernels, chosen at run time ([`kernels`]):
//! - x86_64 with VPCLMULQDQ and AVX2: 256-bit folding, with non-temporal stores for
//!   destinations of 256 KiB and more (the destination goes to memory without first being
//!   read into the cache, which measured 2x plain stores on 64 MiB);
//! - anything else (a 128-bit PCLMULQDQ kernel measured below copy-then-crc-fast, whose
//!   own CRC-32C interleaves the CRC instruction with carry-less multiplication): copy, then crc-fast on the copy while it is in cache (an aarch64
//!   kernel with PMULL would slot in beside the x86 ones).

/// The CRC-32C polynomial, `x^32 + ...` (0x1EDC6F41 with its top bit).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const POLY: u64 = 0x1_1EDC_6F41;

/// `x^n mod P`, as a polynomial of degree < 32 (bit i = coefficient of x^i).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn x_pow_mod(n: u32) -> u64 {
    let mut r: u64 = 1;
    let mut i = 0;
    while i < n {
        r <<= 1;
        if r & (1 << 32) != 0 {
            r ^= POLY;
        }
        i += 1;
    }
    r
}

/// A constant for a carry-less multiplication with a bit-reflected 64-bit half: `x^n mod
/// P` with bit i moved to bit 63 - i.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn reflected(n: u32) -> u64 {
    x_pow_mod(n).reverse_bits()
}

/// Copy `src` into `dst` and return the CRC-32C of everything checksummed so far: `crc`
/// is the CRC-32C of the bytes before `src` (0 for none), so that pieces chain:
/// `copy_crc32c(b_dst, b, copy_crc32c(a_dst, a, 0)) == crc32c(a ++ b)`.
///
/// # Panics
/// When `dst` and `src` differ in length.
pub fn copy_crc32c(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy_crc32c: destination and source differ in length"
    );
    (kernel().run)(dst, src, crc)
}

/// Copy `src` into `dst` (an unverified load's copy): with non-temporal stores for
/// destinations from 256 KiB on where the CPU has AVX2 (the destination goes to memory
/// without first being read into the cache, as the verified kernel's stores do, so that an
/// unverified copy is not the slower one), plain `copy_from_slice` otherwise.
///
/// # Panics
/// When `dst` and `src` differ in length.
pub fn stream_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= x86::STREAM_FROM && *HAS_AVX2 {
        // SAFETY: the CPU reports AVX2 (checked once); the lengths are equal.
        unsafe { x86::stream_copy(dst, src) };
        return;
    }
    dst.copy_from_slice(src);
}

/// Whether the CPU has AVX2, detected once.
#[cfg(target_arch = "x86_64")]
static HAS_AVX2: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::is_x86_feature_detected!("avx2"));

/// The CRC-32C of the bytes before `data` (`crc`, 0 for none) and `data`, without copying.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut digest =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    digest.update(data);
    digest.finalize() as u32
}

/// The kernel [`copy_crc32c`] uses on this machine, by name.
#[cfg(any(test, feature = "testing"))]
pub fn kernel_name() -> &'static str {
    kernel().name
}

/// A copy-and-CRC kernel: its name and entry point (same contract as [`copy_crc32c`],
/// lengths already checked equal).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// What it uses.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    pub name: &'static str,
    /// The function.
    pub run: fn(&mut [u8], &[u8], u32) -> u32,
}

/// Every kernel this machine can run; the first is the default.
pub fn kernels() -> Vec<Kernel> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("pclmulqdq")
        && std::is_x86_feature_detected!("sse4.2")
        && std::is_x86_feature_detected!("vpclmulqdq")
        && std::is_x86_feature_detected!("avx2")
    {
        out.push(Kernel {
            name: "vpclmulqdq+avx2, non-temporal from 256 KiB",
            run: x86::run_vpclmul_auto,
        });
        out.push(Kernel {
            name: "vpclmulqdq+avx2, plain stores",
            run: x86::run_vpclmul,
        });
        out.push(Kernel {
            name: "vpclmulqdq+avx2, non-temporal stores",
            run: x86::run_vpclmul_nt,
        });
    }
    out.push(Kernel {
        name: PORTABLE,
        run: portable,
    });
    out
}

/// The name of the portable kernel (copy, then crc-fast over the copy).
pub const PORTABLE: &str = "portable (copy, then crc-fast)";

/// The kernel in use: position in [`kernels`] plus one, 0 before the first call.
static CHOSEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn kernel() -> Kernel {
    let all = available();
    let chosen = CHOSEN.load(std::sync::atomic::Ordering::Relaxed);
    all[chosen.saturating_sub(1).min(all.len() - 1)]
}

/// [`kernels`], detected once.
fn available() -> &'static [Kernel] {
    static ALL: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
    ALL.get_or_init(kernels)
}

/// Make [`copy_crc32c`] use the kernel called `name` from now on, process-wide (for
/// benchmarks that compare them in one run). Returns false, changing nothing, when this
/// machine has no such kernel.
#[cfg(feature = "testing")]
pub fn use_kernel(name: &str) -> bool {
    match available().iter().position(|k| k.name == name) {
        Some(i) => {
            CHOSEN.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Copy, then checksum the copy while it is in cache, in 256 KiB pieces.
pub fn portable(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
    const PIECE: usize = 256 << 10;
    let mut digest =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
        d.copy_from_slice(s);
        digest.update(d);
    }
    digest.finalize() as u32
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::reflected;

    /// Folding one 128-bit lane 1024 bits on (the 256-bit kernel's stride).
    const FOLD_1024: (u64, u64) = (reflected(1024 + 63), reflected(1024 - 1));
    /// Folding 128 bits on.
    const FOLD_128: (u64, u64) = (reflected(128 + 63), reflected(128 - 1));

    /// The bytes up to the destination's next `align`-byte boundary through the CRC
    /// instruction (stores that straddle cache lines cost more than those few bytes, and
    /// streaming stores need the alignment), then `body` on the rest, the state carried in.
    fn after_head(
        dst: &mut [u8],
        src: &[u8],
        crc: u32,
        align: usize,
        body: impl FnOnce(&mut [u8], &[u8], u32) -> u32,
    ) -> u32 {
        let head = dst.as_ptr().align_offset(align).min(dst.len());
        let (d0, d1) = dst.split_at_mut(head);
        let (s0, s1) = src.split_at(head);
        // SAFETY: every kernel calling this runs only where the CPU reports SSE4.2; the
        // caller checked the lengths equal, so `head` bytes are in bounds at both.
        let crc = unsafe { !tail(d0.as_mut_ptr(), s0.as_ptr(), 0, head, !crc) };
        body(d1, s1, crc)
    }

    /// [`super::stream_copy`]'s kernel: plain copies up to the destination's next 32-byte
    /// boundary and after the last whole 32 bytes, non-temporal 32-byte stores between.
    ///
    /// # Safety
    /// The CPU has AVX2; `dst.len() == src.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stream_copy(dst: &mut [u8], src: &[u8]) {
        let head = dst.as_ptr().align_offset(32).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 32 * 32;
        let (d, s) = (dst[head..].as_mut_ptr(), src[head..].as_ptr());
        let mut at = 0;
        while at < body {
            // SAFETY: `at + 32 <= body` bytes lie at both from `head` on; `d + at` is
            // 32-byte aligned (`d` is, and `at` is a multiple of 32).
            unsafe {
                let v = _mm256_loadu_si256(s.add(at).cast());
                _mm256_stream_si256(d.add(at).cast(), v);
            }
            at += 32;
        }
        // Streaming stores are weakly ordered: fence before anyone reads.
        _mm_sfence();
        dst[head + body..].copy_from_slice(&src[head + body..]);
    }

    /// Destinations from this size on get non-temporal stores by default.
    pub(super) const STREAM_FROM: usize = 256 << 10;

    /// Non-temporal stores for large destinations, plain ones for small.
    pub(super) fn run_vpclmul_auto(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
        if dst.len() >= STREAM_FROM {
            run_vpclmul_nt(dst, src, crc)
        } else {
            run_vpclmul(dst, src, crc)
        }
    }

    pub(super) fn run_vpclmul(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
        aligned::<false>(dst, src, crc)
    }

    /// [`run_vpclmul`] with non-temporal stores: the destination goes to memory without
    /// being read into the cache first (nothing of plaid's reads it again).
    pub(super) fn run_vpclmul_nt(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
        aligned::<true>(dst, src, crc)
    }

    /// The 256-bit kernel from the destination's next 32-byte boundary on.
    fn aligned<const STREAM: bool>(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
        after_head(dst, src, crc, 32, |d, s, crc| {
            // SAFETY: chosen only where the CPU reports VPCLMULQDQ, AVX2, PCLMULQDQ and
            // SSE4.2; the halves are of equal length and `d` starts 32-byte aligned.
            unsafe {
                let crc = vpclmul::<STREAM>(d, s, crc);
                if STREAM {
                    // Streaming stores are weakly ordered: fence before anyone reads.
                    _mm_sfence();
                }
                crc
            }
        })
    }

    #[inline(always)]
    fn constant(k: (u64, u64)) -> __m128i {
        // SAFETY: SSE2, part of x86_64.
        unsafe { _mm_set_epi64x(k.1 as i64, k.0 as i64) }
    }

    /// `x` moved on by the distance `k` encodes, reduced to 96 bits or fewer.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn fold(x: __m128i, k: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(x, k),
            _mm_clmulepi64_si128::<0x11>(x, k),
        )
    }

    /// Load 16 bytes at `src + at`, store them at `dst + at`, return them.
    ///
    /// # Safety
    /// `at + 16` bytes are readable at `src` and writable at `dst`.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    unsafe fn move16(dst: *mut u8, src: *const u8, at: usize) -> __m128i {
        // SAFETY: in bounds per the contract; unaligned loads and stores.
        unsafe {
            let v = _mm_loadu_si128(src.add(at).cast());
            _mm_storeu_si128(dst.add(at).cast(), v);
            v
        }
    }

    /// The CRC state (not inverted) of a 128-bit remainder.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn reduce(x: __m128i) -> u32 {
        let lo = _mm_cvtsi128_si64(x) as u64;
        let hi = _mm_extract_epi64::<1>(x) as u64;
        _mm_crc32_u64(_mm_crc32_u64(0, lo), hi) as u32
    }

    /// The bytes from `at` on, 8 then 1 at a time, through the CRC instruction.
    ///
    /// # Safety
    /// `len` bytes are readable at `src` and writable at `dst`.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    unsafe fn tail(dst: *mut u8, src: *const u8, mut at: usize, len: usize, state: u32) -> u32 {
        let mut state = u64::from(state);
        while at + 8 <= len {
            // SAFETY: in bounds per the contract.
            let v = unsafe { src.add(at).cast::<u64>().read_unaligned() };
            // SAFETY: as above.
            unsafe { dst.add(at).cast::<u64>().write_unaligned(v) };
            state = _mm_crc32_u64(state, v);
            at += 8;
        }
        while at < len {
            // SAFETY: in bounds per the contract.
            let b = unsafe { *src.add(at) };
            // SAFETY: as above.
            unsafe { *dst.add(at) = b };
            state = u64::from(_mm_crc32_u8(state as u32, b));
            at += 1;
        }
        state as u32
    }

    /// Load 32 bytes at `src + at`, store them at `dst + at` (non-temporally with
    /// `STREAM`), return them.
    ///
    /// # Safety
    /// `at + 32` bytes are readable at `src` and writable at `dst`; with `STREAM`,
    /// `dst + at` is 32-byte aligned.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn move32<const STREAM: bool>(dst: *mut u8, src: *const u8, at: usize) -> __m256i {
        // SAFETY: in bounds (and aligned where streaming) per the contract.
        unsafe {
            let v = _mm256_loadu_si256(src.add(at).cast());
            if STREAM {
                _mm256_stream_si256(dst.add(at).cast(), v);
            } else {
                // A volatile store: as plain stores, LLVM splits the loop into a memcpy
                // and a folding loop that reads the source a second time (found in a
                // profile of many small tensors: a third of the time in memcpy).
                dst.add(at).cast::<__m256i>().write_volatile(v);
            }
            v
        }
    }

    /// Both 128-bit lanes of `x` moved on by the distance `k` encodes.
    #[inline]
    #[target_feature(enable = "vpclmulqdq,avx2")]
    fn fold256(x: __m256i, k: __m256i) -> __m256i {
        _mm256_xor_si256(
            _mm256_clmulepi64_epi128::<0x00>(x, k),
            _mm256_clmulepi64_epi128::<0x11>(x, k),
        )
    }

    /// # Safety
    /// The CPU has VPCLMULQDQ, AVX2, PCLMULQDQ and SSE4.2; `dst.len() == src.len()`;
    /// with `STREAM`, `dst` is 32-byte aligned (its stores in the main loop are
    /// non-temporal; the caller fences).
    #[target_feature(enable = "vpclmulqdq,avx2,pclmulqdq,sse4.2")]
    unsafe fn vpclmul<const STREAM: bool>(dst: &mut [u8], src: &[u8], crc: u32) -> u32 {
        let len = src.len();
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let mut state = !crc;
        let mut at = 0;
        if len >= 256 {
            // Four 256-bit accumulators, 128 bytes per iteration: lane j of accumulator
            // i holds the 16 bytes at 32 i + 16 j of the current 128, so each lane moves
            // on by 1024 bits per iteration.
            // SAFETY: `at + 32 <= len` at each move32 call below.
            let mut x = unsafe {
                [
                    move32::<false>(d, s, 0),
                    move32::<false>(d, s, 32),
                    move32::<false>(d, s, 64),
                    move32::<false>(d, s, 96),
                ]
            };
            // The running state enters as the first 32 bits of the message.
            x[0] = _mm256_xor_si256(x[0], _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, state as i32));
            at = 128;
            let k1024 = _mm256_set_epi64x(
                FOLD_1024.1 as i64,
                FOLD_1024.0 as i64,
                FOLD_1024.1 as i64,
                FOLD_1024.0 as i64,
            );
            while at + 128 <= len {
                for (i, acc) in x.iter_mut().enumerate() {
                    // SAFETY: `at + 128 <= len`; with STREAM, `d` is aligned and so is
                    // every multiple of 32 past it.
                    let v = unsafe { move32::<STREAM>(d, s, at + 32 * i) };
                    *acc = _mm256_xor_si256(fold256(*acc, k1024), v);
                }
                at += 128;
            }
            // The eight 16-byte lanes in message order, folded into one.
            let k128 = constant(FOLD_128);
            let mut acc = _mm256_castsi256_si128(x[0]);
            acc = _mm_xor_si128(fold(acc, k128), _mm256_extracti128_si256::<1>(x[0]));
            for v in &x[1..] {
                acc = _mm_xor_si128(fold(acc, k128), _mm256_castsi256_si128(*v));
                acc = _mm_xor_si128(fold(acc, k128), _mm256_extracti128_si256::<1>(*v));
            }
            while at + 16 <= len {
                // SAFETY: `at + 16 <= len`.
                let v = unsafe { move16(d, s, at) };
                acc = _mm_xor_si128(fold(acc, k128), v);
                at += 16;
            }
            state = reduce(acc);
        }
        // SAFETY: `len` bytes at both.
        !unsafe { tail(d, s, at, len, state) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::checksum::crc32c;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn the_constants_are_powers_of_x() {
        assert_eq!(x_pow_mod(0), 1);
        assert_eq!(x_pow_mod(31), 1 << 31);
        assert_eq!(x_pow_mod(32), POLY & 0xFFFF_FFFF);
    }

    #[test]
    fn every_length_to_4096_every_kernel_with_misalignment() {
        let src = bytes(4096 + 64, 1);
        for Kernel { name, run } in kernels() {
            for len in 0..=4096usize {
                let skew = len % 64;
                let (s_off, d_off) = (skew, (skew * 7) % 64);
                let s = &src[s_off..s_off + len];
                let mut dst = vec![0u8; len + 64];
                let crc = run(&mut dst[d_off..d_off + len], s, 0);
                assert_eq!(crc, crc32c(s), "{name}, length {len}");
                assert_eq!(&dst[d_off..d_off + len], s, "{name}, length {len}");
            }
        }
    }

    #[test]
    fn chained_pieces_equal_one_pass() {
        let src = bytes(1 << 20, 2);
        let whole = crc32c(&src);
        for Kernel { name, run } in kernels() {
            let mut dst = vec![0u8; src.len()];
            let mut crc = 0;
            let mut at = 0;
            for (i, piece) in [1usize, 15, 16, 17, 127, 128, 129, 255, 256, 4097, 65_536]
                .iter()
                .cycle()
                .enumerate()
            {
                let end = (at + piece + i % 3).min(src.len());
                crc = run(&mut dst[at..end], &src[at..end], crc);
                at = end;
                if at == src.len() {
                    break;
                }
            }
            assert_eq!(crc, whole, "{name}");
            assert!(dst == src, "{name}");
        }
    }

    #[test]
    fn random_lengths_to_64_mib() {
        let src = bytes(64 << 20, 3);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut lengths = vec![64 << 20, (64 << 20) - 1, 1 << 20];
        for _ in 0..12 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            lengths.push((state % (64 << 20)) as usize);
        }
        for Kernel { name, run } in kernels() {
            for &len in &lengths {
                let off = len % 61;
                let len = len - off.min(len);
                let s = &src[off..off + len];
                let mut dst = vec![0u8; len];
                assert_eq!(
                    run(&mut dst, s, 0x1234_5678),
                    {
                        let mut d = crc_fast::Digest::new_with_init_state(
                            crc_fast::CrcAlgorithm::Crc32Iscsi,
                            u64::from(!0x1234_5678u32),
                        );
                        d.update(s);
                        d.finalize() as u32
                    },
                    "{name}, length {len}"
                );
                assert!(dst == s, "{name}, length {len}");
            }
        }
    }

    #[test]
    fn the_public_function_uses_a_kernel_and_checks_lengths() {
        assert!(!kernel_name().is_empty());
        let src = bytes(1000, 4);
        let mut dst = vec![0u8; 1000];
        assert_eq!(copy_crc32c(&mut dst, &src, 0), crc32c(&src));
        let caught = std::panic::catch_unwind(|| {
            let mut short = vec![0u8; 10];
            copy_crc32c(&mut short, &src, 0)
        });
        assert!(caught.is_err());
    }

    #[test]
    fn stream_copy_copies_every_length_and_misalignment() {
        let src = bytes((3 << 20) + 128, 9);
        for len in [0, 1, 31, 32, 33, 4095, 256 << 10, (256 << 10) + 45, 3 << 20] {
            for shift in [0, 1, 7, 31] {
                // Destination and source misaligned by different amounts.
                let mut dst = vec![0u8; len + shift];
                let s = &src[3 * shift..3 * shift + len];
                stream_copy(&mut dst[shift..], s);
                assert_eq!(&dst[shift..], s, "len {len}, shift {shift}");
                assert!(dst[..shift].iter().all(|&b| b == 0));
            }
        }
    }
}
