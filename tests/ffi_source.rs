//! `plaid_source` called from Rust exactly as C calls it: a read callback serving short
//! reads from several threads at once, `release` called exactly once on every path
//! (handle freed first or last, failed opens, failed creation never), and every way a
//! callback can misbehave turned into a clear status naming the source and offset.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::random_bytes;
use plaid::ffi::deserializer::*;
use plaid::ffi::placement::*;
use plaid::ffi::read_options::*;
use plaid::ffi::source::*;
use plaid::ffi::status::*;
use plaid::{DType, Serializer, WriteOptions};

fn last_error() -> String {
    // SAFETY: a NULL buffer with length 0 only asks for the message's length.
    let len = unsafe { plaid_last_error_message(ptr::null_mut(), 0) };
    let mut buf = vec![0 as c_char; len + 1];
    // SAFETY: `buf` is `len + 1` writable c_chars and exactly that length is passed.
    unsafe { plaid_last_error_message(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: `buf` is non-empty, so the call above NUL-terminated it; it outlives the
    // borrow, which `to_owned` copies.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

/// What the callbacks serve and count.
struct Served {
    bytes: Vec<u8>,
    /// Largest piece one read returns.
    piece: usize,
    /// How the read misbehaves from `from` on: `Some(value)` is returned instead.
    lie: Option<(u64, i64)>,
    reads: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Reads wait for this many to be in flight at once (once), 0 for no waiting.
    meet: AtomicUsize,
    threads: Mutex<std::collections::HashSet<std::thread::ThreadId>>,
    released: AtomicUsize,
}

impl Served {
    fn new(bytes: Vec<u8>, piece: usize) -> Box<Served> {
        Box::new(Served {
            bytes,
            piece,
            lie: None,
            reads: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            meet: AtomicUsize::new(0),
            threads: Mutex::default(),
            released: AtomicUsize::new(0),
        })
    }
}

unsafe extern "C" fn read(user: *mut c_void, offset: u64, buf: *mut c_void, len: u64) -> i64 {
    // SAFETY: `user` is a `Served` given to plaid_source_new, which every test keeps alive
    // until after its source is released; it is only read (its mutable parts are atomics
    // and a Mutex).
    let served = unsafe { &*(user as *const Served) };
    let now = served.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    served.most_in_flight.fetch_max(now, Ordering::SeqCst);
    served.reads.fetch_add(1, Ordering::SeqCst);
    served
        .threads
        .lock()
        .unwrap()
        .insert(std::thread::current().id());
    // Stay in flight until as many reads as plaid may issue at once have met here (or a
    // generous while has passed), so that how many overlap does not depend on how fast
    // threads start on this machine (or under a sanitizer).
    let waited = std::time::Instant::now();
    while served.most_in_flight.load(Ordering::SeqCst) < served.meet.load(Ordering::SeqCst)
        && waited.elapsed() < std::time::Duration::from_secs(2)
    {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    std::thread::sleep(std::time::Duration::from_micros(300));
    let result = match served.lie {
        Some((from, value)) if offset + len > from => value,
        _ => {
            let start = offset as usize;
            let n = (len as usize)
                .min(served.piece)
                .min(served.bytes.len().saturating_sub(start));
            // SAFETY: plaid reads only below the source's length, `served.bytes.len()`, so
            // `start` is in bounds and `n` bytes from it too; `n <= len` and `buf` has
            // `len` writable bytes during this call.
            unsafe {
                ptr::copy_nonoverlapping(served.bytes.as_ptr().add(start), buf.cast::<u8>(), n)
            };
            n as i64
        }
    };
    served.in_flight.fetch_sub(1, Ordering::SeqCst);
    result
}

unsafe extern "C" fn release(user: *mut c_void) {
    // SAFETY: `user` is the `Served` given to plaid_source_new, which each test keeps alive
    // until it has checked `released` after the last handle was freed; it is only read.
    let served = unsafe { &*(user as *const Served) };
    served.released.fetch_add(1, Ordering::SeqCst);
}

fn new_source(served: &Served, name: &str) -> *mut plaid_source {
    let name = CString::new(name).unwrap();
    let mut source = ptr::null_mut();
    // SAFETY: `name` is a CString alive across the call and `source` a writable local;
    // `served` must outlive the source, which each caller ensures by freeing every handle
    // on it before `served` is dropped.
    let status = unsafe {
        plaid_source_new(
            name.as_ptr(),
            served.bytes.len() as u64,
            Some(read),
            served as *const Served as *mut c_void,
            Some(release),
            &mut source,
        )
    };
    assert_eq!(status, PLAID_OK, "{}", last_error());
    source
}

/// A plaid model of a large tensor and many small ones, and its tensors.
fn model() -> (Vec<u8>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plaid");
    let data: Vec<Vec<u8>> = (0..40u64)
        .map(|i| {
            random_bytes(
                if i == 0 {
                    3 << 20
                } else {
                    1000 + i as usize * 77
                },
                i,
            )
        })
        .collect();
    let options = WriteOptions::default()
        .checksum_block_size(4096)
        .unwrap()
        .sync(false);
    let mut writer = Serializer::create(&path, options).unwrap();
    for (i, bytes) in data.iter().enumerate() {
        writer
            .add_tensor(&format!("t{i}"), DType::U8, &[bytes.len() as u64], bytes)
            .unwrap();
    }
    writer.finish().unwrap();
    (std::fs::read(&path).unwrap(), data)
}

unsafe extern "C" fn place(
    user: *mut c_void,
    info: *const plaid_tensor_info,
    dest: *mut plaid_destination,
) -> i32 {
    // SAFETY: `user` is the `buffers` `load` passes to plaid_deserializer_load, alive and
    // touched by nothing else until that call returns.
    let buffers = unsafe { &mut *(user as *mut Vec<Vec<u8>>) };
    // SAFETY: plaid passes an `info` that lives as long as the deserializer and a `dest`
    // that is valid and ours alone during this call.
    let (info, dest) = unsafe { (&*info, &mut *dest) };
    let buffer = &mut buffers[info.index];
    dest.kind = PLAID_DEST_HOST;
    dest.address = buffer.as_mut_ptr() as u64;
    dest.capacity = buffer.len() as u64;
    0
}

fn load(d: *mut plaid_deserializer, data: &[Vec<u8>]) -> (plaid_status, Vec<Vec<u8>>) {
    let mut buffers: Vec<Vec<u8>> = data.iter().map(|b| vec![0xA5; b.len()]).collect();
    // SAFETY: `d` is a live deserializer from the caller; `buffers` outlives the call and
    // only `place` uses it.
    let status = unsafe {
        plaid_deserializer_load(
            d,
            Some(place),
            &mut buffers as *mut Vec<Vec<u8>> as *mut c_void,
        )
    };
    (status, buffers)
}

#[test]
fn a_callback_source_loads_with_short_concurrent_reads_and_is_released_once() {
    let (bytes, data) = model();
    let served = Served::new(bytes, 100_000);
    let source = new_source(&served, "callback.plaid");
    assert_eq!(
        // SAFETY: `source` is the live handle made just above, freed only after the open
        // below.
        unsafe { plaid_source_set_hints(source, 64 << 10, 4096, 5) },
        PLAID_OK
    );
    let mut options = ptr::null_mut();
    // SAFETY: `options` is a writable local.
    assert_eq!(unsafe { plaid_read_options_new(&mut options) }, PLAID_OK);
    assert_eq!(
        // SAFETY: `options` is the live handle made just above, freed after the open below.
        unsafe { plaid_read_options_set_threads(options, 1) },
        PLAID_OK
    );
    let mut d = ptr::null_mut();
    assert_eq!(
        // SAFETY: `source` and `options` are the live handles made above, and `d` a
        // writable local.
        unsafe { plaid_deserializer_open_source(source, options, &mut d) },
        PLAID_OK,
        "{}",
        last_error()
    );
    // SAFETY: `options` came from plaid_read_options_new above and is freed once, here.
    unsafe { plaid_read_options_free(options) };
    // The caller's handle goes first: the deserializer keeps the source alive.
    // SAFETY: `source` came from `new_source` above and is freed once, here; `d` keeps its
    // own reference.
    unsafe { plaid_source_free(source) };
    assert_eq!(served.released.load(Ordering::SeqCst), 0);
    // SAFETY: `d` is the live deserializer opened above, freed only at the end of this
    // part.
    assert_eq!(unsafe { plaid_deserializer_tensor_count(d) }, 40);
    served.meet.store(5, Ordering::SeqCst);
    let (status, loaded) = load(d, &data);
    assert_eq!(status, PLAID_OK, "{}", last_error());
    assert!(loaded == data);
    // The hints' five requests in flight, from plaid's threads, with one CPU worker.
    assert_eq!(served.most_in_flight.load(Ordering::SeqCst), 5);
    assert!(served.threads.lock().unwrap().len() >= 5);
    // No zero-copy views of a source.
    let mut view = ptr::null();
    let mut len = 0u64;
    assert_eq!(
        // SAFETY: `d` is still live; `view` and `len` are writable locals.
        unsafe { plaid_deserializer_tensor_data(d, 0, &mut view, &mut len) },
        PLAID_ERR_UNSUPPORTED
    );
    assert!(last_error().contains("callback.plaid"));
    assert_eq!(served.released.load(Ordering::SeqCst), 0);
    // SAFETY: `d` came from plaid_deserializer_open_source above and is freed once, here;
    // `served` outlives the release this triggers.
    unsafe { plaid_deserializer_free(d) };
    assert_eq!(served.released.load(Ordering::SeqCst), 1);

    // The deserializer goes first: released with the handle.
    let served = Served::new(served.bytes.clone(), 3 << 20);
    let source = new_source(&served, "callback.plaid");
    let mut d = ptr::null_mut();
    assert_eq!(
        // SAFETY: `source` is the live handle made just above, NULL options mean the
        // defaults, and `d` is a writable local.
        unsafe { plaid_deserializer_open_source(source, ptr::null(), &mut d) },
        PLAID_OK
    );
    let mut second = ptr::null_mut();
    assert_eq!(
        // SAFETY: `source` is still live (freed below), and `second` is a writable local.
        unsafe { plaid_deserializer_open_source(source, ptr::null(), &mut second) },
        PLAID_OK
    );
    assert_eq!(load(second, &data).1, data);
    // SAFETY: `d` came from plaid_deserializer_open_source above and is freed once, here.
    unsafe { plaid_deserializer_free(d) };
    // SAFETY: `second` came from plaid_deserializer_open_source above and is freed once,
    // here.
    unsafe { plaid_deserializer_free(second) };
    assert_eq!(served.released.load(Ordering::SeqCst), 0);
    // SAFETY: `source` came from `new_source` above and is freed once, here, while `served`
    // is alive to be released.
    unsafe { plaid_source_free(source) };
    assert_eq!(served.released.load(Ordering::SeqCst), 1);
    // SAFETY: freeing NULL is a documented no-op.
    unsafe { plaid_source_free(ptr::null_mut()) };
}

#[test]
fn failed_opens_and_failed_creation_release_correctly() {
    // Not a model: the open fails, nothing is kept, release waits for the handle.
    let served = Served::new(b"this is not a model file at all".to_vec(), 7);
    let source = new_source(&served, "garbage.bin");
    let mut d = ptr::null_mut();
    assert_eq!(
        // SAFETY: `source` is the live handle made just above, NULL options mean the
        // defaults, and `d` is a writable local.
        unsafe { plaid_deserializer_open_source(source, ptr::null(), &mut d) },
        PLAID_ERR_FORMAT
    );
    assert!(d.is_null());
    assert!(last_error().contains("garbage.bin"), "{}", last_error());
    assert_eq!(served.released.load(Ordering::SeqCst), 0);
    // SAFETY: `source` came from `new_source` above, the failed open kept no reference, and
    // it is freed once, here.
    unsafe { plaid_source_free(source) };
    assert_eq!(served.released.load(Ordering::SeqCst), 1);

    // Creation fails only on invalid arguments, and then never calls release.
    let served = Served::new(vec![0; 10], 10);
    let user = &*served as *const Served as *mut c_void;
    let mut source = ptr::null_mut();
    let name = CString::new("x").unwrap();
    let bad = CString::new(vec![0xffu8, 0xfe]).unwrap();
    // SAFETY: each call passes one NULL or non-UTF-8 argument, which is refused before
    // anything is kept; the other pointers are CStrings, `user` (the live `served`) and the
    // writable `source`.
    unsafe {
        assert_eq!(
            plaid_source_new(
                ptr::null(),
                10,
                Some(read),
                user,
                Some(release),
                &mut source
            ),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_source_new(name.as_ptr(), 10, None, user, Some(release), &mut source),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_source_new(
                bad.as_ptr(),
                10,
                Some(read),
                user,
                Some(release),
                &mut source
            ),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("UTF-8"));
        assert_eq!(
            plaid_source_new(
                name.as_ptr(),
                10,
                Some(read),
                user,
                Some(release),
                ptr::null_mut()
            ),
            PLAID_ERR_INVALID_ARGUMENT
        );
    }
    assert!(source.is_null());
    assert_eq!(served.released.load(Ordering::SeqCst), 0);

    // Hints out of range change nothing; a NULL source is refused everywhere.
    let source = new_source(&served, "x");
    // SAFETY: `source` is the live handle made just above and freed once, last; the NULL
    // handles and out-pointer are refused, as each function's `# Safety` allows; `d` is a
    // writable local.
    unsafe {
        for (request, gap, depth) in [(0, 0, 1), (4096, 0, 0), (4096, 0, 5000), (4096, 2 << 30, 1)]
        {
            assert_eq!(
                plaid_source_set_hints(source, request, gap, depth),
                PLAID_ERR_INVALID_ARGUMENT
            );
        }
        assert_eq!(
            plaid_source_set_hints(ptr::null_mut(), 4096, 0, 1),
            PLAID_ERR_INVALID_ARGUMENT
        );
        let mut d = ptr::null_mut();
        assert_eq!(
            plaid_deserializer_open_source(ptr::null(), ptr::null(), &mut d),
            PLAID_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            plaid_deserializer_open_source(source, ptr::null(), ptr::null_mut()),
            PLAID_ERR_INVALID_ARGUMENT
        );
        plaid_source_free(source);
    }
    assert_eq!(served.released.load(Ordering::SeqCst), 1);

    // Without a release callback: nothing to call.
    let mut source = ptr::null_mut();
    // SAFETY: `name` is a CString alive across the call, `user` the still-live `served` (no
    // release callback here), `source` a writable local, freed once right after.
    unsafe {
        assert_eq!(
            plaid_source_new(name.as_ptr(), 10, Some(read), user, None, &mut source),
            PLAID_OK
        );
        plaid_source_free(source);
    }
}

#[test]
fn a_misbehaving_callback_gives_a_clear_status() {
    let (bytes, data) = model();
    let tail = bytes.len() as u64 - 1000;
    for (value, status, words) in [
        (-5i64, PLAID_ERR_IO, "returned -5"),
        (1 << 40, PLAID_ERR_IO, "for a read of"),
        (0, PLAID_ERR_FORMAT, "truncated"),
    ] {
        let mut served = Served::new(bytes.clone(), 1 << 20);
        served.lie = Some((tail, value));
        let source = new_source(&served, "liar.plaid");
        let mut d = ptr::null_mut();
        assert_eq!(
            // SAFETY: `source` is the live handle made just above, NULL options mean the
            // defaults, and `d` is a writable local.
            unsafe { plaid_deserializer_open_source(source, ptr::null(), &mut d) },
            PLAID_OK
        );
        // SAFETY: `source` came from `new_source` above and is freed once, here; `d` keeps
        // its own reference.
        unsafe { plaid_source_free(source) };
        let (got, _) = load(d, &data);
        let message = last_error();
        assert_eq!(got, status, "{message}");
        assert!(message.contains("liar.plaid"), "{message}");
        assert!(message.contains("offset"), "{message}");
        assert!(message.contains(words), "{message}");
        assert!(message.contains("tensor '"), "{message}");
        // SAFETY: `d` came from plaid_deserializer_open_source above and is freed once,
        // here; `served` outlives the release this triggers.
        unsafe { plaid_deserializer_free(d) };
        assert_eq!(served.released.load(Ordering::SeqCst), 1);
    }

    // A sharded checkpoint's index cannot be a source.
    let index = br#"{"metadata": {}, "weight_map": {"w": "a.safetensors"}}"#.to_vec();
    let served = Served::new(index, 1000);
    let source = new_source(&served, "model.safetensors.index.json");
    let mut d = ptr::null_mut();
    assert_eq!(
        // SAFETY: `source` is the live handle made just above, NULL options mean the
        // defaults, and `d` is a writable local.
        unsafe { plaid_deserializer_open_source(source, ptr::null(), &mut d) },
        PLAID_ERR_UNSUPPORTED
    );
    // SAFETY: `source` came from `new_source` above, the refused open kept no reference,
    // and it is freed once, here.
    unsafe { plaid_source_free(source) };
    assert_eq!(served.released.load(Ordering::SeqCst), 1);
}
