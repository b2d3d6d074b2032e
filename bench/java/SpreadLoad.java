// A fixed total rate of records spread round-robin over every partition of many topics: the load of
// bench.partitions. Kafka's own ProducerPerformance writes one topic, and the harness's Python producer could not
// keep up with one-record batches to 10,000 partitions on a 2-core box (its records expired in its accumulator).
//
// Run as a single source file (Java 11+): java -cp 'kafka/libs/*' SpreadLoad.java BOOTSTRAP TOPICS PARTITIONS
// RECORD_BYTES BYTES_PER_SECOND SECONDS [DRAIN_SECONDS [PRODUCERS]], TOPICS comma-separated. After the last send
// it waits at most DRAIN_SECONDS (default 60) for acknowledgements, so a broker that takes less than is asked still
// gives a result: the last line printed is "RESULT {json}" (MB: 10^6 bytes, as everywhere in the harness).

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class SpreadLoad {
    private static void refuse(Map<String, AtomicLong> refusedBy, Exception error) {
        refusedBy.computeIfAbsent(error.getClass().getSimpleName(), k -> new AtomicLong()).incrementAndGet();
    }

    private static long refusedCount(Map<String, AtomicLong> refusedBy) {
        long total = 0;
        for (AtomicLong count : refusedBy.values()) {
            total += count.get();
        }
        return total;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String[] topics = args[1].split(",");
        int partitions = Integer.parseInt(args[2]);
        int size = Integer.parseInt(args[3]);
        double bytesPerSecond = Double.parseDouble(args[4]);
        double seconds = Double.parseDouble(args[5]);
        double drainSeconds = args.length > 6 ? Double.parseDouble(args[6]) : 60.0;
        int producerCount = args.length > 7 ? Integer.parseInt(args[7]) : 1;
        if (producerCount < 1) {
            throw new IllegalArgumentException("PRODUCERS must be at least 1, not " + producerCount);
        }

        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("acks", "all");
        props.put("linger.ms", "50");
        // Each partition's batch holds a record or two (0.5 records a second per partition at 5 MB/s over 10,000):
        // the producer reserves batch.size of buffer.memory for every open batch, and 64 KiB batches exhausted it.
        props.put("batch.size", "4096");
        props.put("buffer.memory", String.valueOf((256L << 20) / producerCount));
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());

        byte[] value = new byte[size];
        new Random().nextBytes(value);
        double perSecond = bytesPerSecond / size;
        long total = (long) (seconds * perSecond);
        long targets = (long) topics.length * partitions;
        AtomicLong acked = new AtomicLong();
        AtomicLong lastAckAt = new AtomicLong();
        Map<String, AtomicLong> refusedBy = new ConcurrentHashMap<>();
        long sent = 0;
        long unanswered;
        StringBuilder reasons = new StringBuilder();
        long began = System.nanoTime();
        long nextNote = began + 5_000_000_000L;
        // Each producer writes a share of the topics. A producer's sender wakes for every new batch and then checks
        // every partition it holds for one that is ready: with one-record batches over 10,000 partitions that
        // check is most of its CPU, and splitting the partitions over producers divides it.
        List<KafkaProducer<byte[], byte[]>> producers = new ArrayList<>();
        for (int i = 0; i < producerCount; i++) {
            producers.add(new KafkaProducer<>(props));
        }
        try {
            while (sent < total) {
                long now = System.nanoTime();
                long due = Math.min((long) ((now - began) / 1e9 * perSecond), total);
                for (; sent < due; sent++) {
                    // The same order as the harness's Python producer: every topic's partition 0, then 1, ...
                    int index = (int) (sent % targets);
                    KafkaProducer<byte[], byte[]> producer = producers.get(index % topics.length % producerCount);
                    ProducerRecord<byte[], byte[]> record =
                            new ProducerRecord<>(topics[index % topics.length], index / topics.length, null, value);
                    try {
                        producer.send(record, (metadata, error) -> {
                            if (error == null) {
                                acked.incrementAndGet();
                                lastAckAt.set(System.nanoTime());
                            } else {
                                refuse(refusedBy, error);
                            }
                        });
                    } catch (KafkaException error) {
                        // The accumulator stayed full for max.block.ms: the brokers take less than is asked.
                        refuse(refusedBy, error);
                    }
                }
                if (now >= nextNote) {
                    System.out.printf("sent %d of %d, acknowledged %d%n", sent, total, acked.get());
                    nextNote = now + 5_000_000_000L;
                }
                Thread.sleep(10);
            }
            long drainUntil = System.nanoTime() + (long) (drainSeconds * 1e9);
            while (acked.get() + refusedCount(refusedBy) < sent && System.nanoTime() < drainUntil) {
                long now = System.nanoTime();
                if (now >= nextNote) {
                    System.out.printf("draining: acknowledged %d of %d%n", acked.get(), sent);
                    nextNote = now + 5_000_000_000L;
                }
                Thread.sleep(50);
            }
            unanswered = sent - acked.get() - refusedCount(refusedBy);
            // Before the close below, which fails every send still waiting and would count it as refused.
            for (Map.Entry<String, AtomicLong> reason : new TreeMap<>(refusedBy).entrySet()) {
                reasons.append(reasons.length() == 0 ? "" : ", ")
                        .append('"').append(reason.getKey()).append("\": ").append(reason.getValue().get());
            }
        } finally {
            // Whatever is still unanswered is abandoned: the result says how much.
            for (KafkaProducer<byte[], byte[]> producer : producers) {
                producer.close(java.time.Duration.ZERO);
            }
        }
        long ackedAt = lastAckAt.get() == 0 ? System.nanoTime() : lastAckAt.get();
        double took = (ackedAt - began) / 1e9;
        long refused = sent - acked.get() - unanswered;
        System.out.printf(
                Locale.ROOT,
                "RESULT {\"records\": %d, \"acknowledged\": %d, \"refused\": %d, \"refused_by\": {%s}, "
                        + "\"unanswered_after_drain\": %d, \"seconds\": %.1f, \"achieved_mb_per_s\": %.2f, "
                        + "\"producer\": \"java\"}%n",
                sent, acked.get(), refused, reasons, unanswered, took, acked.get() * (double) size / took / 1e6);
    }
}
