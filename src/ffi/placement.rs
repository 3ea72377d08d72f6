//! The placement callback: C's `plaid_place_fn` adapted into the core's [`Placement`].

use std::ffi::{c_char, c_void};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::pipeline::{host_memory, received, Claims};
use crate::sink::{Destination, Placement, View};

/// Destination kind: do not load this tensor.
pub const PLAID_DEST_SKIP: u32 = 0;
/// Destination kind: host memory at `address`.
pub const PLAID_DEST_HOST: u32 = 1;
/// Destination kind: CUDA device memory (`CUdeviceptr`) on device `device`.
pub const PLAID_DEST_CUDA: u32 = 2;

/// A tensor's description, lent by the deserializer and valid while it lives. Never
/// free or modify it. This struct may grow at the end in later versions.
#[repr(C)]
#[derive(Debug)]
pub struct plaid_tensor_info {
    /// NUL-terminated UTF-8 name.
    pub name: *const c_char,
    /// Length of `name` in bytes, without the NUL.
    pub name_len: usize,
    /// Element type, a `PLAID_DTYPE_*` value.
    pub dtype: u32,
    /// Number of dimensions; 0 for a scalar.
    pub ndim: u32,
    /// `ndim` dimensions, row-major; NULL when `ndim` is 0.
    pub shape: *const u64,
    /// Bytes of data: product(shape) * element size.
    pub nbytes: u64,
    /// Position in the file's tensor list (the index for `plaid_deserializer_tensor`).
    pub index: usize,
    /// What the tensor was to the model that wrote it: a `PLAID_ROLE_*` value
    /// (`PLAID_ROLE_UNSPECIFIED` where the file does not say).
    pub role: u32,
    /// Index of the owning module in the writer's module walk (tensorizer's
    /// `module_idx`); 0 where the file does not say.
    pub module_index: u32,
    /// For a tensor stored under a nested structure (tensorizer's structured names): its
    /// path as a NUL-terminated compact JSON array of strings and non-negative integers,
    /// e.g. `["model","layers",0,"w"]`; `name` is then the components joined by dots.
    /// NULL for a tensor with a plain name.
    pub path: *const c_char,
    /// Length of `path` in bytes, without the NUL; 0 when `path` is NULL.
    pub path_len: usize,
    /// Non-zero when the file stores no bytes for this tensor (a tensorizer meta tensor):
    /// it loads as `nbytes` zeros. `nbytes` is then whatever the file declares, unbounded
    /// by the file's size: a 192-byte file can declare a 1 GiB zero tensor, which
    /// `plaid_deserializer_load_host` allocates. Check `nbytes` before loading files you
    /// do not trust.
    pub zero_fill: u32,
    /// Non-zero when the stored bytes are encrypted (a tensorizer file written with
    /// encryption): loading needs `plaid_read_options_set_key` or `_set_passphrase`, and
    /// the bytes at `offset` are ciphertext.
    pub encrypted: u32,
    /// Offset of the tensor's first data byte in the file (for a sharded checkpoint
    /// opened through its index: in the shards laid end to end), for callers that map the
    /// file themselves.
    pub offset: u64,
}

/// Tensor role: the file does not say.
pub const PLAID_ROLE_UNSPECIFIED: u32 = 0;
/// Tensor role: a module parameter.
pub const PLAID_ROLE_PARAM: u32 = 1;
/// Tensor role: a module buffer.
pub const PLAID_ROLE_BUFFER: u32 = 2;
/// Tensor role: an entry of a state dict.
pub const PLAID_ROLE_STATE_DICT: u32 = 3;

/// Where a tensor goes: zeroed by the library, filled in by the placement callback.
#[repr(C)]
#[derive(Debug, Default)]
pub struct plaid_destination {
    /// `PLAID_DEST_SKIP` (0), `PLAID_DEST_HOST` or `PLAID_DEST_CUDA`.
    pub kind: u32,
    /// CUDA device ordinal (for `PLAID_DEST_CUDA`).
    pub device: i32,
    /// Host pointer or `CUdeviceptr` of the first byte.
    pub address: u64,
    /// Bytes writable at `address`; must be at least what the destination receives: the
    /// tensor's `nbytes`, or the size of its slice in the destination dtype.
    pub capacity: u64,
    /// The dimension to slice.
    pub slice_dim: u32,
    /// First index along `slice_dim`.
    pub slice_start: u64,
    /// One past the last index; 0 = no slice, the whole tensor. The slice is written
    /// densely (row-major) at `address`. A slice along dimension 0 is one contiguous range
    /// of the file; along another dimension it is gathered (on the host, then copied, for
    /// CUDA). Only the bytes the slice needs are read, rounded out to whole checksum blocks
    /// when verifying (gaps between its runs under the source's merge gap, or past 4096
    /// runs, are read through); a tensorizer tensor (one hash over all of it) is read whole
    /// when verifying. An empty slice needs `slice_start == slice_stop != 0` (or no
    /// destination at all): `0..0` reads as no slice. `slice_stop` 0 with a non-zero `slice_start` or `slice_dim`, a 0-d
    /// tensor, a dimension the tensor lacks, or a range reversed or past the dimension's
    /// end are `PLAID_ERR_INVALID_ARGUMENT` naming the tensor, before anything is read.
    /// A slice of a zero-filled tensor is zeros; a dimension of size 0 gives an empty
    /// slice.
    pub slice_stop: u64,
    /// 0 = as stored; else a `PLAID_DTYPE_*` to convert to as the bytes pass (no second
    /// pass). Conversions among f16, bf16, f32 and f64, rounding to nearest, ties to even,
    /// once (f64 goes straight to f16 and bf16, never through f32, which would round twice:
    /// 65519.99999 is 65504 in f16, not infinity; a NaN stays a NaN and comes out quiet, as
    /// IEEE 754 converts; widening is otherwise exact); asking to convert any other dtype (an integer, bool, complex or 8-bit float tensor)
    /// is `PLAID_ERR_UNSUPPORTED` naming it. The stored dtype itself is no conversion.
    pub dtype: u32,
}

/// Chooses the destination of one tensor. Called once per tensor, in file order, on the
/// thread that called `plaid_deserializer_load`, never concurrently, before any byte of
/// that tensor is written. `info` is valid while the deserializer lives; `dest` only
/// during the call. Return 0 to go on; any other value stops the load with
/// `PLAID_ERR_CANCELLED` before any data is read. The callback must return normally: a C++
/// exception or a `longjmp` out of it cannot cross the library and ends the process.
pub type plaid_place_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        info: *const plaid_tensor_info,
        dest: *mut plaid_destination,
    ) -> i32,
>;

/// A C placement callback seen as a [`Placement`]: it translates each
/// `plaid_destination` and leaves every check to the placement room
/// ([`crate::pipeline::host_memory`], which turns a host address into memory only once it
/// is checked, and the pipeline's, which checks the rest).
pub(crate) struct CallbackPlacement<'h> {
    pub(crate) place:
        unsafe extern "C" fn(*mut c_void, *const plaid_tensor_info, *mut plaid_destination) -> i32,
    pub(crate) user_data: *mut c_void,
    pub(crate) infos: &'h [plaid_tensor_info],
    /// Host ranges handed out so far: C could name one buffer twice, which would have two
    /// workers writing the same bytes.
    pub(crate) claimed: Claims,
}

impl<'a> Placement<'a> for CallbackPlacement<'_> {
    fn place(&mut self, tensor: &TensorInfo) -> Result<Destination<'a>> {
        let mut dest = plaid_destination::default();
        // SAFETY: the callback is the caller's; it gets a lent info and a zeroed dest.
        let rc = unsafe { (self.place)(self.user_data, &self.infos[tensor.index], &mut dest) };
        if rc != 0 {
            return Err(Error::Cancelled(format!(
                "the placement callback returned {rc} for tensor '{}'",
                tensor.name
            )));
        }
        if dest.kind == PLAID_DEST_SKIP {
            return Ok(Destination::Skip);
        }
        let view = view(tensor, &dest)?;
        let to = match dest.kind {
            PLAID_DEST_CUDA => Destination::Cuda {
                device: dest.device,
                address: dest.address,
                capacity: dest.capacity,
            },
            PLAID_DEST_HOST => {
                let (_, needed) = received(tensor, &view)?;
                // SAFETY: the callback promised `capacity` writable bytes at `address`,
                // valid and used by nothing else until the load returns
                // (`plaid_place_fn`); `host_memory` checks the rest before making a slice.
                Destination::Host(unsafe {
                    host_memory(
                        &mut self.claimed,
                        tensor,
                        dest.address,
                        dest.capacity,
                        needed,
                    )
                }?)
            }
            other => {
                return Err(Error::invalid(format!(
                    "tensor '{}': unknown destination kind {other}",
                    tensor.name
                )))
            }
        };
        Ok(if view.is_whole() {
            to
        } else {
            Destination::View(view, Box::new(to))
        })
    }
}

/// The view that `dest`'s slice and dtype fields ask for.
pub(crate) fn view(tensor: &TensorInfo, dest: &plaid_destination) -> Result<View> {
    let mut view = View::whole();
    if dest.slice_stop != 0 {
        view = view.slice(dest.slice_dim, dest.slice_start, dest.slice_stop);
    } else if dest.slice_start != 0 || dest.slice_dim != 0 {
        return Err(Error::invalid(format!(
            "tensor '{}': slice_stop is 0 (no slice) but slice_dim is {} and slice_start {}",
            tensor.name, dest.slice_dim, dest.slice_start
        )));
    }
    if dest.dtype != 0 {
        let dtype = DType::from_id(dest.dtype).map_err(|_| {
            Error::invalid(format!(
                "tensor '{}': unknown destination dtype {}",
                tensor.name, dest.dtype
            ))
        })?;
        view = view.dtype(dtype);
    }
    Ok(view)
}
