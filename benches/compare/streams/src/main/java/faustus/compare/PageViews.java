package faustus.compare;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;

/**
 * The page-view count of benches/compare in Kafka Streams: clicks keyed by
 * URL with a JSON count as value, summed per URL into a RocksDB store
 * ({@code click_counts}, changelogged). Settings come from the environment
 * the runner sets: CMP_BOOTSTRAP, CMP_APP (application.id), CMP_TOPIC,
 * CMP_GUARANTEE ({@code at_least_once} or {@code exactly_once}, which maps to
 * {@code exactly_once_v2}), CMP_STATE_DIR, and optionally
 * CMP_STREAMS_CACHE_BYTES (the record cache size). Commits every second, as the
 * Faustus worker does; two stream threads, one per core. Runs until SIGTERM.
 */
public final class PageViews {
    private PageViews() {}

    private static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalArgumentException("missing environment variable " + name);
        }
        return v;
    }

    public static void main(String[] args) throws InterruptedException {
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("CMP_BOOTSTRAP"));
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, env("CMP_APP"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, env("CMP_STATE_DIR"));
        boolean eos = env("CMP_GUARANTEE").equals("exactly_once");
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
                eos ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 2);
        // CMP_STREAMS_CACHE_BYTES=0 turns the record cache off: one changelog
        // record per input record, as Faustus and Faust write.
        String cache = System.getenv("CMP_STREAMS_CACHE_BYTES");
        if (cache != null && !cache.isEmpty()) {
            props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, Long.parseLong(cache));
        }

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(env("CMP_TOPIC"), Consumed.with(Serdes.String(), Serdes.String()))
                .mapValues(v -> Long.parseLong(v.trim()))
                .groupByKey(Grouped.with(Serdes.String(), Serdes.Long()))
                .reduce(Long::sum, Materialized.as("click_counts"));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();
        stopped.await();
    }
}
