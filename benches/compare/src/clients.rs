//! One contender's run, in a process of its own (the runner starts
//! `faustus-compare produce|consume ...` once per measurement, so each run's
//! CPU time and peak RSS are that client's alone).
//!
//! Both Rust clients get the same settings, the ones the runner also gives
//! Kafka's ProducerPerformance: `acks=all`, `linger.ms=5`,
//! `batch.size=1000000`, the setting's `compression.type`; values of
//! uppercase letters as ProducerPerformance makes them, no keys. Each prints
//! one JSON line, [`Timed`]: a producer times from its first send to its
//! last delivery report, a consumer from its assignment (offset look-up and
//! first fetch included) to its last record. Connecting is not timed, as the
//! Java tools do not time it either (ConsumerPerformance's fetch time starts
//! once it has joined its group).

use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// What a contender process prints: records handled, value bytes, seconds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Timed {
    /// Records produced or consumed.
    pub records: u64,
    /// Their value bytes.
    pub bytes: u64,
    /// Seconds from the first send or fetch to the last delivery or record.
    pub secs: f64,
}

/// What to produce or consume.
#[derive(Debug, Clone, clap::Args)]
pub struct Work {
    /// `bootstrap.servers`.
    #[arg(long)]
    pub bootstrap: String,
    /// The topic (it exists).
    #[arg(long)]
    pub topic: String,
    /// How many records.
    #[arg(long)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// `compression.type`.
    #[arg(long, default_value = "none")]
    pub compression: String,
}

/// A few thousand random values, reused round robin, as ProducerPerformance
/// does with its payload pool (uppercase letters).
fn payloads(size: usize) -> Vec<bytes::Bytes> {
    let mut rng = rand::rng();
    (0..1000)
        .map(|_| {
            let v: Vec<u8> = (0..size).map(|_| rng.random_range(b'A'..=b'Z')).collect();
            bytes::Bytes::from(v)
        })
        .collect()
}

const WINDOW: usize = 100_000;

/// Faustus producer.
pub async fn faustus_produce(w: &Work) -> Result<Timed, String> {
    use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
    let props = faustus_wire::Properties::new()
        .set("bootstrap.servers", w.bootstrap.as_str())
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", w.compression.as_str());
    let cfg = ProducerConfig::from_properties(&props).map_err(|e| e.to_string())?;
    let p = Producer::connect(cfg).await.map_err(|e| e.to_string())?;
    let values = payloads(w.size);
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
    for i in 0..w.records as usize {
        let rec = ProducerRecord::new(&w.topic).value(values[i % values.len()].clone());
        pending.push_back(p.send(rec).await.map_err(|e| e.to_string())?);
        if pending.len() >= WINDOW {
            for d in pending.drain(..WINDOW / 2) {
                d.await.map_err(|e| format!("delivery: {e}"))?;
            }
        }
    }
    for d in pending {
        d.await.map_err(|e| format!("delivery: {e}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    p.close().await.map_err(|e| e.to_string())?;
    Ok(Timed {
        records: w.records,
        bytes: w.records * w.size as u64,
        secs,
    })
}

/// Faustus consumer: assigns every partition from the beginning.
pub async fn faustus_consume(w: &Work) -> Result<Timed, String> {
    use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
    let props = faustus_wire::Properties::new().set("bootstrap.servers", w.bootstrap.as_str());
    let cfg = ConsumerConfig::from_properties(&props).map_err(|e| e.to_string())?;
    let mut c = Consumer::connect(cfg).await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    c.assign(&w.topic, &[], Offset::Beginning)
        .await
        .map_err(|e| e.to_string())?;
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < w.records {
        for part in c.poll().await.map_err(|e| e.to_string())? {
            for r in part.records() {
                let r = r.map_err(|e| e.to_string())?;
                bytes += r.value().map_or(0, <[u8]>::len) as u64;
                got += 1;
            }
        }
    }
    Ok(Timed {
        records: got,
        bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// librdkafka's configuration: `bootstrap.servers`, then any `key=value`
/// pairs in `CMP_RDKAFKA` (comma separated), for trying its settings (the
/// contender's own settings, set after, win).
fn rd_config(w: &Work) -> rdkafka::ClientConfig {
    let mut cfg = rdkafka::ClientConfig::new();
    cfg.set("bootstrap.servers", &w.bootstrap);
    let extra = std::env::var("CMP_RDKAFKA").unwrap_or_default();
    for kv in extra.split(',').filter(|kv| !kv.is_empty()) {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.set(k, v);
        }
    }
    cfg
}

/// librdkafka's producer (rdkafka's `BaseProducer`, served by a poll loop).
pub fn rdkafka_produce(w: &Work) -> Result<Timed, String> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts failed deliveries.
    struct Count(AtomicU64);
    impl rdkafka::ClientContext for Count {}
    impl ProducerContext for Count {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
            if r.is_err() {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    let p: rdkafka::producer::BaseProducer<Count> = rd_config(w)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", &w.compression)
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Count(AtomicU64::new(0)))
        .map_err(|e| e.to_string())?;
    let values = payloads(w.size);
    let start = Instant::now();
    for i in 0..w.records as usize {
        let mut rec: BaseRecord<'_, (), [u8]> =
            BaseRecord::to(&w.topic).payload(&values[i % values.len()][..]);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
        if i % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    let failed = p.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} deliveries failed"));
    }
    Ok(Timed {
        records: w.records,
        bytes: w.records * w.size as u64,
        secs,
    })
}

/// librdkafka's consumer (rdkafka's `BaseConsumer`), every partition
/// assigned from the beginning.
pub fn rdkafka_consume(w: &Work, partitions: i32) -> Result<Timed, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    // fetch.queue.backoff.ms: librdkafka's default (1000) pauses a
    // partition's fetching for a whole second each time its local queue holds
    // queued.min.messages (100k) records, which with 100-byte values throttles
    // it to a third of its speed; 1 ms is what a user tuning it would set.
    let c: BaseConsumer = rd_config(w)
        .set("group.id", "faustus-compare-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "1")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&w.topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    // Connected before the clock starts, as Faustus's consumer is.
    c.fetch_metadata(Some(&w.topic), Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let (mut got, mut bytes) = (0u64, 0u64);
    let give_up = start + Duration::from_secs(300);
    while got < w.records {
        if Instant::now() > give_up {
            return Err(format!("consumed {got} of {} in 300 s", w.records));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
                got += 1;
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    Ok(Timed {
        records: got,
        bytes,
        secs: start.elapsed().as_secs_f64(),
    })
}
