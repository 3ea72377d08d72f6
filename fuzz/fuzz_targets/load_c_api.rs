//! The whole load path through the C API, as a C caller drives it: the bytes served by a
//! read callback (`plaid_source_new`, short reads chosen by the input), opened in any
//! format, then loaded with a placement that accepts, skips, under-sizes or slices and
//! converts each tensor (its choice taken from the input too), verified. Statuses only,
//! never a crash.
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;

use libfuzzer_sys::fuzz_target;
use plaid::ffi::deserializer::*;
use plaid::ffi::placement::*;
use plaid::ffi::read_options::*;
use plaid::ffi::source::*;

struct Input<'a> {
    bytes: &'a [u8],
    /// Largest piece one read returns (short reads).
    piece: usize,
}

unsafe extern "C" fn read(user: *mut c_void, offset: u64, buf: *mut c_void, len: u64) -> i64 {
    // SAFETY: `user` is the Input below, alive for the whole call of the target.
    let input = unsafe { &*(user as *const Input<'_>) };
    let start = (offset as usize).min(input.bytes.len());
    let n = (len as usize)
        .min(input.bytes.len() - start)
        .min(input.piece.max(1));
    // SAFETY: plaid lends `len` writable bytes at `buf`; n <= len.
    unsafe { std::ptr::copy_nonoverlapping(input.bytes[start..].as_ptr(), buf.cast(), n) };
    n as i64
}

unsafe extern "C" fn release(_: *mut c_void) {}

struct Placing {
    choices: Vec<u8>,
    buffers: Vec<Vec<u8>>,
}

unsafe extern "C" fn place(
    user: *mut c_void,
    info: *const plaid_tensor_info,
    dest: *mut plaid_destination,
) -> i32 {
    // SAFETY: `user` is the `placing` below, touched by nothing else during the load; plaid
    // passes an `info` that outlives this call and a `dest` that is ours during it.
    let (placing, info, dest) = unsafe { (&mut *(user as *mut Placing), &*info, &mut *dest) };
    let choice = placing
        .choices
        .get(info.index % placing.choices.len().max(1))
        .copied()
        .unwrap_or(0);
    let nbytes = info.nbytes.min(1 << 24) as usize;
    match choice % 4 {
        0 => {} // skip
        2 => {
            // A slice of one dimension (any range, valid or not), maybe converted: room for
            // any view, 8 bytes an element.
            let ndim = info.ndim as usize;
            if ndim > 0 {
                let dim = (choice as usize / 4) % ndim;
                // SAFETY: plaid lends `ndim` dimensions at `info.shape` for a tensor of rank > 0.
                let n = unsafe { *info.shape.add(dim) };
                dest.slice_dim = dim as u32;
                dest.slice_start = n / u64::from(1 + choice % 3);
                dest.slice_stop = n.saturating_sub(n / 4) + u64::from(choice >> 7);
            }
            dest.dtype = [0, 10, 11, 12, 13, 6][(choice as usize / 16) % 6];
            placing.buffers.push(vec![0u8; (nbytes.saturating_mul(8)).min(1 << 24)]);
            let b = placing.buffers.last_mut().unwrap();
            dest.kind = PLAID_DEST_HOST;
            dest.address = b.as_mut_ptr() as u64;
            dest.capacity = b.len() as u64;
        }
        1 => {
            placing.buffers.push(vec![0u8; nbytes]);
            let b = placing.buffers.last_mut().unwrap();
            dest.kind = PLAID_DEST_HOST;
            dest.address = b.as_mut_ptr() as u64;
            dest.capacity = b.len() as u64;
        }
        _ => {
            // Under-sized: the load must refuse it, never write past it.
            placing.buffers.push(vec![0u8; nbytes.saturating_sub(1)]);
            let b = placing.buffers.last_mut().unwrap();
            dest.kind = PLAID_DEST_HOST;
            dest.address = b.as_mut_ptr() as u64;
            dest.capacity = b.len() as u64;
        }
    }
    0
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (control, bytes) = data.split_at(2);
    let input = Input {
        bytes,
        piece: 1 + control[0] as usize * 257,
    };
    let mut placing = Placing {
        choices: vec![
            control[1],
            control[1].rotate_left(2),
            control[1].rotate_left(4),
        ],
        buffers: Vec::new(),
    };
    // SAFETY: `input` and `placing` outlive every call that hands them to a callback; each
    // handle is freed once after its last use (`options` may stay NULL, which every call
    // here accepts); the out-pointers are writable locals and the name a C literal.
    unsafe {
        let mut source = std::ptr::null_mut();
        if plaid_source_new(
            c"fuzz".as_ptr(),
            bytes.len() as u64,
            Some(read),
            &input as *const Input<'_> as *mut c_void,
            Some(release),
            &mut source,
        ) != 0
        {
            return;
        }
        let mut options = std::ptr::null_mut();
        plaid_read_options_new(&mut options);
        plaid_read_options_set_threads(options, 2);
        let mut d = std::ptr::null_mut();
        let status = plaid_deserializer_open_source(source, options, &mut d);
        plaid_source_free(source);
        if status == 0 {
            plaid_deserializer_load(d, Some(place), &mut placing as *mut Placing as *mut c_void);
            plaid_deserializer_free(d);
        }
        plaid_read_options_free(options);
    }
});
