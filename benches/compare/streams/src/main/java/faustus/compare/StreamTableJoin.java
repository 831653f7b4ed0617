package faustus.compare;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The stream-table join of benches/compare in Kafka Streams: clicks keyed
 * by URL (CMP_TOPIC) left-joined with a table of titles kept from
 * CMP_TABLE ({@code builder.table}), each result written to CMP_OUTPUT with
 * the value {@code CLICK+TITLE} ({@code null} for a URL without a title),
 * as Faustus's examples/joins writes it with
 * JOIN_KIND=stream-table:left. Settings from the environment, as
 * PageViews: CMP_BOOTSTRAP, CMP_APP, CMP_TOPIC, CMP_TABLE, CMP_OUTPUT,
 * CMP_GUARANTEE, CMP_STATE_DIR. Commits every second; two stream threads;
 * the default topology (the table gets a changelog of its own, as
 * Faustus's does). Runs until SIGTERM.
 */
public final class StreamTableJoin {
    private StreamTableJoin() {}

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

        StreamsBuilder builder = new StreamsBuilder();
        KTable<String, String> titles = builder.table(
                env("CMP_TABLE"), Consumed.with(Serdes.String(), Serdes.String()));
        builder.stream(env("CMP_TOPIC"), Consumed.with(Serdes.String(), Serdes.String()))
                .leftJoin(titles, (click, title) -> click + "+" + (title == null ? "null" : title))
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
