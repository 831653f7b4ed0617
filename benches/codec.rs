//! RecordBatch v2 encode and decode, ours against kafka-protocol's codec on
//! the same bytes in the same run; and a Metadata response decoded directly
//! by kafka-protocol against the same decode through
//! `protocol::bounded`, which keeps damaged counts from aborting.
//!
//! `cargo bench --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use faustus_wire::record::{BatchBuilder, Batches, Compression};
use kafka_protocol::records::{
    Compression as KpCompression, Record as KpRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

const RECORDS: usize = 1000;
const TS: i64 = 1_700_000_000_000;

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:06}-").into_bytes();
    v.resize(100, b'a' + (i % 26) as u8);
    v
}

fn our_batch(codec: Compression) -> Bytes {
    let mut b = BatchBuilder::new(codec);
    for i in 0..RECORDS {
        b.append::<&str, &[u8]>(TS + i as i64, Some(&key(i)), Some(&value(i)), &[]);
    }
    b.finish().expect("batch")
}

/// Decodes every record and touches its key and value, as a consumer would.
fn decode_ours(bytes: &Bytes) -> usize {
    let mut n = 0;
    for batch in Batches::new(bytes.clone()) {
        let batch = batch.expect("valid");
        for r in batch.records().expect("records") {
            let r = r.expect("record");
            n += r.key().map_or(0, <[u8]>::len) + r.value().map_or(0, <[u8]>::len);
        }
    }
    n
}

fn decode_theirs(bytes: &Bytes) -> usize {
    let mut buf = bytes.clone();
    let set = RecordBatchDecoder::decode(&mut buf).expect("valid");
    set.records
        .iter()
        .map(|r| r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len))
        .sum()
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let plain = our_batch(Compression::None);
    assert_eq!(decode_ours(&plain), decode_theirs(&plain));
    assert_eq!(
        u64::from(crc32c::crc32c(&plain[21..])),
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &plain[21..])
    );
    g.bench_function(BenchmarkId::new("faustus", "none"), |b| {
        b.iter(|| decode_ours(black_box(&plain)))
    });
    g.bench_function(BenchmarkId::new("kafka-protocol", "none"), |b| {
        b.iter(|| decode_theirs(black_box(&plain)))
    });
    // The share of decoding that is the batch's CRC-32C alone.
    g.bench_function(BenchmarkId::new("crc32c-only", "none"), |b| {
        b.iter(|| crc32c::crc32c(black_box(&plain[21..])))
    });
    g.bench_function(BenchmarkId::new("crc-fast-only", "none"), |b| {
        b.iter(|| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, black_box(&plain[21..])))
    });
    for codec in [
        Compression::Lz4,
        Compression::Zstd,
        Compression::Snappy,
        Compression::Gzip,
    ] {
        let bytes = our_batch(codec);
        g.bench_function(BenchmarkId::new("faustus", codec.name()), |b| {
            b.iter(|| decode_ours(black_box(&bytes)))
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let keys: Vec<Vec<u8>> = (0..RECORDS).map(key).collect();
    let values: Vec<Vec<u8>> = (0..RECORDS).map(value).collect();
    g.bench_function(BenchmarkId::new("faustus", "none"), |b| {
        b.iter(|| {
            let mut batch = BatchBuilder::with_capacity(Compression::None, 128 * 1024);
            for i in 0..RECORDS {
                batch.append::<&str, &[u8]>(TS + i as i64, Some(&keys[i]), Some(&values[i]), &[]);
            }
            black_box(batch.finish().expect("batch"))
        })
    });
    let theirs: Vec<KpRecord> = (0..RECORDS)
        .map(|i| KpRecord {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: TS + i as i64,
            key: Some(Bytes::from(keys[i].clone())),
            value: Some(Bytes::from(values[i].clone())),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: KpCompression::None,
    };
    g.bench_function(BenchmarkId::new("kafka-protocol", "none"), |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(128 * 1024);
            RecordBatchEncoder::encode(&mut out, black_box(&theirs), &opts).expect("encode");
            black_box(out)
        })
    });
    // Recycled buffers, as the producer writes its batches: each batch
    // goes into the buffer of the one before instead of fresh memory
    // (kafka-protocol given the same, a `BytesMut` cleared and reused).
    let mut spare: Vec<u8> = Vec::new();
    g.bench_function(BenchmarkId::new("faustus", "none-recycled"), |b| {
        b.iter(|| {
            let mut batch = BatchBuilder::with_buffer(
                Compression::None,
                std::mem::take(&mut spare),
                128 * 1024,
            );
            for i in 0..RECORDS {
                batch.append::<&str, &[u8]>(TS + i as i64, Some(&keys[i]), Some(&values[i]), &[]);
            }
            let out = batch.finish().expect("batch");
            black_box(&out);
            spare = out.try_into_mut().map(Vec::from).unwrap_or_default();
        })
    });
    let mut reused = BytesMut::with_capacity(128 * 1024);
    g.bench_function(BenchmarkId::new("kafka-protocol", "none-recycled"), |b| {
        b.iter(|| {
            reused.clear();
            RecordBatchEncoder::encode(&mut reused, black_box(&theirs), &opts).expect("encode");
            black_box(&reused);
        })
    });
    for codec in [Compression::Lz4, Compression::Zstd] {
        g.bench_function(BenchmarkId::new("faustus", codec.name()), |b| {
            b.iter(|| {
                let mut batch = BatchBuilder::with_capacity(codec, 128 * 1024);
                for i in 0..RECORDS {
                    batch.append::<&str, &[u8]>(
                        TS + i as i64,
                        Some(&keys[i]),
                        Some(&values[i]),
                        &[],
                    );
                }
                black_box(batch.finish().expect("batch"))
            })
        });
    }
    g.finish();
}

/// A Metadata response of 3 brokers and 100 topics of 6 partitions, each
/// with 3 replicas, at v12 (flexible: compact counts) and v8 (`INT32`
/// counts).
fn metadata_body(version: i16) -> Bytes {
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, MetadataResponse, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut m = MetadataResponse::default();
    m.brokers = (0..3)
        .map(|id| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(id);
            b.host = StrBytes::from_string(format!("broker-{id}.example.com"));
            b.port = 9092;
            b
        })
        .collect();
    m.topics = (0..100)
        .map(|t| {
            let mut topic = MetadataResponseTopic::default();
            topic.name = Some(TopicName(StrBytes::from_string(format!("topic-{t:03}"))));
            topic.partitions = (0..6)
                .map(|p| {
                    let mut part = MetadataResponsePartition::default();
                    part.partition_index = p;
                    part.leader_id = BrokerId(p % 3);
                    part.replica_nodes = (0..3).map(BrokerId).collect();
                    part.isr_nodes = (0..3).map(BrokerId).collect();
                    part
                })
                .collect();
            topic
        })
        .collect();
    let mut out = BytesMut::new();
    m.encode(&mut out, version).expect("encode");
    out.freeze()
}

fn response(c: &mut Criterion) {
    use kafka_protocol::messages::MetadataResponse;
    use kafka_protocol::protocol::Decodable;
    let mut g = c.benchmark_group("metadata_response");
    for version in [8i16, 12] {
        let body = metadata_body(version);
        g.bench_function(BenchmarkId::new("direct", version), |b| {
            b.iter(|| {
                MetadataResponse::decode(&mut black_box(&body).clone(), version).expect("decode")
            })
        });
        g.bench_function(BenchmarkId::new("bounded", version), |b| {
            b.iter(|| {
                faustus_wire::protocol::bounded::decode::<MetadataResponse>(
                    black_box(&body).clone(),
                    version,
                )
                .expect("decode")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode, response);
criterion_main!(benches);
