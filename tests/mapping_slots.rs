//! At most 256 mappings are guarded per process (the SIGBUS guard's registry): the 257th
//! `map` is `Unsupported`, loads keep working without one, and a freed mapping's slot is
//! reused. A binary of its own, so that no other test holds slots meanwhile.

mod common;

use plaid::{DType, Deserializer, Error, ReadOptions, Serializer, WriteOptions};

#[test]
fn the_257th_mapping_is_refused_and_freed_slots_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.plaid");
    let data = common::random_bytes(4096, 1);
    let mut w = Serializer::create(&path, WriteOptions::default().sync(false)).unwrap();
    w.add_tensor("w", DType::U8, &[4096], &data).unwrap();
    w.finish().unwrap();

    let open = || Deserializer::open(&path, ReadOptions::default()).unwrap();
    let mut mapped: Vec<Deserializer> = (0..256)
        .map(|i| {
            let d = open();
            d.map().unwrap_or_else(|e| panic!("mapping #{i}: {e}"));
            d
        })
        .collect();
    let extra = open();
    let err = extra.map().unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    // Without a mapping it still loads (through pread).
    assert_eq!(extra.read_tensor(0).unwrap(), data);
    // A freed mapping gives its slot back.
    mapped.pop();
    let again = open();
    again.map().unwrap();
    assert_eq!(again.view(0).unwrap(), &data[..]);
}
