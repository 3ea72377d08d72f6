//! Views on load: a slice of one dimension and a conversion to another floating-point
//! dtype, through the Rust API and the C API's `plaid_destination`, checked against
//! slicing by definition (row-major indices), against `half`'s conversions, and against the
//! bytes a counting source saw.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::{c_void, CString};
use std::path::Path;

use common::random_bytes;
use plaid::source::{CountingSource, FileSource};
use plaid::{DType, Deserializer, Destination, Error, ReadOptions, Serializer, View, WriteOptions};

const BLOCK: u64 = 4096;

/// Element indices of `start..stop` along `dim` of a row-major `shape`, by definition.
fn selected(shape: &[u64], dim: usize, start: u64, stop: u64) -> Vec<u64> {
    let total: u64 = shape.iter().product();
    (0..total)
        .filter(|&flat| {
            let after: u64 = shape[dim + 1..].iter().product();
            (start..stop).contains(&(flat / after % shape[dim]))
        })
        .collect()
}

fn gather(data: &[u8], size: usize, elements: &[u64]) -> Vec<u8> {
    elements
        .iter()
        .flat_map(|&e| data[e as usize * size..(e as usize + 1) * size].to_vec())
        .collect()
}

/// A plaid file of `tensors` (name, dtype, shape, bytes) with small checksum blocks.
fn write(path: &Path, tensors: &[(String, DType, Vec<u64>, Vec<u8>)]) {
    let options = WriteOptions::default()
        .sync(false)
        .checksum_block_size(BLOCK)
        .unwrap();
    let mut w = Serializer::create(path, options).unwrap();
    for (name, dtype, shape, data) in tensors {
        w.add_tensor(name, *dtype, shape, data).unwrap();
    }
    w.finish().unwrap();
}

/// Load `view` of tensor `name` into a buffer of `len` bytes.
fn load_view(d: &Deserializer, name: &str, view: View, len: usize) -> Result<Vec<u8>, Error> {
    let mut out = vec![0xAAu8; len];
    {
        let buffer = &mut out[..];
        let mut slot = Some(buffer);
        let mut place = |t: &plaid::format::TensorInfo| {
            Ok(match (t.name == name, slot.take()) {
                (true, Some(buffer)) => {
                    Destination::View(view, Box::new(Destination::Host(buffer)))
                }
                (_, back) => {
                    slot = back;
                    Destination::Skip
                }
            })
        };
        d.load(&mut place)?;
    }
    Ok(out)
}

#[test]
fn slices_of_every_dimension_match_slicing_by_definition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let shapes: [&[u64]; 6] = [
        &[37],
        &[5, 9],
        &[3, 4, 5],
        &[2, 3, 2, 7],
        &[300, 41],
        &[4, 0, 3],
    ];
    let mut tensors = Vec::new();
    for (k, shape) in shapes.iter().enumerate() {
        for (j, dtype) in [DType::U8, DType::BF16, DType::F32, DType::I64]
            .into_iter()
            .enumerate()
        {
            let n = shape.iter().product::<u64>() * dtype.size();
            let data = random_bytes(n as usize, (k * 10 + j) as u64);
            tensors.push((format!("t{k}_{j}"), dtype, shape.to_vec(), data));
        }
    }
    write(&path, &tensors);
    for verify in [true, false] {
        // Requests of 8 KiB: a slice of the large tensor spans several jobs.
        let options = ReadOptions::default()
            .verify(verify)
            .request_bytes(8192)
            .unwrap();
        let d = Deserializer::open(&path, options).unwrap();
        for (name, dtype, shape, data) in &tensors {
            let size = dtype.size() as usize;
            for dim in 0..shape.len() {
                let n = shape[dim];
                // Every range of small dimensions; the ranges of 8 uneven ranks of large ones.
                let ranges: Vec<(u64, u64)> = if n <= 9 {
                    (0..=n).flat_map(|a| (a..=n).map(move |b| (a, b))).collect()
                } else {
                    (0..8).map(|r| (n * r / 8, n * (r + 1) / 8)).collect()
                };
                for (start, stop) in ranges {
                    if stop == 0 {
                        continue; // stop 0 means no slice
                    }
                    let want = gather(data, size, &selected(shape, dim, start, stop));
                    let view = View::whole().slice(dim as u32, start, stop);
                    let got = load_view(&d, name, view, want.len()).unwrap();
                    assert_eq!(
                        got, want,
                        "{name} {shape:?} dim {dim} {start}..{stop} verify {verify}"
                    );
                }
            }
        }
    }
}

/// Element `k` of `bytes` as f32, in `dtype` (f16, bf16, f32 or f64).
fn value(dtype: DType, bytes: &[u8], k: usize) -> f64 {
    let s = dtype.size() as usize;
    let b = &bytes[k * s..(k + 1) * s];
    match dtype {
        DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
        DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
        _ => unreachable!(),
    }
}

/// `v` in `dtype`, rounded to nearest even by `half` (and by the hardware for f64 to f32).
fn encode(dtype: DType, v: f64, from: DType) -> Vec<u8> {
    match dtype {
        // From f32 or narrower, f32 holds the value exactly: round once from there.
        DType::F16 if from != DType::F64 => half::f16::from_f32(v as f32).to_le_bytes().to_vec(),
        DType::BF16 if from != DType::F64 => half::bf16::from_f32(v as f32).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        DType::F32 => (v as f32).to_le_bytes().to_vec(),
        DType::F64 => v.to_le_bytes().to_vec(),
        _ => unreachable!(),
    }
}

#[test]
fn conversions_on_load_are_bit_exact_and_compose_with_slices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let floats = [DType::F16, DType::BF16, DType::F32, DType::F64];
    let shape = vec![33u64, 70];
    let mut tensors = Vec::new();
    for (k, dtype) in floats.into_iter().enumerate() {
        let n = (shape[0] * shape[1]) as usize;
        // Values over many binades, with halfway cases, infinities and NaN among them.
        let mut data = Vec::new();
        for i in 0..n {
            let v = match i % 7 {
                0 => (i as f64) * 1.000_976_562_5,
                1 => -(i as f64).powf(1.7) / 3.0,
                2 => 1.0 + 2f64.powi(-11) * (i % 5) as f64,
                3 => 1e-6 * i as f64,
                4 => 70000.0 + i as f64,
                5 => f64::INFINITY,
                _ => 1.0 / (i as f64 + 0.5),
            };
            // Stored exactly in its own dtype.
            data.extend(encode(dtype, v, DType::F64));
        }
        tensors.push((format!("w{k}"), dtype, shape.clone(), data));
    }
    write(&path, &tensors);
    let d = Deserializer::open(&path, ReadOptions::default().request_bytes(4096).unwrap()).unwrap();
    for (name, from, shape, data) in &tensors {
        for to in floats {
            for slice in [None, Some((0u32, 5u64, 17u64)), Some((1, 3, 64))] {
                let elements: Vec<u64> = match slice {
                    None => (0..shape[0] * shape[1]).collect(),
                    Some((dim, a, b)) => selected(shape, dim as usize, a, b),
                };
                let want: Vec<u8> = elements
                    .iter()
                    .flat_map(|&e| encode(to, value(*from, data, e as usize), *from))
                    .collect();
                let mut view = View::whole().dtype(to);
                if let Some((dim, a, b)) = slice {
                    view = view.slice(dim, a, b);
                }
                let got = load_view(&d, name, view, want.len()).unwrap();
                // NaN payloads aside, bit for bit.
                for (i, (g, w)) in got
                    .chunks(to.size() as usize)
                    .zip(want.chunks(to.size() as usize))
                    .enumerate()
                {
                    let nan = value(to, w, 0).is_nan();
                    assert!(
                        g == w || (nan && value(to, g, 0).is_nan()),
                        "{name} {from} -> {to} {slice:?} element {i}: {g:?} vs {w:?}"
                    );
                }
            }
        }
    }
    // Integers, bool, complex and 8-bit floats are not converted: UNSUPPORTED, named.
    let path = dir.path().join("ints.plaid");
    write(
        &path,
        &[
            ("ids".into(), DType::I32, vec![4], vec![0; 16]),
            ("mask".into(), DType::Bool, vec![4], vec![0; 4]),
            ("z".into(), DType::C64, vec![2], vec![0; 16]),
            ("q".into(), DType::F8E4M3FN, vec![4], vec![0; 4]),
        ],
    );
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    for name in ["ids", "mask", "z", "q"] {
        let e = load_view(&d, name, View::whole().dtype(DType::F32), 64).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{name}: {e}");
        assert!(e.to_string().contains(&format!("'{name}'")), "{e}");
    }
    // Asking for the stored dtype is no conversion, for any tensor.
    assert_eq!(
        load_view(&d, "ids", View::whole().dtype(DType::I32), 16).unwrap(),
        vec![0; 16]
    );
}

#[test]
fn a_slice_reads_only_its_bytes_and_whole_checksum_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    // 256 rows of 4 KiB: one checksum block per row.
    let data = random_bytes(256 * 4096, 3);
    write(
        &path,
        &[("w".into(), DType::F32, vec![256, 1024], data.clone())],
    );
    let counted = |verify: bool, view: View, len: usize| {
        let source = CountingSource::new(FileSource::open(&path).unwrap());
        let counts = source.counts();
        let d = Deserializer::from_source(Box::new(source), ReadOptions::default().verify(verify))
            .unwrap();
        let before = counts.bytes();
        let got = load_view(&d, "w", view, len).unwrap();
        // The deserializer's own count (`plaid_deserializer_bytes_read`) is what the source
        // delivered to the load.
        assert_eq!(d.bytes_read(), counts.bytes() - before);
        (got, counts.bytes() - before)
    };
    // Rows 10..20 are blocks 10..20: exactly those 40 KiB, verified.
    let (got, read) = counted(true, View::whole().slice(0, 10, 20), 10 * 4096);
    assert_eq!(got, data[10 * 4096..20 * 4096]);
    assert_eq!(read, 10 * 4096);
    // Half a row in each of 256 rows, verified: every block is needed, read once.
    let (got, read) = counted(true, View::whole().slice(1, 0, 512), 256 * 2048);
    let want: Vec<u8> = data
        .chunks(4096)
        .flat_map(|row| row[..2048].to_vec())
        .collect();
    assert_eq!(got, want);
    assert_eq!(read, 256 * 4096);
    // Without verification, only the slice's bytes: one row of 4 KiB, or (a column
    // slice) the span from the first selected byte to the last, gaps of 2 KiB read through.
    let (got, read) = counted(false, View::whole().slice(0, 100, 101), 4096);
    assert_eq!(got, data[100 * 4096..101 * 4096]);
    assert_eq!(read, 4096);
    let (_, read) = counted(false, View::whole().slice(1, 512, 1024), 256 * 2048);
    assert_eq!(read, 256 * 4096 - 2048);
    // A safetensors file has no checksums: exactly the slice, verification on or off.
    let st = dir.path().join("m.safetensors");
    let source = Deserializer::open(&path, ReadOptions::default()).unwrap();
    plaid::convert::to_safetensors(&source, &st, &mut |_, _| {}).unwrap();
    for verify in [true, false] {
        let source = CountingSource::new(FileSource::open(&st).unwrap());
        let counts = source.counts();
        let d = Deserializer::from_source(Box::new(source), ReadOptions::default().verify(verify))
            .unwrap();
        let before = counts.bytes();
        let got = load_view(&d, "w", View::whole().slice(0, 7, 9), 2 * 4096).unwrap();
        assert_eq!(got, data[7 * 4096..9 * 4096]);
        assert_eq!(counts.bytes() - before, 2 * 4096);
    }
}

#[test]
fn bytes_read_counts_what_loads_took_from_a_mapped_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let data = random_bytes(256 * 4096, 5);
    write(
        &path,
        &[("w".into(), DType::F32, vec![256, 1024], data.clone())],
    );
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    assert_eq!(d.bytes_read(), 0, "the header is not counted");
    let got = load_view(&d, "w", View::whole().slice(0, 10, 20), 10 * 4096).unwrap();
    assert_eq!(got, data[10 * 4096..20 * 4096]);
    assert_eq!(d.bytes_read(), 10 * 4096);
    load_view(&d, "w", View::whole(), 256 * 4096).unwrap();
    assert_eq!(d.bytes_read(), 266 * 4096, "counts add up over loads");
    // Through the C API, and 0 for NULL.
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut handle = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path, NULL options (the defaults) and a writable out-pointer.
    let status = unsafe { plaid_deserializer_open(c_path.as_ptr(), std::ptr::null(), &mut handle) };
    assert_eq!(status, PLAID_OK);
    let mut buf = vec![0u8; 4 * 4096];
    let dest = plaid_destination {
        kind: PLAID_DEST_HOST,
        address: buf.as_mut_ptr() as u64,
        capacity: buf.len() as u64,
        slice_dim: 0,
        slice_start: 0,
        slice_stop: 4,
        ..Default::default()
    };
    assert_eq!(c_load(handle, vec![(0, dest)]), PLAID_OK);
    // SAFETY: a live handle, then NULL.
    unsafe {
        assert_eq!(plaid_deserializer_bytes_read(handle), 4 * 4096);
        assert_eq!(plaid_deserializer_bytes_read(std::ptr::null()), 0);
        plaid_deserializer_free(handle);
    }
    assert_eq!(buf, data[..4 * 4096]);
}

#[test]
fn damage_inside_a_slice_is_reported_and_outside_it_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let data = random_bytes(64 * 4096, 4);
    write(
        &path,
        &[("w".into(), DType::U8, vec![64, 4096], data.clone())],
    );
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    let offset = d.tensors()[0].offset;
    drop(d);
    // Damage row 40.
    let mut file = std::fs::read(&path).unwrap();
    file[(offset + 40 * 4096 + 17) as usize] ^= 0x40;
    std::fs::write(&path, &file).unwrap();
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    // Rows 0..32 never touch it: loaded, nothing reported.
    let got = load_view(&d, "w", View::whole().slice(0, 0, 32), 32 * 4096).unwrap();
    assert_eq!(got, data[..32 * 4096]);
    // Rows 32..64 hold it: a checksum error naming the tensor.
    let e = load_view(&d, "w", View::whole().slice(0, 32, 64), 32 * 4096).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("'w'"), "{e}");
    // A column slice needs every row: reported too.
    let e = load_view(&d, "w", View::whole().slice(1, 0, 8), 64 * 8).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
}

#[test]
fn bad_slices_are_invalid_arguments_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    write(
        &path,
        &[
            ("w".into(), DType::F32, vec![4, 6], vec![1; 96]),
            ("s".into(), DType::F32, vec![], vec![1; 4]),
        ],
    );
    let source = CountingSource::new(FileSource::open(&path).unwrap());
    let counts = source.counts();
    let d = Deserializer::from_source(Box::new(source), ReadOptions::default()).unwrap();
    let before = counts.bytes();
    for (name, view) in [
        ("w", View::whole().slice(2, 0, 1)),
        ("w", View::whole().slice(0, 3, 2)),
        ("w", View::whole().slice(1, 0, 7)),
        ("s", View::whole().slice(0, 0, 1)),
    ] {
        let e = load_view(&d, name, view, 1024).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{view:?}: {e}");
        assert!(e.to_string().contains(&format!("'{name}'")), "{e}");
    }
    // A destination too small for the slice: capacity, also before reading.
    let e = load_view(&d, "w", View::whole().slice(0, 1, 3), 47).unwrap_err();
    assert!(matches!(e, Error::Capacity { needed: 48, .. }), "{e}");
    assert_eq!(counts.bytes(), before);
}

// ---------------------------------------------------------------------------------------
// The C API
// ---------------------------------------------------------------------------------------

use plaid::ffi::deserializer::*;
use plaid::ffi::placement::*;
use plaid::ffi::status::*;

/// What the placement callback of the C test hands out: tensor index -> destination.
struct Plan {
    dests: Vec<(usize, plaid_destination)>,
}

unsafe extern "C" fn place(
    user: *mut c_void,
    info: *const plaid_tensor_info,
    dest: *mut plaid_destination,
) -> i32 {
    // SAFETY: `user` is the `Plan` the test passes to plaid_deserializer_load, alive and
    // only read during the call.
    let plan = unsafe { &*(user as *const Plan) };
    // SAFETY: plaid passes an info valid during the call and a dest that is ours alone.
    let (info, dest) = unsafe { (&*info, &mut *dest) };
    if let Some((_, d)) = plan.dests.iter().find(|(i, _)| *i == info.index) {
        *dest = plaid_destination { ..*d };
    }
    0
}

fn c_load(d: *mut plaid_deserializer, dests: Vec<(usize, plaid_destination)>) -> i32 {
    let plan = Plan { dests };
    // SAFETY: `d` is a live handle; `place` honours plaid_place_fn's contract and `plan`
    // outlives the call.
    unsafe { plaid_deserializer_load(d, Some(place), &plan as *const Plan as *mut c_void) }
}

#[test]
fn the_c_destination_carries_slices_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let data = random_bytes(6 * 10 * 4, 9);
    write(
        &path,
        &[("w".into(), DType::F32, vec![6, 10], data.clone())],
    );
    let text = CString::new(path.to_str().unwrap()).unwrap();
    let mut d = std::ptr::null_mut();
    // SAFETY: `text` is NUL-terminated; NULL options are the defaults; `d` is writable.
    let status = unsafe { plaid_deserializer_open(text.as_ptr(), std::ptr::null(), &mut d) };
    assert_eq!(status, PLAID_OK);
    let host = |buf: &mut Vec<u8>, dim: u32, start: u64, stop: u64, dtype: u32| plaid_destination {
        kind: PLAID_DEST_HOST,
        address: buf.as_mut_ptr() as u64,
        capacity: buf.len() as u64,
        slice_dim: dim,
        slice_start: start,
        slice_stop: stop,
        dtype,
        ..Default::default()
    };
    // Columns 2..5 as bf16.
    let mut out = vec![0u8; 6 * 3 * 2];
    let status = c_load(
        d,
        vec![(
            0,
            host(&mut out, 1, 2, 5, plaid::ffi::dtype::PLAID_DTYPE_BF16),
        )],
    );
    assert_eq!(status, PLAID_OK);
    let want: Vec<u8> = selected(&[6, 10], 1, 2, 5)
        .iter()
        .flat_map(|&e| {
            let v =
                f32::from_le_bytes(data[e as usize * 4..e as usize * 4 + 4].try_into().unwrap());
            half::bf16::from_f32(v).to_le_bytes()
        })
        .collect();
    assert_eq!(out, want);
    // Rows 1..3, as stored.
    let mut out = vec![0u8; 2 * 40];
    assert_eq!(c_load(d, vec![(0, host(&mut out, 0, 1, 3, 0))]), PLAID_OK);
    assert_eq!(out, data[40..120]);
    // slice_stop 0 with a start: invalid; too small: capacity; unknown dtype: invalid.
    let mut out = vec![0u8; 240];
    assert_eq!(
        c_load(d, vec![(0, host(&mut out, 0, 1, 0, 0))]),
        PLAID_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        c_load(d, vec![(0, host(&mut out, 1, 0, 0, 0))]),
        PLAID_ERR_INVALID_ARGUMENT
    );
    let mut small = vec![0u8; 79];
    assert_eq!(
        c_load(d, vec![(0, host(&mut small, 0, 1, 3, 0))]),
        PLAID_ERR_CAPACITY
    );
    assert_eq!(
        c_load(d, vec![(0, host(&mut out, 0, 0, 6, 999))]),
        PLAID_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        c_load(
            d,
            vec![(
                0,
                host(&mut out, 0, 0, 6, plaid::ffi::dtype::PLAID_DTYPE_I32)
            )]
        ),
        PLAID_ERR_UNSUPPORTED
    );
    // Into memory plaid allocates: rows 4..6 as f16, through the arena.
    let f16 = plaid::ffi::dtype::PLAID_DTYPE_F16;
    let plan = Plan {
        dests: vec![(
            0,
            plaid_destination {
                kind: PLAID_DEST_HOST,
                slice_dim: 0,
                slice_start: 4,
                slice_stop: 6,
                dtype: f16,
                ..Default::default()
            },
        )],
    };
    let mut arena = std::ptr::null_mut();
    // SAFETY: `d` is live; `place` honours its contract and `plan` outlives the call;
    // `arena` is writable.
    let status = unsafe {
        plaid::ffi::deserializer::plaid_deserializer_load_host_views(
            d,
            Some(place),
            &plan as *const Plan as *mut c_void,
            &mut arena,
        )
    };
    assert_eq!(status, PLAID_OK);
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0u64);
    // SAFETY: `arena` is the live arena made above; both outputs are writable locals.
    let status =
        unsafe { plaid::ffi::host_arena::plaid_host_arena_tensor(arena, 0, &mut ptr, &mut len) };
    assert_eq!(status, PLAID_OK);
    assert_eq!(len, 2 * 10 * 2);
    // SAFETY: the arena holds `len` bytes at `ptr` until it is freed below.
    let got = unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) }.to_vec();
    let want: Vec<u8> = data[4 * 40..6 * 40]
        .chunks(4)
        .flat_map(|b| half::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
        .collect();
    assert_eq!(got, want);
    // SAFETY: made above, freed once.
    unsafe { plaid::ffi::host_arena::plaid_host_arena_free(arena) };
    // A bad slice fails before anything is allocated: `arena` stays untouched.
    let plan = Plan {
        dests: vec![(
            0,
            plaid_destination {
                kind: PLAID_DEST_HOST,
                slice_dim: 3,
                slice_stop: 1,
                ..Default::default()
            },
        )],
    };
    let mut arena = std::ptr::null_mut();
    // SAFETY: as above.
    let status = unsafe {
        plaid::ffi::deserializer::plaid_deserializer_load_host_views(
            d,
            Some(place),
            &plan as *const Plan as *mut c_void,
            &mut arena,
        )
    };
    assert_eq!(status, PLAID_ERR_INVALID_ARGUMENT);
    assert!(arena.is_null());
    // SAFETY: `d` came from the open above and is freed once.
    unsafe { plaid_deserializer_free(d) };
}

// ---------------------------------------------------------------------------------------
// tensorizer files: one hash over each tensor, and tensors the file does not store
// ---------------------------------------------------------------------------------------

#[test]
fn a_tensorizer_slice_reads_the_whole_tensor_to_verify_it_and_only_its_bytes_without() {
    let dir = tempfile::tempdir().unwrap();
    let plaid_path = dir.path().join("m.plaid");
    let data = random_bytes(256 * 4096, 11);
    write(
        &plaid_path,
        &[("w".into(), DType::F32, vec![256, 1024], data.clone())],
    );
    let tz = dir.path().join("m.tensors");
    let source = Deserializer::open(&plaid_path, ReadOptions::default()).unwrap();
    plaid::convert::to_tensorizer(&source, &tz, &mut |_, _| {}).unwrap();
    let nbytes = data.len() as u64;
    for (verify, expect) in [(true, nbytes), (false, 10 * 4096)] {
        let source = CountingSource::new(FileSource::open(&tz).unwrap());
        let counts = source.counts();
        let d = Deserializer::from_source(Box::new(source), ReadOptions::default().verify(verify))
            .unwrap();
        assert_eq!(d.format(), plaid::Format::Tensorizer);
        let before = counts.bytes();
        let got = load_view(&d, "w", View::whole().slice(0, 10, 20), 10 * 4096).unwrap();
        assert_eq!(got, data[10 * 4096..20 * 4096]);
        assert_eq!(counts.bytes() - before, expect, "verify {verify}");
    }
    // Damage outside the slice: caught when verifying (the hash covers every byte), not
    // read without.
    let d = Deserializer::open(&tz, ReadOptions::default()).unwrap();
    let offset = d.tensors()[0].offset;
    drop(d);
    let mut file = std::fs::read(&tz).unwrap();
    file[(offset + 200 * 4096) as usize] ^= 1;
    std::fs::write(&tz, &file).unwrap();
    let d = Deserializer::open(&tz, ReadOptions::default()).unwrap();
    let e = load_view(&d, "w", View::whole().slice(0, 10, 20), 10 * 4096).unwrap_err();
    assert!(matches!(e, Error::HashMismatch { .. }), "{e}");
    // With SHA-256 checks off, the CRC-32 over all of it is still checked: read whole.
    let d = Deserializer::open(&tz, ReadOptions::default().verify_sha256(false)).unwrap();
    let e = load_view(&d, "w", View::whole().slice(1, 0, 512), 256 * 2048).unwrap_err();
    assert!(matches!(e, Error::HashMismatch { .. }), "{e}");
    let d = Deserializer::open(&tz, ReadOptions::default().verify(false)).unwrap();
    let got = load_view(&d, "w", View::whole().slice(0, 10, 20), 10 * 4096).unwrap();
    assert_eq!(got, data[10 * 4096..20 * 4096]);
}

#[test]
fn slices_of_tensors_the_file_does_not_store_are_zeros() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorizer/meta_tensors_v4.tensors");
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    // meta_f32 is f32 [4, 5], not stored: columns 1..3 are 4 x 2 zeros, in bf16 too.
    let got = load_view(&d, "meta_f32", View::whole().slice(1, 1, 3), 32).unwrap();
    assert_eq!(got, vec![0; 32]);
    let view = View::whole().slice(0, 1, 2).dtype(DType::BF16);
    assert_eq!(load_view(&d, "meta_f32", view, 10).unwrap(), vec![0; 10]);
    // meta_empty is [0, 3]: any slice of its second dimension is empty.
    let got = load_view(&d, "meta_empty", View::whole().slice(1, 0, 2), 4).unwrap();
    assert_eq!(got, vec![0xAA; 4], "nothing written");
}

// ---------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------

/// Tensors a glob filter skips are not read, except where the planner reads through a gap
/// between two chosen small tensors (at most the source's merge gap per gap).
#[test]
fn skipped_tensors_cost_no_reads_beyond_merged_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    // Layers of a large and two small tensors each.
    let mut tensors = Vec::new();
    for layer in 0..6 {
        for (kind, n) in [("mlp.up", 3 << 20), ("norm", 4096), ("attn.q", 8192)] {
            let name = format!("layers.{layer}.{kind}.weight");
            tensors.push((
                name,
                DType::U8,
                vec![n as u64],
                random_bytes(n, layer * 7 + n as u64),
            ));
        }
    }
    write(&path, &tensors);
    let filter = plaid::NameFilter::new(&["layers.*.attn.*", "layers.[0-1].mlp.*"]).unwrap();
    let source = CountingSource::new(FileSource::open(&path).unwrap());
    let counts = source.counts();
    let merge_gap = plaid::Source::hints(&source).merge_gap;
    let d = Deserializer::from_source(Box::new(source), ReadOptions::default()).unwrap();
    let before = counts.bytes();
    let chosen: Vec<&plaid::format::TensorInfo> = d
        .tensors()
        .iter()
        .filter(|t| filter.matches(&t.name))
        .collect();
    assert_eq!(chosen.len(), 6 + 2);
    let mut buffers: Vec<Vec<u8>> = chosen.iter().map(|t| vec![0; t.nbytes as usize]).collect();
    {
        let mut slots: Vec<Option<&mut [u8]>> =
            buffers.iter_mut().map(|b| Some(&mut b[..])).collect();
        let mut k = 0;
        d.load(&mut |t: &plaid::format::TensorInfo| {
            Ok(if filter.matches(&t.name) {
                k += 1;
                Destination::Host(slots[k - 1].take().unwrap())
            } else {
                Destination::Skip
            })
        })
        .unwrap();
    }
    for (t, got) in chosen.iter().zip(&buffers) {
        let (_, _, _, want) = tensors.iter().find(|(n, ..)| *n == t.name).unwrap();
        assert_eq!(got, want, "{}", t.name);
    }
    let wanted: u64 = chosen.iter().map(|t| t.nbytes).sum();
    let read = counts.bytes() - before;
    // The skipped tensors hold 3 MiB + 4 KiB (layers 2-5) or 4 KiB (layers 0-1) between
    // chosen ones: only 4 KiB gaps, within the merge gap, may be read through.
    let gaps = 6;
    assert!(read >= wanted, "{read} < {wanted}");
    assert!(
        read - wanted <= gaps * merge_gap.min(4096 + 4096),
        "read {read} for {wanted} wanted: {} extra (merge gap {merge_gap})",
        read - wanted
    );
    assert!(read < wanted + (3 << 20), "a skipped 3 MiB tensor was read");
    // The CLI's verify with the same patterns reads the same tensors.
    let stats = d
        .verify_tensors(
            &|t: &plaid::format::TensorInfo| filter.matches(&t.name),
            None,
        )
        .unwrap();
    assert_eq!(stats.tensors, 8);
}
