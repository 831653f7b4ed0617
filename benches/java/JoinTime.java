// Kafka's own consumer in the group-join benchmark (benches/group_join.rs
// runs it next to ours, through `testcontainers/kafka tool`, which starts it
// with Java's single-file source launcher on the broker's jars).
//
// Per round: two members of a fresh group consume a 12-partition topic until
// they own all 12 partitions and both have records; then a third member
// joins. Printed: the milliseconds from the third member's subscribe to its
// first records, one `join_ms N` line per round.
//
// Usage: JoinTime.java BOOTSTRAP TOPIC classic|consumer ROUNDS

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class JoinTime {
    static final Duration POLL = Duration.ofMillis(100);
    /** Work per poll, as in the Rust side: keeps the topic from running dry. */
    static final long WORK_MS = 10;

    static Properties props(String bootstrap, String group, String protocol) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("group.id", group);
        p.put("group.protocol", protocol);
        if (protocol.equals("classic")) {
            p.put("partition.assignment.strategy",
                "org.apache.kafka.clients.consumer.CooperativeStickyAssignor");
        }
        p.put("auto.offset.reset", "earliest");
        p.put("max.poll.records", "100");
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        return p;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        String protocol = args[2];
        int rounds = Integer.parseInt(args[3]);
        for (int r = 0; r < rounds; r++) {
            String group = "join-java-" + protocol + "-" + r + "-" + System.nanoTime();
            AtomicBoolean stop = new AtomicBoolean();
            AtomicInteger[] owned = {new AtomicInteger(), new AtomicInteger()};
            AtomicLong[] seen = {new AtomicLong(), new AtomicLong()};
            List<Thread> members = new ArrayList<>();
            for (int m = 0; m < 2; m++) {
                final int me = m;
                Thread t = new Thread(() -> {
                    try (KafkaConsumer<byte[], byte[]> c =
                             new KafkaConsumer<>(props(bootstrap, group, protocol))) {
                        c.subscribe(List.of(topic));
                        while (!stop.get()) {
                            ConsumerRecords<byte[], byte[]> recs = c.poll(POLL);
                            seen[me].addAndGet(recs.count());
                            owned[me].set(c.assignment().size());
                            Thread.sleep(WORK_MS);
                        }
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                });
                t.start();
                members.add(t);
            }
            // Settled: all 12 partitions owned, both members consuming.
            long base0 = -1, base1 = -1;
            while (true) {
                if (owned[0].get() + owned[1].get() == 12 && owned[0].get() > 0
                        && owned[1].get() > 0) {
                    if (base0 < 0) {
                        base0 = seen[0].get();
                        base1 = seen[1].get();
                    } else if (seen[0].get() > base0 && seen[1].get() > base1) {
                        break;
                    }
                }
                Thread.sleep(20);
            }
            long t0 = System.nanoTime();
            try (KafkaConsumer<byte[], byte[]> third =
                     new KafkaConsumer<>(props(bootstrap, group, protocol))) {
                third.subscribe(List.of(topic));
                while (third.poll(POLL).isEmpty()) {
                    // joining
                }
                long t1 = System.nanoTime();
                System.out.println("join_ms " + (t1 - t0) / 1_000_000.0);
            }
            stop.set(true);
            for (Thread t : members) {
                t.join();
            }
        }
    }
}
