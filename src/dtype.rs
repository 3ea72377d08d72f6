//! Element types. The numeric ids are stable: they are the `PLAID_DTYPE_*` constants of
//! the C API and the `DType` enum of `proto/plaid.proto`.

use crate::error::{Error, Result};

macro_rules! dtypes {
    ($( $variant:ident = $id:literal, $size:literal, $name:literal, $doc:literal; )*) => {
        /// The element type of a tensor.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum DType {
            $( #[doc = $doc] $variant, )*
        }

        impl DType {
            /// Every dtype, in id order.
            pub const ALL: &'static [DType] = &[$(DType::$variant),*];

            /// The stable numeric id (`PLAID_DTYPE_*`).
            pub const fn id(self) -> u32 {
                match self { $(DType::$variant => $id,)* }
            }

            /// The dtype with this id.
            pub fn from_id(id: u32) -> Result<DType> {
                match id {
                    $($id => Ok(DType::$variant),)*
                    other => Err(Error::Unsupported(format!("unknown dtype id {other}"))),
                }
            }

            /// Bytes per element. Packed sub-byte types count one byte per storage unit
            /// (`F4E2M1FNx2` holds two values in one byte).
            pub const fn size(self) -> u64 {
                match self { $(DType::$variant => $size,)* }
            }

            /// The short name used by the CLI and in messages (`"bf16"`, `"f8_e4m3fn"`).
            pub const fn name(self) -> &'static str {
                match self { $(DType::$variant => $name,)* }
            }
        }
    };
}

dtypes! {
    Bool = 1, 1, "bool", "Boolean, one byte (0 or 1).";
    U8 = 2, 1, "u8", "Unsigned 8-bit integer.";
    I8 = 3, 1, "i8", "Signed 8-bit integer.";
    I16 = 4, 2, "i16", "Signed 16-bit integer.";
    U16 = 5, 2, "u16", "Unsigned 16-bit integer.";
    I32 = 6, 4, "i32", "Signed 32-bit integer.";
    U32 = 7, 4, "u32", "Unsigned 32-bit integer.";
    I64 = 8, 8, "i64", "Signed 64-bit integer.";
    U64 = 9, 8, "u64", "Unsigned 64-bit integer.";
    F16 = 10, 2, "f16", "IEEE 754 half precision.";
    BF16 = 11, 2, "bf16", "bfloat16.";
    F32 = 12, 4, "f32", "IEEE 754 single precision.";
    F64 = 13, 8, "f64", "IEEE 754 double precision.";
    C32 = 14, 4, "c32", "Complex number of two f16.";
    C64 = 15, 8, "c64", "Complex number of two f32.";
    C128 = 16, 16, "c128", "Complex number of two f64.";
    F8E4M3FN = 17, 1, "f8_e4m3fn", "8-bit float, 4 exponent bits, finite only.";
    F8E4M3FNUZ = 18, 1, "f8_e4m3fnuz", "8-bit float, 4 exponent bits, finite, unsigned zero.";
    F8E5M2 = 19, 1, "f8_e5m2", "8-bit float, 5 exponent bits.";
    F8E5M2FNUZ = 20, 1, "f8_e5m2fnuz", "8-bit float, 5 exponent bits, finite, unsigned zero.";
    F8E8M0FNU = 21, 1, "f8_e8m0fnu", "8-bit exponent-only float (MX scale).";
    F4E2M1FNx2 = 22, 1, "f4_e2m1fn_x2", "Two 4-bit floats (e2m1) packed in one byte.";
}

impl DType {
    /// The dtype with this short name (as printed by [`DType::name`]).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// Bytes needed by a tensor of this dtype and shape, or `None` when the product of
    /// its non-zero dimensions and the element size overflows 64 bits. The check does not
    /// depend on where a zero dimension stands: `[0, 2^62, 2^62]` and `[2^62, 2^62, 0]`
    /// are both refused, so no consumer ever computes an overflowing size.
    pub fn nbytes(self, shape: &[u64]) -> Option<u64> {
        let nonzero = shape
            .iter()
            .filter(|&&dim| dim != 0)
            .try_fold(self.size(), |acc, &dim| acc.checked_mul(dim))?;
        Some(if shape.contains(&0) { 0 } else { nonzero })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_dense() {
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(d.id() as usize, i + 1);
            assert_eq!(DType::from_id(d.id()).unwrap(), *d);
            assert_eq!(DType::from_name(d.name()), Some(*d));
        }
        assert!(DType::from_id(0).is_err());
        assert!(DType::from_id(23).is_err());
    }

    #[test]
    fn nbytes_is_checked() {
        assert_eq!(DType::F32.nbytes(&[]), Some(4));
        assert_eq!(DType::F32.nbytes(&[0, 7]), Some(0));
        assert_eq!(DType::C128.nbytes(&[3, 5]), Some(240));
        assert_eq!(DType::F64.nbytes(&[u64::MAX / 4, 2]), None);
        assert_eq!(DType::U8.nbytes(&[1 << 62, 1 << 62, 0]), None);
        assert_eq!(DType::U8.nbytes(&[0, 1 << 62, 1 << 62]), None);
        assert_eq!(DType::U8.nbytes(&[0, 1 << 62]), Some(0));
    }
}
