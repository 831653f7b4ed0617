use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

type Hdrs = Vec<(String, Option<Vec<u8>>)>;

#[derive(Debug, Clone)]
struct In {
    ts: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Hdrs,
}

fn build(codec: Compression, recs: &[In]) -> Bytes {
    let mut b = BatchBuilder::new(codec).producer(7, 3, 100);
    for r in recs {
        b.append(r.ts, r.key.as_deref(), r.value.as_deref(), &r.headers);
    }
    b.finish().expect("finish")
}

fn one_batch(bytes: Bytes) -> RecordBatch {
    match RecordBatch::parse(bytes).expect("parse") {
        Parsed::Batch(b, rest) => {
            assert!(rest.is_empty());
            b
        }
        Parsed::Partial { .. } => panic!("partial"),
    }
}

fn arb_record() -> impl Strategy<Value = In> {
    (
        0i64..4_000_000_000_000,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::collection::vec(
            (
                "[a-z]{0,8}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            ),
            0..4,
        ),
    )
        .prop_map(|(ts, key, value, headers)| In {
            ts,
            key,
            value,
            headers,
        })
}

fn arb_codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Snappy),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
    ]
}

proptest! {
    #[test]
    fn batches_round_trip(codec in arb_codec(), recs in proptest::collection::vec(arb_record(), 1..50)) {
        let batch = one_batch(build(codec, &recs));
        prop_assert_eq!(batch.compression(), codec);
        prop_assert_eq!(batch.record_count() as usize, recs.len());
        prop_assert_eq!(batch.last_offset_delta() as usize, recs.len() - 1);
        prop_assert_eq!(batch.producer_id(), 7);
        prop_assert_eq!(batch.producer_epoch(), 3);
        prop_assert_eq!(batch.base_sequence(), 100);
        prop_assert_eq!(batch.max_timestamp(), recs.iter().map(|r| r.ts).max().unwrap_or(-1));
        let got: Vec<_> = batch.records().expect("records").collect::<Result<_, _>>().expect("all ok");
        prop_assert_eq!(got.len(), recs.len());
        for (i, (g, want)) in got.iter().zip(&recs).enumerate() {
            prop_assert_eq!(g.offset, i as i64);
            prop_assert_eq!(g.timestamp, want.ts);
            prop_assert_eq!(g.key(), want.key.as_deref());
            prop_assert_eq!(g.value(), want.value.as_deref());
            let hs: Vec<(String, Option<Vec<u8>>)> = g.headers().map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec))).collect();
            prop_assert_eq!(&hs, &want.headers);
        }
    }

    /// A recycled buffer's old bytes never leak into a batch: whatever it
    /// held and however large it was, the batch is the one a fresh builder
    /// writes, and small starting capacities grow as records come.
    #[test]
    fn recycled_buffers_write_the_same_batch(
        codec in arb_codec(),
        recs in proptest::collection::vec(arb_record(), 1..50),
        stale in proptest::collection::vec(any::<u8>(), 0..20_000),
        capacity in 0usize..4096,
    ) {
        let fresh = build(codec, &recs);
        let mut b = BatchBuilder::with_buffer(codec, stale, capacity).producer(7, 3, 100);
        for r in &recs {
            b.append(r.ts, r.key.as_deref(), r.value.as_deref(), &r.headers);
        }
        prop_assert_eq!(b.finish().expect("finish"), fresh);
    }

    /// Any single flipped byte is caught (CRC or framing), never a panic.
    #[test]
    fn flipped_bytes_are_caught(recs in proptest::collection::vec(arb_record(), 1..5), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let bytes = build(Compression::None, &recs);
        let mut bad = bytes.to_vec();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        // Flips in baseOffset (0..8) and leaderEpoch (12..16) are outside the
        // CRC by design; everything else must be detected.
        let uncovered = i < 8 || (12..16).contains(&i);
        match RecordBatch::parse(Bytes::from(bad)) {
            Ok(Parsed::Batch(b, _)) => {
                prop_assert!(uncovered, "flip at {} went unnoticed", i);
                prop_assert!(b.records().expect("records").all(|r| r.is_ok()));
            }
            Ok(Parsed::Partial { .. }) | Err(_) => prop_assert!(!uncovered || i >= 8),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        for b in Batches::new(Bytes::from(data)).flatten() {
            if let Ok(recs) = b.records() {
                for r in recs.flatten() {
                    let _ = r.headers().count();
                }
            }
        }
    }
}

/// Records at the edges of the builder's short path (deltas of ±8191,
/// keys under 8 KiB, values under 1 MiB, a record under 1 MiB) and just past
/// them read back as written.
#[test]
fn records_at_the_short_paths_edges_round_trip() {
    let sizes = |edges: &[usize]| -> Vec<Option<Vec<u8>>> {
        let mut out = vec![None];
        out.extend(edges.iter().map(|&n| Some(vec![b'x'; n])));
        out
    };
    let keys = sizes(&[0, 63, 64, 8191, 8192]);
    let values = sizes(&[
        0,
        63,
        64,
        8191,
        8192,
        (1 << 20) - 20,
        (1 << 20) - 1,
        1 << 20,
    ]);
    for key in &keys {
        for value in &values {
            for delta in [0, 1, 8191, -8192, 8192, -8193, 1 << 40] {
                let recs = [
                    In {
                        ts: 1_000_000,
                        key: None,
                        value: None,
                        headers: vec![],
                    },
                    In {
                        ts: 1_000_000 + delta,
                        key: key.clone(),
                        value: value.clone(),
                        headers: vec![],
                    },
                ];
                let batch = one_batch(build(Compression::None, &recs));
                let got: Vec<_> = batch
                    .records()
                    .expect("records")
                    .collect::<Result<_, _>>()
                    .expect("all ok");
                assert_eq!(got.len(), 2);
                assert_eq!(got[1].timestamp, 1_000_000 + delta);
                assert_eq!(got[1].key(), key.as_deref());
                assert_eq!(got[1].value(), value.as_deref());
            }
        }
    }
}

#[test]
fn several_batches_and_a_cut_tail() {
    let recs = |tag: &str| {
        (0..10)
            .map(|i| In {
                ts: 1000 + i,
                key: Some(format!("{tag}{i}").into_bytes()),
                value: Some(vec![b'x'; 50]),
                headers: vec![],
            })
            .collect::<Vec<_>>()
    };
    let a = build(Compression::None, &recs("a"));
    let mut b = build(Compression::Zstd, &recs("b")).to_vec();
    set_base_offset(&mut b, 10);
    let c = build(Compression::Gzip, &recs("c"));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&a);
    buf.extend_from_slice(&b);
    buf.extend_from_slice(&c[..c.len() - 7]);
    let mut it = Batches::new(buf.freeze());
    let offsets: Vec<i64> = it
        .by_ref()
        .map(|b| b.expect("batch").base_offset())
        .collect();
    assert_eq!(offsets, [0, 10]);
    assert_eq!(it.partial_tail(), Some((0, c.len())));
}

#[test]
fn corrupt_batches_give_typed_errors() {
    let good = build(
        Compression::None,
        &[In {
            ts: 5,
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![],
        }],
    );
    let mut bad_crc = good.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    set_base_offset(&mut bad_crc, 42);
    assert!(matches!(
        RecordBatch::parse(Bytes::from(bad_crc)),
        Err(RecordError::Crc {
            base_offset: 42,
            ..
        })
    ));

    let mut v1 = good.to_vec();
    v1[16] = 1;
    assert!(matches!(
        RecordBatch::parse(Bytes::from(v1)),
        Err(RecordError::UnsupportedMagic { magic: 1, .. })
    ));

    assert!(matches!(
        RecordBatch::parse(good.slice(..5)),
        Err(RecordError::Truncated { .. })
    ));
    assert!(matches!(
        RecordBatch::parse(good.slice(..good.len() - 1)),
        Ok(Parsed::Partial { .. })
    ));

    // A record whose length field lies, with a CRC that matches the lie.
    let mut lying = good.to_vec();
    lying[HEADER_LEN] = 0x7e; // length 63, more than the batch holds
    let crc = crc32c::crc32c(&lying[21..]);
    lying[17..21].copy_from_slice(&crc.to_be_bytes());
    let batch = one_batch(Bytes::from(lying));
    let errs: Vec<_> = batch.records().expect("records").collect();
    assert_eq!(errs.len(), 1);
    assert!(matches!(
        errs[0],
        Err(RecordError::CorruptRecord { offset: 0, .. })
    ));
}

#[test]
fn control_markers_are_recognised() {
    let mut b = BatchBuilder::new(Compression::None)
        .transactional(true)
        .control(true);
    // Control key: version 0, type 1 (COMMIT).
    b.append::<&str, &[u8]>(1, Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), &[]);
    let batch = one_batch(b.finish().expect("finish"));
    assert!(batch.is_control() && batch.is_transactional());
    assert_eq!(batch.control_commit(), Some(true));
}

/// Our batches read the same through kafka-protocol's decoder, and its
/// batches read the same through ours.
#[test]
fn interoperates_with_kafka_protocol_codec() {
    use kafka_protocol::records::{
        Compression as KpCompression, Record as KpRecord, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };
    let recs: Vec<In> = (0..20)
        .map(|i| In {
            ts: 1_700_000_000_000 + i,
            key: (i % 3 != 0).then(|| format!("key-{i}").into_bytes()),
            value: Some(vec![i as u8; 100]),
            headers: vec![("h".into(), Some(vec![1, 2])), ("h".into(), None)],
        })
        .collect();
    let ours = build(Compression::None, &recs);
    let mut buf = ours.clone();
    let decoded = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes ours");
    assert_eq!(decoded.records.len(), recs.len());
    for (d, want) in decoded.records.iter().zip(&recs) {
        assert_eq!(d.timestamp, want.ts);
        assert_eq!(d.key.as_deref(), want.key.as_deref());
        assert_eq!(d.value.as_deref(), want.value.as_deref());
    }

    let theirs: Vec<KpRecord> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| KpRecord {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: r.ts,
            key: r.key.clone().map(Bytes::from),
            value: r.value.clone().map(Bytes::from),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &theirs,
        &RecordEncodeOptions {
            version: 2,
            compression: KpCompression::None,
        },
    )
    .expect("kafka-protocol encodes");
    let batches: Vec<RecordBatch> = Batches::new(out.freeze())
        .collect::<Result<_, _>>()
        .expect("batches");
    let got: Vec<_> = batches
        .iter()
        .flat_map(|b| b.records().expect("records"))
        .collect::<Result<_, _>>()
        .expect("ok");
    assert_eq!(got.len(), recs.len());
    for (g, want) in got.iter().zip(&recs) {
        assert_eq!(g.key(), want.key.as_deref());
        assert_eq!(g.value(), want.value.as_deref());
        assert_eq!(g.timestamp, want.ts);
    }
}

#[test]
fn restamped_batches_stay_valid() {
    let bytes = build(
        Compression::Lz4,
        &[In {
            ts: 1,
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![],
        }],
    );
    let mut v = bytes.to_vec();
    restamp_producer(&mut v, 99, 4, 17);
    let b = one_batch(Bytes::from(v));
    assert_eq!(
        (b.producer_id(), b.producer_epoch(), b.base_sequence()),
        (99, 4, 17)
    );
    assert_eq!(b.records().expect("records").count(), 1);
}

/// Replays the record_batch fuzz corpus committed in `fuzz/regressions`.
#[test]
fn fuzz_regressions_do_not_panic() {
    crate::test_support::replay_fuzz_corpus("record_batch", |data| {
        fuzz_batches(Bytes::copy_from_slice(data))
    });
}

#[test]
fn crc32c_known_answer() {
    // RFC 3720 (iSCSI), appendix B.4: 32 bytes of zeros, of 0xff.
    assert_eq!(super::crc32c(&[0u8; 32]), 0x8a91_36aa);
    assert_eq!(super::crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(super::crc32c(&[]), 0);
}

proptest! {
    /// The carry-less-multiply CRC against the crc32c crate's SSE 4.2 one,
    /// at lengths around every SIMD block boundary.
    #[test]
    fn crc32c_matches_the_reference(data in proptest::collection::vec(any::<u8>(), 0..3000), start in 0usize..64) {
        let s = &data[start.min(data.len())..];
        prop_assert_eq!(super::crc32c(s), crc32c::crc32c(s));
    }
}
