//! The C API called from Rust exactly as a C program calls it: raw pointers, status
//! codes, the thread-local message, callbacks with user data.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;

use common::random_bytes;
use plaid::ffi::deserializer::*;
use plaid::ffi::dtype::*;
use plaid::ffi::placement::*;
use plaid::ffi::progress as plaid_progress;
use plaid::ffi::read_options::*;
use plaid::ffi::serializer::*;
use plaid::ffi::status::*;
use plaid::ffi::version::*;
use plaid::ffi::write_options::*;

fn last_error() -> String {
    // SAFETY: a NULL buffer with length 0 only asks for the message's length.
    let len = unsafe { plaid_last_error_message(ptr::null_mut(), 0) };
    let mut buf = vec![0 as c_char; len + 1];
    // SAFETY: `buf` is `len + 1` writable c_chars and exactly that length is passed.
    let written = unsafe { plaid_last_error_message(buf.as_mut_ptr(), buf.len()) };
    assert_eq!(written, len);
    // SAFETY: `buf` is non-empty, so the call above NUL-terminated it; it outlives the
    // borrow, which `to_owned` copies.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

struct Buffers {
    buffers: Vec<Vec<u8>>,
    calls: usize,
    cancel_at: Option<usize>,
    shrink: Option<usize>,
    kind: u32,
}

unsafe extern "C" fn place(
    user: *mut c_void,
    info: *const plaid_tensor_info,
    dest: *mut plaid_destination,
) -> i32 {
    // SAFETY: `user` is the `Buffers` each caller passes to plaid_deserializer_load, alive
    // and touched by nothing else until that call returns.
    let state = unsafe { &mut *(user as *mut Buffers) };
    // SAFETY: plaid passes an `info` that lives as long as the deserializer.
    let info = unsafe { &*info };
    // SAFETY: plaid passes a `dest` that is valid and ours alone during this call.
    let dest = unsafe { &mut *dest };
    assert_eq!(
        (dest.kind, dest.address, dest.capacity),
        (0, 0, 0),
        "dest arrives zeroed"
    );
    state.calls += 1;
    if state.cancel_at == Some(info.index) {
        return 42;
    }
    let buffer = &mut state.buffers[info.index];
    dest.kind = state.kind;
    dest.address = buffer.as_mut_ptr() as u64;
    dest.capacity = buffer.len() as u64 - u64::from(state.shrink == Some(info.index));
    0
}

fn cstring(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Write a small model through the C API and return its path.
fn write_model(dir: &std::path::Path, data: &[Vec<u8>]) -> CString {
    let path = cstring(dir.join("c.plaid").to_str().unwrap());
    let mut options = ptr::null_mut();
    let mut s = ptr::null_mut();
    // SAFETY: `options` and `s` are used only between their *_new and *_free calls here;
    // `path`, `name` and the C literals are NUL-terminated and alive; each `shape` has the
    // `ndim` values given and `bytes`/`scalar` the `nbytes` given, alive until after finish.
    unsafe {
        assert_eq!(plaid_write_options_new(&mut options), PLAID_OK);
        assert_eq!(plaid_write_options_set_sync(options, 0), PLAID_OK);
        assert_eq!(
            plaid_write_options_set_alignment(options, 1000),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("alignment 1000"));
        assert_eq!(
            plaid_serializer_new(path.as_ptr(), options, &mut s),
            PLAID_OK
        );
        plaid_write_options_free(options);
        for (i, bytes) in data.iter().enumerate() {
            let name = cstring(&format!("t{i}"));
            let shape = [bytes.len() as u64 / 4];
            let status = plaid_serializer_add_tensor(
                s,
                name.as_ptr(),
                PLAID_DTYPE_F32,
                shape.as_ptr(),
                1,
                bytes.as_ptr().cast(),
                bytes.len() as u64,
            );
            assert_eq!(status, PLAID_OK, "{}", last_error());
        }
        let scalar = 1.5f64.to_le_bytes();
        assert_eq!(
            plaid_serializer_add_tensor(
                s,
                c"scalar".as_ptr(),
                PLAID_DTYPE_F64,
                ptr::null(),
                0,
                scalar.as_ptr().cast(),
                8
            ),
            PLAID_OK
        );
        assert_eq!(
            plaid_serializer_set_metadata(s, c"arch".as_ptr(), c"tiny".as_ptr()),
            PLAID_OK
        );
        assert_eq!(plaid_serializer_finish(s), PLAID_OK, "{}", last_error());
        assert_eq!(plaid_serializer_finish(s), PLAID_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("already finished"));
        plaid_serializer_free(s);
    }
    path
}

#[test]
fn round_trip_through_the_c_api() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..5)
        .map(|i| random_bytes(4 * (1000 + i * 777), i as u64))
        .collect();
    let path = write_model(dir.path(), &data);

    // SAFETY: `options` and `d` are used only between their creation and their free here;
    // `path` and the C literals are NUL-terminated; tensor indices below the 6 counted give
    // non-NULL infos, which with `key`/`value` point into `d` and are read before it is
    // freed; each `state` outlives the load it is passed to.
    unsafe {
        let mut options = ptr::null_mut();
        assert_eq!(plaid_read_options_new(&mut options), PLAID_OK);
        assert_eq!(plaid_read_options_set_threads(options, 3), PLAID_OK);
        assert_eq!(plaid_read_options_set_direct_io(options, 1), PLAID_OK);
        assert_eq!(plaid_read_options_set_chunk_size(options, 4096), PLAID_OK);
        assert_eq!(
            plaid_read_options_set_chunk_size(options, 0),
            PLAID_ERR_INVALID_ARGUMENT
        );
        let mut d = ptr::null_mut();
        assert_eq!(
            plaid_deserializer_open(path.as_ptr(), options, &mut d),
            PLAID_OK
        );
        plaid_read_options_free(options);

        assert_eq!(plaid_deserializer_tensor_count(d), 6);
        let info = &*plaid_deserializer_tensor(d, 2);
        assert_eq!(CStr::from_ptr(info.name).to_str().unwrap(), "t2");
        assert_eq!(
            (
                info.name_len,
                info.dtype,
                info.ndim,
                info.nbytes,
                info.index
            ),
            (2, PLAID_DTYPE_F32, 1, data[2].len() as u64, 2)
        );
        assert_eq!(*info.shape, data[2].len() as u64 / 4);
        let scalar = &*plaid_deserializer_tensor(d, 5);
        assert_eq!((scalar.ndim, scalar.shape), (0, ptr::null()));
        assert!(plaid_deserializer_tensor(d, 6).is_null());

        let mut index = usize::MAX;
        assert_eq!(
            plaid_deserializer_find(d, c"t4".as_ptr(), &mut index),
            PLAID_OK
        );
        assert_eq!(index, 4);
        assert_eq!(
            plaid_deserializer_find(d, c"t9".as_ptr(), &mut index),
            PLAID_ERR_NOT_FOUND
        );
        assert!(last_error().contains("t9"));
        assert_eq!(index, 4, "out-pointers are written only on success");

        let mut value = ptr::null();
        assert_eq!(
            plaid_deserializer_metadata_get(d, c"arch".as_ptr(), &mut value),
            PLAID_OK
        );
        assert_eq!(CStr::from_ptr(value).to_str().unwrap(), "tiny");
        assert_eq!(plaid_deserializer_metadata_count(d), 1);
        let mut key = ptr::null();
        assert_eq!(
            plaid_deserializer_metadata_entry(d, 0, &mut key, &mut value),
            PLAID_OK
        );
        assert_eq!(CStr::from_ptr(key).to_str().unwrap(), "arch");
        assert_eq!(
            plaid_deserializer_metadata_entry(d, 1, &mut key, &mut value),
            PLAID_ERR_NOT_FOUND
        );

        let sizes: Vec<usize> = (0..6)
            .map(|i| (*plaid_deserializer_tensor(d, i)).nbytes as usize)
            .collect();
        let fresh = || Buffers {
            buffers: sizes.iter().map(|&n| vec![0xA5; n]).collect(),
            calls: 0,
            cancel_at: None,
            shrink: None,
            kind: PLAID_DEST_HOST,
        };
        for _ in 0..2 {
            let mut state = fresh();
            let status =
                plaid_deserializer_load(d, Some(place), (&mut state as *mut Buffers).cast());
            assert_eq!(status, PLAID_OK, "{}", last_error());
            assert_eq!(state.calls, 6);
            assert_eq!(&state.buffers[..5], &data[..]);
            assert_eq!(state.buffers[5], 1.5f64.to_le_bytes());
        }

        let mut state = Buffers {
            cancel_at: Some(3),
            ..fresh()
        };
        assert_eq!(
            plaid_deserializer_load(d, Some(place), (&mut state as *mut Buffers).cast()),
            PLAID_ERR_CANCELLED
        );
        assert!(last_error().contains("returned 42") && last_error().contains("'t3'"));
        assert!(state.buffers.iter().all(|b| b.iter().all(|&x| x == 0xA5)));

        let mut state = Buffers {
            shrink: Some(2),
            ..fresh()
        };
        assert_eq!(
            plaid_deserializer_load(d, Some(place), (&mut state as *mut Buffers).cast()),
            PLAID_ERR_CAPACITY
        );
        assert!(last_error().contains("'t2'"));
        assert!(state.buffers.iter().all(|b| b.iter().all(|&x| x == 0xA5)));

        for (kind, status) in [
            (PLAID_DEST_CUDA, PLAID_ERR_NO_CUDA),
            (77, PLAID_ERR_INVALID_ARGUMENT),
        ] {
            let mut state = Buffers { kind, ..fresh() };
            assert_eq!(
                plaid_deserializer_load(d, Some(place), (&mut state as *mut Buffers).cast()),
                status
            );
        }
        assert_eq!(
            plaid_deserializer_load(d, None, ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(plaid_deserializer_verify(d), PLAID_OK);
        plaid_deserializer_free(d);
    }
}

#[test]
fn nulls_and_bad_values_are_statuses() {
    // SAFETY: every pointer is either NULL, which each function's `# Safety` allows (and
    // refuses), or a live local, CString or C literal; `s` is freed once, at the end.
    unsafe {
        let mut s = ptr::null_mut();
        let mut d = ptr::null_mut();
        let mut index = 0usize;
        assert_eq!(
            plaid_serializer_new(ptr::null(), ptr::null(), &mut s),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_serializer_new(c"x.plaid".as_ptr(), ptr::null(), ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        let invalid_utf8 = [0xffu8 as c_char, 0];
        assert_eq!(
            plaid_serializer_new(invalid_utf8.as_ptr(), ptr::null(), &mut s),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("UTF-8"));
        assert_eq!(
            plaid_serializer_add_tensor(
                ptr::null_mut(),
                c"a".as_ptr(),
                1,
                ptr::null(),
                0,
                ptr::null(),
                0
            ),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_serializer_set_metadata(ptr::null_mut(), c"a".as_ptr(), c"b".as_ptr()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_serializer_finish(ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_deserializer_open(ptr::null(), ptr::null(), &mut d),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_deserializer_open(c"/nonexistent/x.plaid".as_ptr(), ptr::null(), &mut d),
            PLAID_ERR_IO
        );
        assert!(last_error().contains("/nonexistent/x.plaid"));
        assert!(d.is_null(), "out-pointers are written only on success");
        assert_eq!(plaid_deserializer_tensor_count(ptr::null()), 0);
        assert!(plaid_deserializer_tensor(ptr::null(), 0).is_null());
        assert_eq!(
            plaid_deserializer_find(ptr::null(), c"a".as_ptr(), &mut index),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_deserializer_load(ptr::null_mut(), Some(place), ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_deserializer_verify(ptr::null()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_read_options_new(ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_read_options_set_verify(ptr::null_mut(), 1),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_write_options_set_threads(ptr::null_mut(), 1),
            PLAID_ERR_INVALID_ARGUMENT
        );
        plaid_serializer_free(ptr::null_mut());
        plaid_deserializer_free(ptr::null_mut());
        plaid_read_options_free(ptr::null_mut());
        plaid_write_options_free(ptr::null_mut());

        let dir = tempfile::tempdir().unwrap();
        let path = cstring(dir.path().join("x.plaid").to_str().unwrap());
        assert_eq!(
            plaid_serializer_new(path.as_ptr(), ptr::null(), &mut s),
            PLAID_OK
        );
        let data = [0u8; 8];
        let shape = [2u64];
        for (dtype, nbytes, data_ptr) in [
            (0, 8, data.as_ptr()),
            (999, 8, data.as_ptr()),
            (PLAID_DTYPE_F64, 8, data.as_ptr()),
            (PLAID_DTYPE_F32, 8, ptr::null()),
        ] {
            let status = plaid_serializer_add_tensor(
                s,
                c"a".as_ptr(),
                dtype,
                shape.as_ptr(),
                1,
                data_ptr.cast(),
                nbytes,
            );
            assert_eq!(status, PLAID_ERR_INVALID_ARGUMENT, "dtype {dtype}");
        }
        assert_eq!(
            plaid_serializer_add_tensor(
                s,
                c"a".as_ptr(),
                PLAID_DTYPE_F32,
                ptr::null(),
                1,
                data.as_ptr().cast(),
                8
            ),
            PLAID_ERR_INVALID_ARGUMENT
        );
        plaid_serializer_free(s);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "abandoned writes leave nothing"
        );
    }
}

#[test]
fn names_versions_and_the_message_buffer() {
    let statuses = [
        (PLAID_OK, "PLAID_OK"),
        (PLAID_ERR_INVALID_ARGUMENT, "PLAID_ERR_INVALID_ARGUMENT"),
        (PLAID_ERR_IO, "PLAID_ERR_IO"),
        (PLAID_ERR_FORMAT, "PLAID_ERR_FORMAT"),
        (PLAID_ERR_UNSUPPORTED, "PLAID_ERR_UNSUPPORTED"),
        (PLAID_ERR_CHECKSUM, "PLAID_ERR_CHECKSUM"),
        (PLAID_ERR_CAPACITY, "PLAID_ERR_CAPACITY"),
        (PLAID_ERR_CANCELLED, "PLAID_ERR_CANCELLED"),
        (PLAID_ERR_NOT_FOUND, "PLAID_ERR_NOT_FOUND"),
        (PLAID_ERR_NO_CUDA, "PLAID_ERR_NO_CUDA"),
        (PLAID_ERR_CUDA, "PLAID_ERR_CUDA"),
        (PLAID_ERR_PANIC, "PLAID_ERR_PANIC"),
        (PLAID_ERR_DECRYPT, "PLAID_ERR_DECRYPT"),
        (13, "PLAID_ERR_UNKNOWN"),
        (-1, "PLAID_ERR_UNKNOWN"),
    ];
    for (i, (status, name)) in statuses.iter().enumerate() {
        if i < 13 {
            assert_eq!(*status, i as i32, "status numbers are stable");
        }
        assert_eq!(
            // SAFETY: plaid_status_name never returns NULL: always a static NUL-terminated
            // string.
            unsafe { CStr::from_ptr(plaid_status_name(*status)) }
                .to_str()
                .unwrap(),
            *name
        );
    }
    for d in plaid::DType::ALL {
        assert_eq!(
            // SAFETY: `d` is a known dtype, whose name is a static NUL-terminated string,
            // not NULL.
            unsafe { CStr::from_ptr(plaid_dtype_name(d.id())) }
                .to_str()
                .unwrap(),
            d.name()
        );
        assert_eq!(plaid_dtype_size(d.id()), d.size());
    }
    assert!(plaid_dtype_name(0).is_null());
    assert_eq!(plaid_dtype_size(23), 0);
    assert_eq!((PLAID_DTYPE_BOOL, PLAID_DTYPE_F4_E2M1FN_X2), (1, 22));

    // SAFETY: plaid_version returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(plaid_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        format!("{PLAID_VERSION_MAJOR}.{PLAID_VERSION_MINOR}.{PLAID_VERSION_PATCH}"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(plaid_abi_version(), PLAID_ABI_VERSION);
    assert_eq!(PLAID_ABI_VERSION, plaid::ABI_VERSION);
    assert_eq!(
        env!("PLAID_ABI_VERSION"),
        PLAID_ABI_VERSION.to_string(),
        "build.rs SONAME"
    );

    // snprintf semantics.
    let mut d = ptr::null_mut();
    // SAFETY: a C literal path, NULL options for the defaults, and a writable local `d`.
    let status = unsafe {
        plaid_deserializer_open(c"/nonexistent/model.plaid".as_ptr(), ptr::null(), &mut d)
    };
    assert_eq!(status, PLAID_ERR_IO);
    let full = last_error();
    let mut small = [0x7f as c_char; 5];
    // SAFETY: `small` is 5 writable c_chars and exactly that length is passed.
    let n = unsafe { plaid_last_error_message(small.as_mut_ptr(), small.len()) };
    assert_eq!(n, full.len());
    assert_eq!(small[4], 0);
    assert_eq!(
        // SAFETY: the call above NUL-terminated `small` (checked: `small[4] == 0`); it
        // outlives the borrow.
        unsafe { CStr::from_ptr(small.as_ptr()) }.to_bytes(),
        &full.as_bytes()[..4]
    );
    // The message is per thread.
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
}

#[test]
fn overlapping_host_destinations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(4096, i)).collect();
    let path = write_model(dir.path(), &data);
    unsafe extern "C" fn overlapping(
        user: *mut c_void,
        info: *const plaid_tensor_info,
        dest: *mut plaid_destination,
    ) -> i32 {
        let base = user as *mut u8;
        // SAFETY: plaid passes an `info` that lives as long as the deserializer.
        let info = unsafe { &*info };
        // SAFETY: plaid passes a `dest` that is valid and ours alone during this call.
        let dest = unsafe { &mut *dest };
        dest.kind = PLAID_DEST_HOST;
        // Tensor 1 starts inside tensor 0's range.
        dest.address = base as u64 + [0, 4000, 20_000, 30_000][info.index];
        dest.capacity = info.nbytes;
        0
    }
    let mut arena = vec![0xA5u8; 64 << 10];
    // SAFETY: `path` is a CString alive across the open and `d` is freed once, last;
    // `arena` (64 KiB) outlives the load, and `overlapping` only computes addresses from
    // it.
    unsafe {
        let mut d = ptr::null_mut();
        assert_eq!(
            plaid_deserializer_open(path.as_ptr(), ptr::null(), &mut d),
            PLAID_OK
        );
        let status = plaid_deserializer_load(d, Some(overlapping), arena.as_mut_ptr().cast());
        assert_eq!(status, PLAID_ERR_INVALID_ARGUMENT);
        let message = last_error();
        assert!(
            message.contains("overlaps") && message.contains("'t1'") && message.contains("'t0'"),
            "{message}"
        );
        plaid_deserializer_free(d);
    }
    assert!(arena.iter().all(|&b| b == 0xA5), "nothing written");
}

#[test]
fn progress_callback_reports_and_cancels() {
    struct Seen {
        reports: usize,
        last: (u64, u64, usize, usize),
        cancel: bool,
    }
    unsafe extern "C" fn report(
        user: *mut c_void,
        p: *const plaid_progress::plaid_progress,
    ) -> i32 {
        // SAFETY: `user` is the `Seen` below, alive across each verify and not accessed by
        // the test while plaid runs.
        let seen = unsafe { &mut *(user as *mut Seen) };
        // SAFETY: plaid passes a progress report that is valid during this call.
        let p = unsafe { &*p };
        seen.reports += 1;
        seen.last = (p.bytes_done, p.bytes_total, p.tensors_done, p.tensors_total);
        i32::from(seen.cancel)
    }
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(4 * 5000, i)).collect();
    let path = write_model(dir.path(), &data);
    // SAFETY: `options` and `d` are used only between their creation and their free here;
    // `path` is a CString alive across the open; `seen` comes from `Box::into_raw`, is freed
    // after the deserializer, outlives every verify that reports to `report`, and the test
    // reads and writes it through that pointer only between those calls.
    unsafe {
        let mut options = ptr::null_mut();
        assert_eq!(plaid_read_options_new(&mut options), PLAID_OK);
        assert_eq!(
            plaid_read_options_set_progress_interval_ms(options, 0),
            PLAID_OK
        );
        assert_eq!(plaid_read_options_set_chunk_size(options, 4096), PLAID_OK);
        let mut d = ptr::null_mut();
        assert_eq!(
            plaid_deserializer_open(path.as_ptr(), options, &mut d),
            PLAID_OK
        );
        plaid_read_options_free(options);

        // Only ever reached through this raw pointer (also by the test between verifies),
        // so no reference to it outlives a call into plaid.
        let seen: *mut Seen = Box::into_raw(Box::new(Seen {
            reports: 0,
            last: (0, 0, 0, 0),
            cancel: false,
        }));
        assert_eq!(
            plaid_deserializer_set_progress(d, Some(report), seen.cast()),
            PLAID_OK
        );
        assert_eq!(plaid_deserializer_verify(d), PLAID_OK);
        let total = 4 * 4 * 5000 + 8;
        assert_eq!((*seen).last, (total, total, 5, 5));
        assert!((*seen).reports > 1);

        (*seen).cancel = true;
        assert_eq!(plaid_deserializer_verify(d), PLAID_ERR_CANCELLED);
        assert!(last_error().contains("progress callback returned 1"));

        assert_eq!(
            plaid_deserializer_set_progress(d, None, ptr::null_mut()),
            PLAID_OK
        );
        (*seen).reports = 0;
        assert_eq!(plaid_deserializer_verify(d), PLAID_OK);
        assert_eq!((*seen).reports, 0);
        assert_eq!(
            plaid_deserializer_set_progress(ptr::null_mut(), None, ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        plaid_deserializer_free(d);
        drop(Box::from_raw(seen));
    }
}

/// How many times `release_progress` ran, and the user data it was last given.
static PROGRESS_RELEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PROGRESS_RELEASED_DATA: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);
/// The deserializer the replacing callback below works on, and what it saw.
static PROGRESS_HANDLE: std::sync::atomic::AtomicPtr<plaid_deserializer> =
    std::sync::atomic::AtomicPtr::new(ptr::null_mut());
static PROGRESS_SEEN_INSIDE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

#[test]
fn a_progress_finalizer_runs_once_when_nothing_reports_any_more() {
    use std::sync::atomic::Ordering::SeqCst;
    unsafe extern "C" fn release_progress(user: *mut c_void) {
        PROGRESS_RELEASED_DATA.store(user as usize, SeqCst);
        PROGRESS_RELEASED.fetch_add(1, SeqCst);
    }
    unsafe extern "C" fn quiet(_: *mut c_void, _: *const plaid_progress::plaid_progress) -> i32 {
        0
    }
    // Replaces itself during the verification that reports to it: its finalizer must wait
    // for that verification to return.
    unsafe extern "C" fn replacing(
        _: *mut c_void,
        _: *const plaid_progress::plaid_progress,
    ) -> i32 {
        let d = PROGRESS_HANDLE.load(SeqCst);
        if !d.is_null() && PROGRESS_SEEN_INSIDE.load(SeqCst) == usize::MAX {
            // SAFETY: `d` is the live handle the test set; other threads may use it.
            let status = unsafe { plaid_deserializer_set_progress(d, None, ptr::null_mut()) };
            assert_eq!(status, PLAID_OK);
            PROGRESS_SEEN_INSIDE.store(PROGRESS_RELEASED.load(SeqCst), SeqCst);
        }
        0
    }
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(4 * 5000, i)).collect();
    let path = write_model(dir.path(), &data);
    let released = || PROGRESS_RELEASED.load(SeqCst);
    let token = |k: usize| (0x1000 + k) as *mut c_void;
    // SAFETY: `d` is used only between its open and its free here; `path` is a CString
    // alive across the open; the user data are tokens never dereferenced.
    unsafe {
        let mut d = ptr::null_mut();
        assert_eq!(
            plaid_deserializer_open(path.as_ptr(), ptr::null(), &mut d),
            PLAID_OK
        );
        assert_eq!(
            plaid_deserializer_set_progress_with_release(
                d,
                Some(quiet),
                token(1),
                Some(release_progress)
            ),
            PLAID_OK
        );
        assert_eq!(plaid_deserializer_verify(d), PLAID_OK);
        assert_eq!(released(), 0);
        // Replaced: released, with its own user data.
        assert_eq!(
            plaid_deserializer_set_progress_with_release(
                d,
                Some(replacing),
                token(2),
                Some(release_progress)
            ),
            PLAID_OK
        );
        assert_eq!(released(), 1);
        assert_eq!(PROGRESS_RELEASED_DATA.load(SeqCst), 0x1001);
        // Replaced from inside a verification that holds it: released after it returns.
        PROGRESS_HANDLE.store(d, SeqCst);
        assert_eq!(plaid_deserializer_verify(d), PLAID_OK);
        PROGRESS_HANDLE.store(ptr::null_mut(), SeqCst);
        assert_eq!(PROGRESS_SEEN_INSIDE.load(SeqCst), 1);
        assert_eq!(released(), 2);
        assert_eq!(PROGRESS_RELEASED_DATA.load(SeqCst), 0x1002);
        // No callback: released at once. A NULL handle: an error, and no release.
        assert_eq!(
            plaid_deserializer_set_progress_with_release(d, None, token(3), Some(release_progress)),
            PLAID_OK
        );
        assert_eq!(released(), 3);
        assert_eq!(
            plaid_deserializer_set_progress_with_release(
                ptr::null_mut(),
                Some(quiet),
                token(4),
                Some(release_progress)
            ),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(released(), 3);
        // Still in place when the deserializer is freed: released then.
        assert_eq!(
            plaid_deserializer_set_progress_with_release(
                d,
                Some(quiet),
                token(5),
                Some(release_progress)
            ),
            PLAID_OK
        );
        plaid_deserializer_free(d);
        assert_eq!(released(), 4);
        assert_eq!(PROGRESS_RELEASED_DATA.load(SeqCst), 0x1005);
    }
}
