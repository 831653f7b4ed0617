package faustus.compare;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.EmitStrategy;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindowedKStream;
import org.apache.kafka.streams.kstream.TimeWindows;

/**
 * The windowed count of benches/compare in Kafka Streams: clicks keyed by
 * URL counted per 1-second tumbling window with no grace
 * ({@code windowedBy(TimeWindows.ofSizeAndGrace(1s, 0)).count()}), results
 * written to CMP_OUTPUT keyed {@code KEY@START/END} with the count as text,
 * as Faustus's examples/windowed_counts writes them. Settings from the
 * environment, as PageViews: CMP_BOOTSTRAP, CMP_APP, CMP_TOPIC, CMP_OUTPUT,
 * CMP_GUARANTEE, CMP_STATE_DIR, optionally CMP_STREAMS_CACHE_BYTES, and
 * CMP_EMIT={@code final} for {@code EmitStrategy.onWindowClose()}. Commits
 * every second; two stream threads. Runs until SIGTERM.
 */
public final class WindowedCounts {
    private WindowedCounts() {}

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
        String cache = System.getenv("CMP_STREAMS_CACHE_BYTES");
        if (cache != null && !cache.isEmpty()) {
            props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, Long.parseLong(cache));
        }

        StreamsBuilder builder = new StreamsBuilder();
        TimeWindowedKStream<String, String> windowed = builder
                .stream(env("CMP_TOPIC"), Consumed.with(Serdes.String(), Serdes.String()))
                .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
                .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofSeconds(1), Duration.ZERO));
        if ("final".equals(System.getenv("CMP_EMIT"))) {
            windowed = windowed.emitStrategy(EmitStrategy.onWindowClose());
        }
        windowed.count(Materialized.as("counts"))
                .toStream()
                .map((k, n) -> KeyValue.pair(
                        k.key() + "@" + k.window().start() + "/" + k.window().end(),
                        Long.toString(n)))
                .to(env("CMP_OUTPUT"), Produced.with(Serdes.String(), Serdes.String()));

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
