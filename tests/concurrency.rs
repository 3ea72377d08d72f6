//! Handles used from many threads at once, as the header allows: several deserializers
//! loading the same and different files, one deserializer loaded by several threads while
//! others call its const functions and swap its progress callback, one serializer fed by
//! several threads, and `finish` racing with them.
#![deny(clippy::undocumented_unsafe_blocks)]

mod common;

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use common::random_bytes;
use plaid::ffi::deserializer::*;
use plaid::ffi::dtype::*;
use plaid::ffi::placement::*;
use plaid::ffi::progress::*;
use plaid::ffi::serializer::*;
use plaid::ffi::status::*;
use plaid::{DType, Deserializer, ReadOptions, Serializer, WriteOptions};

fn last_error() -> String {
    let mut buf = vec![0 as std::ffi::c_char; 4096];
    // SAFETY: `buf` is 4096 writable c_chars and exactly that length is passed.
    unsafe { plaid_last_error_message(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: with a non-zero length the call above NUL-terminated `buf`, which outlives
    // the borrow (`into_owned` copies it).
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A plaid file of `count` tensors of assorted sizes (some over a checksum block), and
/// their bytes.
fn plaid_model(path: &Path, count: usize, seed: u64) -> Vec<Vec<u8>> {
    let tensors: Vec<Vec<u8>> = (0..count)
        .map(|i| random_bytes(4 * (1 + (i * 37_411) % 700_000), seed * 1000 + i as u64))
        .collect();
    let options = WriteOptions::default()
        .sync(false)
        .checksum_block_size(64 << 10)
        .unwrap();
    let mut w = Serializer::create(path, options).unwrap();
    for (i, t) in tensors.iter().enumerate() {
        w.add_tensor(
            &format!("layer.{i}.weight"),
            DType::F32,
            &[t.len() as u64 / 4],
            t,
        )
        .unwrap();
    }
    w.set_metadata("arch", "tiny").unwrap();
    w.finish().unwrap();
    tensors
}

/// The three formats side by side: a plaid file, the same as safetensors, and a real
/// tensorizer file, each with its tensors' bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<Vec<u8>>)> {
    let plaid = dir.join("model.plaid");
    let tensors = plaid_model(&plaid, 24, 1);
    let safetensors = dir.join("model.safetensors");
    let source = Deserializer::open(&plaid, ReadOptions::default()).unwrap();
    plaid::convert::to_safetensors(&source, &safetensors, &mut |_, _| {}).unwrap();
    // safetensors lays tensors out by dtype, then name: its bytes in its own order.
    let in_safetensors = Deserializer::open(&safetensors, ReadOptions::default()).unwrap();
    let reordered = in_safetensors
        .tensors()
        .iter()
        .map(|t| tensors[source.find(&t.name).unwrap()].clone())
        .collect();
    let tensorizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorizer/module_tiny_lm_f32.tensors");
    let reference =
        common::load_all(&Deserializer::open(&tensorizer, ReadOptions::default()).unwrap())
            .unwrap();
    vec![
        (plaid, tensors),
        (safetensors, reordered),
        (tensorizer, reference),
    ]
}

#[test]
fn deserializers_on_many_threads_load_the_same_and_different_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(dir.path());
    // One deserializer per format shared by every thread, and each thread's own ones.
    let shared: Vec<_> = files
        .iter()
        .map(|(path, _)| Deserializer::open(path, ReadOptions::default()).unwrap())
        .collect();
    let start = Barrier::new(8);
    std::thread::scope(|scope| {
        for t in 0..8usize {
            let (files, shared, start) = (&files, &shared, &start);
            scope.spawn(move || {
                start.wait();
                for round in 0..4 {
                    let k = (t + round) % files.len();
                    let (path, expected) = &files[k];
                    let own = Deserializer::open(path, ReadOptions::default().threads(2).unwrap())
                        .unwrap();
                    assert_eq!(&common::load_all(&own).unwrap(), expected, "{path:?}");
                    assert_eq!(&common::load_all(&shared[k]).unwrap(), expected);
                    shared[k].verify().unwrap();
                    if round % 2 == 0 {
                        shared[k].map().unwrap();
                        let view = shared[k].view(0).unwrap();
                        assert_eq!(view, &expected[0][..]);
                    }
                }
            });
        }
    });
}

/// Per-load state of the placement callback: one buffer per tensor.
struct Buffers(Vec<Vec<u8>>);

unsafe extern "C" fn place(
    user: *mut c_void,
    info: *const plaid_tensor_info,
    dest: *mut plaid_destination,
) -> i32 {
    // SAFETY: `user` is the `Buffers` a loader passes to plaid_deserializer_load below,
    // alive and touched by nothing else until that call returns.
    let buffers = unsafe { &mut *(user as *mut Buffers) };
    // SAFETY: plaid passes an `info` that lives as long as the deserializer and a `dest`
    // that is valid and ours alone during this call.
    let (info, dest) = unsafe { (&*info, &mut *dest) };
    let buffer = &mut buffers.0[info.index];
    dest.kind = PLAID_DEST_HOST;
    dest.address = buffer.as_mut_ptr() as u64;
    dest.capacity = buffer.len() as u64;
    0
}

static REPORTS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_reports(_: *mut c_void, _: *const plaid_progress) -> i32 {
    REPORTS.fetch_add(1, Ordering::Relaxed);
    0
}

/// The handle crosses threads as an address.
#[derive(Clone, Copy)]
struct Handle(usize);

impl Handle {
    fn get(self) -> *mut plaid_deserializer {
        self.0 as *mut plaid_deserializer
    }
}

#[test]
fn one_c_deserializer_loaded_by_several_threads_while_others_query_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.plaid");
    let tensors = plaid_model(&path, 32, 2);
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut d = ptr::null_mut();
    // SAFETY: `c_path` is a CString alive across the call, NULL options mean the defaults,
    // and `d` is a writable local.
    let status = unsafe { plaid_deserializer_open(c_path.as_ptr(), ptr::null(), &mut d) };
    assert_eq!(status, PLAID_OK, "{}", last_error());
    let handle = Handle(d as usize);
    let loading = AtomicBool::new(true);
    let loads_done = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // Four loaders, each into its own buffers, several rounds each.
        let loaders: Vec<_> = (0..4)
            .map(|_| {
                let tensors = &tensors;
                let loads_done = &loads_done;
                scope.spawn(move || {
                    for _ in 0..5 {
                        let mut buffers =
                            Buffers(tensors.iter().map(|t| vec![0u8; t.len()]).collect());
                        // SAFETY: `handle` is the deserializer opened above, freed only
                        // after this scope joins every thread; `buffers` outlives the call
                        // and only `place` uses it.
                        let status = unsafe {
                            plaid_deserializer_load(
                                handle.get(),
                                Some(place),
                                &mut buffers as *mut Buffers as *mut c_void,
                            )
                        };
                        assert_eq!(status, PLAID_OK, "{}", last_error());
                        assert!(
                            buffers.0 == *tensors,
                            "a concurrent load delivered wrong bytes"
                        );
                        loads_done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Two threads calling the const functions all along.
        for _ in 0..2 {
            let loading = &loading;
            scope.spawn(move || {
                let d = handle.get() as *const plaid_deserializer;
                let mut calls = 0u64;
                while loading.load(Ordering::Relaxed) || calls < 100 {
                    calls += 1;
                    // SAFETY: `d` is live until freed after this scope; the names are C
                    // literals, `index` and `value` writable locals, and `info` (checked
                    // non-NULL) and `value` point into `d`.
                    unsafe {
                        assert_eq!(plaid_deserializer_tensor_count(d), 32);
                        let mut index = usize::MAX;
                        let name = c"layer.7.weight";
                        assert_eq!(
                            plaid_deserializer_find(d, name.as_ptr(), &mut index),
                            PLAID_OK
                        );
                        assert_eq!(index, 7);
                        let info = plaid_deserializer_tensor(d, 7);
                        assert!(!info.is_null());
                        assert_eq!((*info).index, 7);
                        let mut value = ptr::null();
                        assert_eq!(
                            plaid_deserializer_metadata_get(d, c"arch".as_ptr(), &mut value),
                            PLAID_OK
                        );
                        assert_eq!(CStr::from_ptr(value).to_str().unwrap(), "tiny");
                    }
                }
            });
        }
        // One thread turning the progress callback on and off during the loads.
        {
            let loading = &loading;
            scope.spawn(move || {
                let mut on = false;
                while loading.load(Ordering::Relaxed) {
                    on = !on;
                    let callback = if on { Some(count_reports as _) } else { None };
                    // SAFETY: `handle` is live until freed after this scope;
                    // `count_reports` never reads its NULL user data.
                    let status = unsafe {
                        plaid_deserializer_set_progress(handle.get(), callback, ptr::null_mut())
                    };
                    assert_eq!(status, PLAID_OK);
                    std::thread::yield_now();
                }
            });
        }
        for loader in loaders {
            loader.join().unwrap();
        }
        loading.store(false, Ordering::Relaxed);
    });
    assert_eq!(loads_done.load(Ordering::Relaxed), 20);
    // With the callback left on, a load reports to it.
    // SAFETY: every thread has been joined, so `d` (opened above) is live and ours alone;
    // it is freed once, last; `count_reports` never reads its NULL user data.
    unsafe {
        plaid_deserializer_set_progress(d, Some(count_reports), ptr::null_mut());
        let before = REPORTS.load(Ordering::Relaxed);
        assert_eq!(plaid_deserializer_verify(d), PLAID_OK);
        assert!(REPORTS.load(Ordering::Relaxed) > before);
        plaid_deserializer_free(d);
    }
}

#[test]
fn one_c_serializer_fed_by_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fed.plaid");
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut s = ptr::null_mut();
    assert_eq!(
        // SAFETY: `c_path` is a CString alive across the call, NULL options mean the
        // defaults, and `s` is a writable local.
        unsafe { plaid_serializer_new(c_path.as_ptr(), ptr::null(), &mut s) },
        PLAID_OK
    );
    let handle = s as usize;
    // Tensor data must outlive finish: made up front.
    let data: Vec<Vec<Vec<u8>>> = (0..4u64)
        .map(|t| {
            (0..50u64)
                .map(|i| random_bytes(256 + (i as usize) * 64, t * 100 + i))
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for (t, tensors) in data.iter().enumerate() {
            scope.spawn(move || {
                let s = handle as *mut plaid_serializer;
                for (i, bytes) in tensors.iter().enumerate() {
                    let name = CString::new(format!("thread{t}.t{i}")).unwrap();
                    let shape = [bytes.len() as u64];
                    // SAFETY: `s` is live until freed after this scope; `name` and `shape`
                    // (1 value for ndim 1) outlive the call, and `bytes` stays in `data`
                    // until after finish.
                    let status = unsafe {
                        plaid_serializer_add_tensor(
                            s,
                            name.as_ptr(),
                            PLAID_DTYPE_U8,
                            shape.as_ptr(),
                            1,
                            bytes.as_ptr().cast(),
                            bytes.len() as u64,
                        )
                    };
                    assert_eq!(status, PLAID_OK, "{}", last_error());
                    let key = CString::new(format!("k{t}")).unwrap();
                    let value = CString::new(i.to_string()).unwrap();
                    // SAFETY: `s` is live until freed after this scope; `key` and `value`
                    // are CStrings alive across the call.
                    let status =
                        unsafe { plaid_serializer_set_metadata(s, key.as_ptr(), value.as_ptr()) };
                    assert_eq!(status, PLAID_OK);
                }
            });
        }
    });
    // SAFETY: every feeding thread has been joined; `s` is live, finished once here and
    // freed once; the bytes it refers to stay in `data` until the end of the test.
    unsafe {
        assert_eq!(plaid_serializer_finish(s), PLAID_OK, "{}", last_error());
        plaid_serializer_free(s);
    }
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    assert_eq!(d.tensors().len(), 200);
    for (t, tensors) in data.iter().enumerate() {
        for (i, bytes) in tensors.iter().enumerate() {
            let index = d.find(&format!("thread{t}.t{i}")).unwrap();
            assert_eq!(&d.read_tensor(index).unwrap(), bytes);
        }
        assert_eq!(d.metadata()[&format!("k{t}")], "49");
    }
}

#[test]
fn finish_racing_with_adds_keeps_exactly_the_adds_that_came_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raced.plaid");
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut s = ptr::null_mut();
    assert_eq!(
        // SAFETY: `c_path` is a CString alive across the call, NULL options mean the
        // defaults, and `s` is a writable local.
        unsafe { plaid_serializer_new(c_path.as_ptr(), ptr::null(), &mut s) },
        PLAID_OK
    );
    let handle = s as usize;
    let bytes = Arc::new(random_bytes(4096, 9));
    let count = AtomicUsize::new(0);
    let added = std::thread::scope(|scope| {
        let adder = scope.spawn(|| {
            let s = handle as *mut plaid_serializer;
            let mut added = Vec::new();
            for i in 0..100_000u32 {
                let name = CString::new(format!("t{i}")).unwrap();
                let shape = [bytes.len() as u64];
                // SAFETY: `s` is live until freed after this scope; `name` and `shape` (1
                // value for ndim 1) outlive the call, and the 4096 bytes behind `bytes`
                // outlive the scope.
                let status = unsafe {
                    plaid_serializer_add_tensor(
                        s,
                        name.as_ptr(),
                        PLAID_DTYPE_U8,
                        shape.as_ptr(),
                        1,
                        bytes.as_ptr().cast(),
                        bytes.len() as u64,
                    )
                };
                if status != PLAID_OK {
                    assert_eq!(status, PLAID_ERR_INVALID_ARGUMENT);
                    assert!(
                        last_error().contains("already finished"),
                        "{}",
                        last_error()
                    );
                    break;
                }
                added.push(i);
                count.fetch_add(1, Ordering::Relaxed);
            }
            added
        });
        // Let some adds in, then finish while they keep coming.
        while !adder.is_finished() && count.load(Ordering::Relaxed) < 100 {
            std::thread::yield_now();
        }
        // SAFETY: `handle` is the live serializer `s`, freed only after this scope; the C
        // API allows finish to race with adds on other threads.
        let status = unsafe { plaid_serializer_finish(handle as *mut plaid_serializer) };
        assert_eq!(status, PLAID_OK, "{}", last_error());
        adder.join().unwrap()
    });
    // SAFETY: the adder has been joined and `s`, made by plaid_serializer_new above, is
    // freed only here.
    unsafe { plaid_serializer_free(s) };
    assert!(
        !added.is_empty() && added.len() < 100_000,
        "{} adds",
        added.len()
    );
    let d = Deserializer::open(&path, ReadOptions::default()).unwrap();
    assert_eq!(d.tensors().len(), added.len());
    for (tensor, i) in d.tensors().iter().zip(&added) {
        assert_eq!(tensor.name, format!("t{i}"));
    }
    d.verify().unwrap();
}
