//! Element type constants. C passes them as plain integers, checked on the way in.

use std::ffi::c_char;

use crate::dtype::DType;

/// Boolean, one byte.
pub const PLAID_DTYPE_BOOL: u32 = 1;
/// Unsigned 8-bit integer.
pub const PLAID_DTYPE_U8: u32 = 2;
/// Signed 8-bit integer.
pub const PLAID_DTYPE_I8: u32 = 3;
/// Signed 16-bit integer.
pub const PLAID_DTYPE_I16: u32 = 4;
/// Unsigned 16-bit integer.
pub const PLAID_DTYPE_U16: u32 = 5;
/// Signed 32-bit integer.
pub const PLAID_DTYPE_I32: u32 = 6;
/// Unsigned 32-bit integer.
pub const PLAID_DTYPE_U32: u32 = 7;
/// Signed 64-bit integer.
pub const PLAID_DTYPE_I64: u32 = 8;
/// Unsigned 64-bit integer.
pub const PLAID_DTYPE_U64: u32 = 9;
/// IEEE 754 half precision.
pub const PLAID_DTYPE_F16: u32 = 10;
/// bfloat16.
pub const PLAID_DTYPE_BF16: u32 = 11;
/// IEEE 754 single precision.
pub const PLAID_DTYPE_F32: u32 = 12;
/// IEEE 754 double precision.
pub const PLAID_DTYPE_F64: u32 = 13;
/// Complex of two f16 (4 bytes).
pub const PLAID_DTYPE_C32: u32 = 14;
/// Complex of two f32 (8 bytes).
pub const PLAID_DTYPE_C64: u32 = 15;
/// Complex of two f64 (16 bytes).
pub const PLAID_DTYPE_C128: u32 = 16;
/// float8 e4m3fn.
pub const PLAID_DTYPE_F8_E4M3FN: u32 = 17;
/// float8 e4m3fnuz.
pub const PLAID_DTYPE_F8_E4M3FNUZ: u32 = 18;
/// float8 e5m2.
pub const PLAID_DTYPE_F8_E5M2: u32 = 19;
/// float8 e5m2fnuz.
pub const PLAID_DTYPE_F8_E5M2FNUZ: u32 = 20;
/// float8 e8m0fnu (exponent only).
pub const PLAID_DTYPE_F8_E8M0FNU: u32 = 21;
/// Two float4 e2m1fn values packed in one byte; one element is one byte.
pub const PLAID_DTYPE_F4_E2M1FN_X2: u32 = 22;

/// The short name of a dtype (`"bf16"`), or NULL for an unknown id. Static; never freed.
#[no_mangle]
pub extern "C" fn plaid_dtype_name(dtype: u32) -> *const c_char {
    ffi_boundary! {
        on_panic = std::ptr::null();
        match DType::from_id(dtype) {
            Ok(d) => DTYPE_NAMES[d.id() as usize - 1].as_ptr(),
            Err(_) => std::ptr::null(),
        }
    }
}

/// Bytes per element of a dtype, or 0 for an unknown id.
#[no_mangle]
pub extern "C" fn plaid_dtype_size(dtype: u32) -> u64 {
    ffi_boundary! {
        on_panic = 0;
        DType::from_id(dtype).map_or(0, |d| d.size())
    }
}

/// NUL-terminated names in id order; a test checks them against `DType::name`.
pub(crate) const DTYPE_NAMES: [&std::ffi::CStr; 22] = [
    c"bool",
    c"u8",
    c"i8",
    c"i16",
    c"u16",
    c"i32",
    c"u32",
    c"i64",
    c"u64",
    c"f16",
    c"bf16",
    c"f32",
    c"f64",
    c"c32",
    c"c64",
    c"c128",
    c"f8_e4m3fn",
    c"f8_e4m3fnuz",
    c"f8_e5m2",
    c"f8_e5m2fnuz",
    c"f8_e8m0fnu",
    c"f4_e2m1fn_x2",
];
