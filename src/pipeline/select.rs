//! A [`View`] resolved against one tensor: which stored bytes it needs, where each of its
//! elements lands in the dense destination, and the conversion on the way.
//!
//! A slice of `start..stop` along dimension `d` of a row-major tensor is `outer` runs (one
//! per index of the dimensions before `d`) of `run` contiguous elements, each `period`
//! elements after the previous one. A slice along dimension 0 (or one whose outer
//! dimensions are all 1) is one run: one contiguous range of the file.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::sink::View;

/// The most runs of a slice read one by one (see [`Selection::spans`]).
pub(crate) const MAX_SPANS: u64 = 4096;

/// A view of one tensor, checked and reduced to arithmetic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Stored bytes per element.
    src_size: u64,
    /// Destination bytes per element.
    dst_size: u64,
    /// Elements from one run's start to the next's.
    period: u64,
    /// Elements skipped at the start of each period.
    first: u64,
    /// Elements per run.
    run: u64,
    /// Runs.
    outer: u64,
    /// The conversion; `None` copies.
    cast: Option<(DType, DType)>,
}

/// The floating-point dtypes plaid converts among.
fn float(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

impl Selection {
    /// Resolve `view` for `tensor`: a slice out of range, reversed, of a 0-d tensor or of a
    /// dimension the tensor lacks is `InvalidArgument`, a conversion of anything but
    /// f16, bf16, f32 and f64 `Unsupported`, both naming the tensor. `None` for a view that
    /// is the whole tensor as stored.
    pub(crate) fn resolve(tensor: &TensorInfo, view: &View) -> Result<Option<Selection>> {
        let name = &tensor.name;
        let cast = match view.dtype {
            Some(to) if to != tensor.dtype => {
                if !float(tensor.dtype) || !float(to) {
                    return Err(Error::Unsupported(format!(
                        "tensor '{name}': cannot convert {} to {}: plaid converts only among f16, bf16, f32 and f64",
                        tensor.dtype, to
                    )));
                }
                Some((tensor.dtype, to))
            }
            _ => None,
        };
        let src_size = tensor.dtype.size();
        let dst_size = cast.map_or(src_size, |(_, to)| to.size());
        let elements = tensor.nbytes / src_size.max(1);
        let mut selection = Selection {
            src_size,
            dst_size,
            period: elements,
            first: 0,
            run: elements,
            outer: 1,
            cast,
        };
        if let Some(slice) = view.slice {
            let shape = &tensor.shape;
            let invalid = |why: String| Err(Error::invalid(format!("tensor '{name}': {why}")));
            if shape.is_empty() {
                return invalid("a 0-d tensor cannot be sliced".into());
            }
            let dim = slice.dim as usize;
            if dim >= shape.len() {
                return invalid(format!(
                    "slice dimension {dim} of a tensor of rank {} (shape {:?})",
                    shape.len(),
                    shape.as_slice()
                ));
            }
            if slice.start > slice.stop || slice.stop > shape[dim] {
                return invalid(format!(
                    "slice {}..{} of dimension {dim}, which has {} indices (shape {:?})",
                    slice.start,
                    slice.stop,
                    shape[dim],
                    shape.as_slice()
                ));
            }
            if elements == 0 {
                // A dimension of size 0 (its neighbours may be huge: products of them
                // could overflow): every slice is empty.
                selection.outer = 0;
                selection.run = 0;
                return Ok(selection.cast.is_some().then_some(selection));
            }
            // Products of a shape whose product (nbytes) is known not to overflow.
            let inner: u64 = shape[dim + 1..].iter().product();
            let outer: u64 = shape[..dim].iter().product();
            selection.period = shape[dim] * inner;
            selection.first = slice.start * inner;
            selection.run = (slice.stop - slice.start) * inner;
            selection.outer = if selection.run == 0 { 0 } else { outer };
        }
        Ok(
            (selection.cast.is_some() || selection.dest_len() != tensor.nbytes)
                .then_some(selection),
        )
    }

    /// Bytes the destination receives.
    pub(crate) fn dest_len(&self) -> u64 {
        self.outer * self.run * self.dst_size
    }

    /// Destination bytes per element: the view's bytes are produced in multiples of this.
    pub(crate) fn dest_unit(&self) -> usize {
        self.dst_size.max(1) as usize
    }

    /// Stored bytes per element: ranges of stored bytes are cut at multiples of this.
    pub(crate) fn src_size(&self) -> u64 {
        self.src_size
    }

    /// Destination bytes of the elements stored before stored byte `at` (a multiple of
    /// the element size): where the bytes from `at` on land.
    pub(crate) fn dest_at(&self, at: u64) -> u64 {
        let x = at / self.src_size.max(1);
        if self.period == 0 {
            return 0;
        }
        let (i, r) = (x / self.period, x % self.period);
        let before = if i >= self.outer {
            self.outer * self.run
        } else {
            i * self.run + r.saturating_sub(self.first).min(self.run)
        };
        before * self.dst_size
    }

    /// The ranges `(start, end)` of stored bytes the selection needs, in order: one where
    /// the runs are contiguous or the gaps between them at most `merge_gap` bytes (read
    /// through), else one per run, up to [`MAX_SPANS`] of them (more runs than that are
    /// read through too: a job per run of a million-row tensor would cost more memory
    /// and requests than the bytes it saves).
    pub(crate) fn spans(&self, merge_gap: u64) -> Vec<(u64, u64)> {
        if self.outer == 0 || self.run == 0 {
            return Vec::new();
        }
        let size = self.src_size;
        let gap = (self.period - self.run) * size;
        if self.outer == 1 || gap <= merge_gap || self.outer > MAX_SPANS {
            let start = self.first * size;
            let end = ((self.outer - 1) * self.period + self.first + self.run) * size;
            return vec![(start, end)];
        }
        (0..self.outer)
            .map(|i| {
                let start = (i * self.period + self.first) * size;
                (start, start + self.run * size)
            })
            .collect()
    }

    /// Write into `dst` the destination bytes from `dest_from` on (`dst.len()` of them, a
    /// multiple of the destination element size), taking them from `src`, the stored bytes
    /// from `src_at` on, which hold every element they need.
    pub(crate) fn gather(&self, src: &[u8], src_at: u64, dest_from: u64, dst: &mut [u8]) {
        let (ss, ds) = (self.src_size as usize, self.dst_size as usize);
        let mut u = dest_from / self.dst_size;
        let mut done = 0;
        while done < dst.len() {
            let (i, j) = (u / self.run, u % self.run);
            let x = i * self.period + self.first + j;
            let n = ((self.run - j) as usize).min((dst.len() - done) / ds);
            let from = (x * self.src_size - src_at) as usize;
            convert(
                self.cast,
                &src[from..from + n * ss],
                &mut dst[done..done + n * ds],
            );
            done += n * ds;
            u += n as u64;
        }
    }
}

/// Convert the elements of `src` into `dst` (as many, in the destination dtype); a plain
/// copy without a cast. Rounding to a narrower type is to nearest, ties to even; NaN stays
/// NaN, infinities stay infinite, and values past the narrower type's range become
/// infinities.
pub(crate) fn convert(cast: Option<(DType, DType)>, src: &[u8], dst: &mut [u8]) {
    let Some((from, to)) = cast else {
        dst.copy_from_slice(src);
        return;
    };
    macro_rules! map {
        ($n:literal, $m:literal, $f:expr) => {
            for (s, d) in src.chunks_exact($n).zip(dst.chunks_exact_mut($m)) {
                let v = $f(s.try_into().expect("element"));
                d.copy_from_slice(&v);
            }
        };
    }
    use DType::{BF16, F16, F32, F64};
    let h = |b: [u8; 2]| f16::from_le_bytes(b);
    let g = |b: [u8; 2]| bf16::from_le_bytes(b);
    match (from, to) {
        (F32, F16) => map!(4, 2, |b| f16::from_f32(f32::from_le_bytes(b)).to_le_bytes()),
        (F32, BF16) => map!(4, 2, |b| bf16::from_f32(f32::from_le_bytes(b))
            .to_le_bytes()),
        (F32, F64) => map!(4, 8, |b| f64::from(f32::from_le_bytes(b)).to_le_bytes()),
        (F16, F32) => map!(2, 4, |b| h(b).to_f32().to_le_bytes()),
        (BF16, F32) => map!(2, 4, |b| g(b).to_f32().to_le_bytes()),
        (F16, F64) => map!(2, 8, |b| h(b).to_f64().to_le_bytes()),
        (BF16, F64) => map!(2, 8, |b| g(b).to_f64().to_le_bytes()),
        // Through f32, which holds every value of both exactly: one rounding.
        (F16, BF16) => map!(2, 2, |b| bf16::from_f32(h(b).to_f32()).to_le_bytes()),
        (BF16, F16) => map!(2, 2, |b| f16::from_f32(g(b).to_f32()).to_le_bytes()),
        (F64, F32) => map!(8, 4, |b| (f64::from_le_bytes(b) as f32).to_le_bytes()),
        // Straight from f64, rounded once (through f32 would round twice).
        (F64, F16) => map!(8, 2, |b| narrow_f64(f64::from_le_bytes(b), 5, 10)
            .to_le_bytes()),
        (F64, BF16) => map!(8, 2, |b| narrow_f64(f64::from_le_bytes(b), 8, 7)
            .to_le_bytes()),
        // `resolve` admits only the pairs above.
        _ => unreachable!("no conversion from {from} to {to}"),
    }
}

/// `x` rounded once, to nearest with ties to even, to the 16-bit binary format of
/// `exp_bits` exponent bits and `man_bits` fraction bits (f16: 5 and 10, bf16: 8 and 7), as
/// its bits: subnormals where the format has them, infinity past its largest finite value
/// (that is, from the midpoint between the largest finite value and the next power of
/// two up), a quiet NaN (sign kept) for any NaN.
pub(crate) fn narrow_f64(x: f64, exp_bits: u32, man_bits: u32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 63) as u16) << 15;
    let exp_all = ((1u16 << exp_bits) - 1) << man_bits;
    if x.is_nan() {
        return sign | exp_all | (1 << (man_bits - 1));
    }
    if x.is_infinite() {
        return sign | exp_all;
    }
    let biased = ((bits >> 52) & 0x7ff) as i64;
    if biased == 0 {
        // Zero or an f64 subnormal (below 2^-1022): far under half the least subnormal
        // of either target format, so a zero of the same sign.
        return sign;
    }
    let significand = (bits & ((1u64 << 52) - 1)) | (1u64 << 52); // 53 bits, value 1.x
    let exponent = biased - 1023;
    let bias = (1i64 << (exp_bits - 1)) - 1;
    let min_exponent = 1 - bias;
    // How many low bits of the significand go: more for a result below the normal range.
    let shift = 52 - i64::from(man_bits) + (min_exponent - exponent).max(0);
    if shift > 60 {
        // Below half the least subnormal (the significand is under 2^53 < 2^(shift-1)).
        return sign;
    }
    let shift = shift as u32;
    let mut kept = significand >> shift;
    let rest = significand & ((1u64 << shift) - 1);
    let half = 1u64 << (shift - 1);
    if rest > half || (rest == half && kept & 1 == 1) {
        kept += 1;
    }
    // `kept` holds the fraction and the leading 1 of a normal result: a subnormal has no
    // leading 1 (its exponent field is 0), and a carry out of either reaches the next
    // exponent by the addition itself.
    let field = if exponent < min_exponent {
        0
    } else {
        (exponent + bias - 1) as u64
    };
    let value = (field << man_bits) + kept;
    if value >= u64::from(exp_all) {
        return sign | exp_all; // past the largest finite value
    }
    sign | value as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Checksum, TensorRole};

    fn tensor(dtype: DType, shape: &[u64]) -> TensorInfo {
        TensorInfo {
            name: "t".into(),
            dtype,
            shape: shape.into(),
            nbytes: shape.iter().product::<u64>() * dtype.size(),
            index: 0,
            offset: 0,
            checksum: Checksum::None,
            zero_fill: false,
            role: TensorRole::Unspecified,
            module_index: 0,
            path: None,
            encryption: None,
        }
    }

    /// The selected elements' indices, by the definition of a row-major slice.
    fn reference(shape: &[u64], dim: usize, start: u64, stop: u64) -> Vec<u64> {
        let total: u64 = shape.iter().product();
        let mut out = Vec::new();
        for flat in 0..total {
            let mut rest = flat;
            let mut index = vec![0; shape.len()];
            for k in (0..shape.len()).rev() {
                index[k] = rest % shape[k];
                rest /= shape[k];
            }
            if (start..stop).contains(&index[dim]) {
                out.push(flat);
            }
        }
        out
    }

    #[test]
    fn slices_of_every_dimension_select_what_row_major_slicing_selects() {
        for shape in [&[7u64][..], &[3, 5], &[2, 3, 4], &[2, 1, 3, 2], &[4, 0, 3]] {
            let t = tensor(DType::U16, shape);
            let src: Vec<u8> = (0..t.nbytes).map(|i| (i * 7 % 251) as u8).collect();
            for dim in 0..shape.len() {
                for start in 0..=shape[dim] {
                    for stop in start..=shape[dim] {
                        let view = View::whole().slice(dim as u32, start, stop);
                        let wanted = reference(shape, dim, start, stop);
                        let s = Selection::resolve(&t, &view).unwrap();
                        let Some(s) = s else {
                            assert_eq!(wanted.len() as u64 * 2, t.nbytes);
                            continue;
                        };
                        assert_eq!(s.dest_len(), wanted.len() as u64 * 2);
                        let expected: Vec<u8> = wanted
                            .iter()
                            .flat_map(|&e| src[e as usize * 2..e as usize * 2 + 2].to_vec())
                            .collect();
                        // Whole, and in pieces cut at every element boundary.
                        for gap in [0, 1 << 20] {
                            let mut got = vec![0; s.dest_len() as usize];
                            for (a, b) in s.spans(gap) {
                                for cut in (a..b).step_by(2) {
                                    let (d0, d1) = (s.dest_at(cut), s.dest_at(cut + 2));
                                    let piece = &src[cut as usize..cut as usize + 2];
                                    s.gather(piece, cut, d0, &mut got[d0 as usize..d1 as usize]);
                                }
                            }
                            assert_eq!(got, expected, "{shape:?} dim {dim} {start}..{stop}");
                        }
                    }
                }
            }
        }
    }

    /// `x` converted from f64 by `convert` (the path every load takes), as bits.
    fn from_f64(x: f64, to: DType) -> u16 {
        let mut out = [0u8; 2];
        convert(Some((DType::F64, to)), &x.to_le_bytes(), &mut out);
        u16::from_le_bytes(out)
    }

    #[test]
    fn f64_narrows_to_f16_and_bf16_with_one_rounding() {
        // Two roundings (through f32) get these wrong.
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        let y = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        for (value, to, bits, why) in [
            (65519.99999, DType::F16, 0x7bff, "65504, not infinity"),
            (
                65520.0,
                DType::F16,
                0x7c00,
                "the midpoint to 2^16 is infinity",
            ),
            (x, DType::F16, 0x3c01, "just above the tie rounds up"),
            (
                1.0 + 2f64.powi(-11),
                DType::F16,
                0x3c00,
                "a tie goes to even",
            ),
            (y, DType::BF16, 0x3f81, "bf16: just above the tie rounds up"),
        ] {
            assert_eq!(from_f64(value, to), bits, "{why}");
        }
        // Every finite value of both formats: itself, and the midpoints to its neighbour
        // above (exact in f64) round to even, a hair either side of them to the nearer.
        for (to, widen) in [
            (
                DType::F16,
                (|b: u16| f16::from_bits(b).to_f64()) as fn(u16) -> f64,
            ),
            (DType::BF16, |b: u16| bf16::from_bits(b).to_f64()),
        ] {
            for bits in 0..0x7fffu16 {
                let v = widen(bits);
                if !v.is_finite() {
                    continue;
                }
                for sign in [0u16, 0x8000] {
                    let s = if sign == 0 { 1.0 } else { -1.0 };
                    assert_eq!(from_f64(s * v, to), sign | bits, "{to} {v}");
                    let up = widen(bits + 1);
                    let mid = if up.is_finite() {
                        (v + up) / 2.0
                    } else {
                        // Past the largest finite value: the midpoint to the next power of
                        // two, which a format with more exponent would hold.
                        v + (v - widen(bits - 1)) / 2.0
                    };
                    let even = if bits & 1 == 0 { bits } else { bits + 1 };
                    assert_eq!(from_f64(s * mid, to), sign | even, "{to} tie at {mid}");
                    let below = f64::from_bits(mid.to_bits() - 1);
                    let above = f64::from_bits(mid.to_bits() + 1);
                    assert_eq!(from_f64(s * below, to), sign | bits, "{to} under {mid}");
                    assert_eq!(
                        from_f64(s * above, to),
                        sign | (bits + 1),
                        "{to} over {mid}"
                    );
                }
            }
        }
        for to in [DType::F16, DType::BF16] {
            assert_eq!(
                from_f64(f64::MIN_POSITIVE / 2.0, to),
                0,
                "an f64 subnormal is 0"
            );
            assert_eq!(from_f64(-1e-300, to), 0x8000, "the sign of a zero is kept");
            assert_eq!(
                from_f64(f64::INFINITY, to) & 0x7fff,
                from_f64(1e300, to) & 0x7fff
            );
            assert_eq!(from_f64(f64::NEG_INFINITY, to), from_f64(-1e300, to));
            let nan = from_f64(-f64::NAN, to);
            assert!(nan & 0x8000 != 0, "a NaN keeps its sign");
            let quiet = match to {
                DType::F16 => f16::from_bits(nan).is_nan(),
                _ => bf16::from_bits(nan).is_nan(),
            };
            assert!(quiet, "a NaN stays NaN");
        }
    }

    #[test]
    fn bad_views_are_refused_with_the_tensor_named() {
        let t = tensor(DType::F32, &[4, 6]);
        for view in [
            View::whole().slice(2, 0, 1),
            View::whole().slice(0, 3, 2),
            View::whole().slice(1, 0, 7),
        ] {
            let e = Selection::resolve(&t, &view).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains("'t'"), "{e}");
        }
        // A dimension of 0 beside huge ones: empty, without overflowing on the way.
        let mut huge = tensor(DType::U8, &[0, 1 << 32, 1 << 32]);
        huge.nbytes = 0;
        for dim in 0..3 {
            let view = View::whole().slice(dim, 0, huge.shape[dim as usize].min(5));
            let s = Selection::resolve(&huge, &view).unwrap();
            assert!(s.is_none_or(|s| s.dest_len() == 0));
        }
        let s = Selection::resolve(&huge, &View::whole().slice(1, 3, 9).dtype(DType::U8)).unwrap();
        assert!(s.is_none_or(|s| s.dest_len() == 0));
        let scalar = tensor(DType::F32, &[]);
        assert!(Selection::resolve(&scalar, &View::whole().slice(0, 0, 1)).is_err());
        let ints = tensor(DType::I32, &[4]);
        let e = Selection::resolve(&ints, &View::whole().dtype(DType::F32)).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        // The same dtype is no conversion, for any tensor.
        assert_eq!(
            Selection::resolve(&ints, &View::whole().dtype(DType::I32)).unwrap(),
            None
        );
    }

    #[test]
    fn conversions_round_to_nearest_even_and_keep_specials() {
        let cast = |from, to, src: &[u8]| {
            let mut dst = vec![0; src.len() / from_size(from) * from_size(to)];
            convert(Some((from, to)), src, &mut dst);
            dst
        };
        fn from_size(d: DType) -> usize {
            d.size() as usize
        }
        // 1 + 2^-11 is halfway between two f16 values: ties to even (1.0); 1 + 3*2^-11
        // rounds up to the even 1 + 2^-9.
        let f = |v: f32| v.to_le_bytes().to_vec();
        assert_eq!(
            cast(DType::F32, DType::F16, &f(1.0 + 2f32.powi(-11))),
            0x3c00u16.to_le_bytes()
        );
        assert_eq!(
            cast(DType::F32, DType::F16, &f(1.0 + 3.0 * 2f32.powi(-11))),
            0x3c02u16.to_le_bytes()
        );
        // bf16: 1 + 2^-8 is halfway: ties to even (1.0).
        assert_eq!(
            cast(DType::F32, DType::BF16, &f(1.0 + 2f32.powi(-8))),
            0x3f80u16.to_le_bytes()
        );
        assert_eq!(
            cast(DType::F32, DType::F16, &f(1e6)),
            0x7c00u16.to_le_bytes()
        );
        let nan = cast(DType::F32, DType::BF16, &f(f32::NAN));
        assert!(bf16::from_le_bytes([nan[0], nan[1]]).is_nan());
        // Widening is exact, and back again is the identity.
        let every: Vec<u8> = (0..=u16::MAX).flat_map(|v| v.to_le_bytes()).collect();
        for half in [DType::F16, DType::BF16] {
            let wide = cast(half, DType::F32, &every);
            let back = cast(DType::F32, half, &wide);
            for (k, (a, b)) in every.chunks(2).zip(back.chunks(2)).enumerate() {
                let v = u16::from_le_bytes([a[0], a[1]]);
                let is_nan = if half == DType::F16 {
                    f16::from_bits(v).is_nan()
                } else {
                    bf16::from_bits(v).is_nan()
                };
                if !is_nan {
                    assert_eq!(a, b, "{half} value {k}");
                }
            }
        }
    }
}
