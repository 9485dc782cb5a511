package io.heapballoon.agent;

import java.io.IOException;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryPoolMXBean;
import java.lang.management.MemoryUsage;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;

/**
 * Owns what Parallel (PS) needs from a balloon in its old generation, apart from the law's H.
 *
 * <p>Before each young collection PS compares its <em>padded promotion estimate</em> (the
 * average bytes a young collection promoted, plus {@code PromotedPadding} (3) deviations) with
 * the old generation's free space; when the estimate is larger it runs a full collection
 * instead. Only young collections update the estimate, so once a balloon leaves less free space
 * than that, every collection is a full one from then on (benchmarks/parallel_all_full.py). Two
 * rules follow:
 * <ul>
 *   <li>{@link #reserveBytes}: the balloon leaves the old generation that estimate free, plus
 *       one chunk.</li>
 *   <li>Many chunks never reach the old generation through a young collection, which would count
 *       them as promoted (8 MiB chunks raised the estimate from ~125 to ~180 MiB). A tick allocates
 *       at most what eden has free ({@link #edenRoomBytes}), and {@link #grew} then asks for a
 *       full collection, which moves them into the old generation and is not counted, unless the
 *       next young collection can absorb them ({@link #mustPlace}).</li>
 * </ul>
 * The estimate: the accurate path is the JVM's own counter {@code sun.gc.policy.avgPromotedPaddedAvg},
 * read from its perf-data file (/tmp/hsperfdata_USER/PID, mapped once). Without it
 * (-XX:-UsePerfData, -XX:+PerfDisableSharedMem) the agent computes the same average from the
 * young collections it sees (which miss those before it started), and says so once in the log.
 * Agent thread, except {@link #young} (GC-notification thread).
 */
final class ParallelOld {
    static final String COUNTER = "sun.gc.policy.avgPromotedPaddedAvg";
    /** hsperfdata prologue: magic, byte order at byte 4, entry offset and count at bytes 24 and 28. */
    static final int MAGIC = 0xcafec0c0;

    private final boolean parallel;
    private final MemoryPoolMXBean eden;
    private final MemoryPoolMXBean old;
    private final GarbageCollectorMXBean scavenge;
    private final GarbageCollectorMXBean full;
    private boolean firstFullCompactionsTaken;
    /** The mapped perf-data file and the offset of the counter's value; null when unreadable. */
    private final ByteBuffer perf;
    private final int valueOffset;
    private final double weight;
    private final double padding;
    // The fallback estimate (GC-notification thread writes, agent thread reads).
    private double average;
    private double deviation;
    private long samples;

    ParallelOld(HeapStats stats) {
        this(stats.gc);
    }

    ParallelOld(String gc) {
        parallel = "Parallel".equals(gc);
        weight = HeapStats.vmOptionLong("AdaptiveSizePolicyWeight", 10) / 100.0;
        padding = HeapStats.vmOptionLong("PromotedPadding", 3);
        eden = named(ManagementFactory.getMemoryPoolMXBeans(), MemoryPoolMXBean::getName, "PS Eden Space");
        old = named(ManagementFactory.getMemoryPoolMXBeans(), MemoryPoolMXBean::getName, "PS Old Gen");
        scavenge = named(ManagementFactory.getGarbageCollectorMXBeans(), GarbageCollectorMXBean::getName, "PS Scavenge");
        full = named(ManagementFactory.getGarbageCollectorMXBeans(), GarbageCollectorMXBean::getName, "PS MarkSweep");
        ByteBuffer buffer = null;
        int offset = -1;
        if (parallel) {
            Path file = Paths.get("/tmp", "hsperfdata_" + System.getProperty("user.name"),
                    Long.toString(ProcessHandle.current().pid()));
            try (FileChannel channel = FileChannel.open(file, StandardOpenOption.READ)) {
                buffer = channel.map(FileChannel.MapMode.READ_ONLY, 0, channel.size());
                offset = findLong(buffer, COUNTER);
            } catch (IOException | RuntimeException e) {
                offset = -1;
            }
            // JDK 17 to 22 scavenge before every full collection of Parallel (ScavengeBeforeFullGC, on by default,
            // removed in 23): that young collection promotes the chunks a placing collection means to move, and counts them
            // (36 chunks of 8 MiB raised the estimate from 0 to 106 MiB on JDK 17; with the option off, 0).
            // heapballoon run turns it off; an attached agent cannot, and says what it costs.
            if (HeapStats.vmOptionBoolean("ScavengeBeforeFullGC", false)) {
                Log.info("Parallel with -XX:+ScavengeBeforeFullGC (the default before JDK 23): the balloon's chunks are "
                        + "counted as promoted, which can make every collection a full one; start the JVM with "
                        + "-XX:-ScavengeBeforeFullGC (heapballoon run does)");
            }
            // Every System.gc() of Parallel compacts fully (UseMaximumCompactionOnSystemGC, on by default): it
            // slides each chunk over whatever died below it and rewrites its released pages, 0.4-1.3 s for
            // 400 MiB on JDK 17; without it, the dense prefix keeps the chunks in place (15-60 ms).
            if (HeapStats.vmOptionBoolean("UseMaximumCompactionOnSystemGC", false)) {
                Log.info("Parallel with -XX:+UseMaximumCompactionOnSystemGC (the default): the agent's placing and "
                        + "probing collections slide the balloon; start the JVM with "
                        + "-XX:-UseMaximumCompactionOnSystemGC (heapballoon run does)");
            }
            if (offset < 0) {
                Log.info("Parallel's promotion estimate is not readable from " + file + " (-XX:-UsePerfData?): "
                        + "using the agent's own, from the young collections it sees");
            }
        }
        perf = offset >= 0 ? buffer : null;
        valueOffset = offset;
    }

    /** The bean whose name is {@code wanted}, or null (not Parallel). */
    private static <T> T named(java.util.List<T> beans, java.util.function.Function<T, String> name, String wanted) {
        for (T bean : beans) {
            if (name.apply(bean).equals(wanted)) {
                return bean;
            }
        }
        return null;
    }

    /**
     * The offset of the value of the long counter {@code name} in a perf-data buffer, -1 if absent.
     * Each entry: length, name offset, vector length (ints), type, flags, units, variability
     * (bytes), data offset (int); names are NUL-terminated ASCII.
     */
    static int findLong(ByteBuffer perf, String name) {
        ByteBuffer b = perf.duplicate();
        if (b.capacity() < 32 || b.order(ByteOrder.BIG_ENDIAN).getInt(0) != MAGIC) {
            return -1;
        }
        b.order(b.get(4) == 1 ? ByteOrder.LITTLE_ENDIAN : ByteOrder.BIG_ENDIAN);
        byte[] wanted = (name + "\0").getBytes(StandardCharsets.US_ASCII);
        int entry = b.getInt(24);
        for (int i = b.getInt(28); i > 0 && entry > 0 && entry + 20 <= b.capacity(); i--) {
            int length = b.getInt(entry);
            int nameAt = entry + b.getInt(entry + 4);
            boolean match = b.getInt(entry + 8) == 0 && b.get(entry + 12) == 'J' && nameAt + wanted.length <= b.capacity();
            for (int k = 0; match && k < wanted.length; k++) {
                match = b.get(nameAt + k) == wanted[k];
            }
            if (match) {
                return entry + b.getInt(entry + 16);
            }
            if (length <= 0) {
                return -1;
            }
            entry += length;
        }
        return -1;
    }

    boolean active() {
        return parallel;
    }

    /** PS's padded promotion estimate in bytes (its counter, else the agent's own); 0 if not Parallel. */
    long estimateBytes() {
        if (!parallel) {
            return 0;
        }
        if (perf != null) {
            ByteBuffer b = perf.duplicate().order(perf.get(4) == 1 ? ByteOrder.LITTLE_ENDIAN : ByteOrder.BIG_ENDIAN);
            return Math.max(0, b.getLong(valueOffset));
        }
        return fallbackEstimateBytes();
    }

    /** The agent's own padded average of the promotions it saw. */
    synchronized long fallbackEstimateBytes() {
        return (long) (average + padding * deviation);
    }

    /** The old-generation space a balloon must leave free: the estimate plus one chunk; 0 if not Parallel. */
    long reserveBytes(long chunkBytes) {
        return parallel ? estimateBytes() + chunkBytes : 0;
    }

    /**
     * How much a tick may allocate: eden's free space less {@code marginBytes} (what the
     * application allocates meanwhile), so no young collection runs before {@link #grew} places them.
     * Unlimited if not Parallel.
     */
    long edenRoomBytes(long marginBytes) {
        if (!parallel || eden == null) {
            return Long.MAX_VALUE;
        }
        MemoryUsage u = eden.getUsage();
        return Math.max(0, u.getCommitted() - u.getUsed() - marginBytes);
    }

    /**
     * True when growing from {@code balloonBytes} to {@code maxBytes} is too small to be worth its
     * placing collection: while this reserve bounds the balloon (not the target's {@code limitBytes},
     * nor the law's {@code lawReserveBytes}, H + H/4), growth under a sixteenth of the largest
     * balloon waits. The estimate decays a little with every young collection, and growing by a
     * chunk each time cost 16 full collections in 20 s. Always false elsewhere.
     */
    boolean tooSmallToPlace(long balloonBytes, long maxBytes, long limitBytes, long chunkBytes, long lawReserveBytes) {
        return parallel && maxBytes < limitBytes && reserveBytes(chunkBytes) > lawReserveBytes
                && maxBytes - balloonBytes < Math.max(chunkBytes, maxBytes / 16);
    }

    /** A promotion this many times the average is a burst: the application's live set is growing fast. */
    static final int BURST_FACTOR = 4;

    /**
     * GC-notification thread, before {@link #young}: why, when a young collection promoted a burst
     * ({@value #BURST_FACTOR} × the usual and more than a chunk; the usual is the larger of the average
     * promotion and a second of the peak promotion rate {@code promoPeakBytesPerS} (Headroom's P): at
     * 1.6 GiB/s, where the live set turns over, P is 100-280 MiB/s, and a rule on the average alone
     * dropped the balloon five times a minute) and left the old generation less than
     * twice that free, so the next one may not fit. Parallel then fails the promotion, and the full
     * collections that follow come back to back: each slides the chunks over what died below them (~1 s
     * for 400 MiB), the notification that would give the balloon back waits, and the JVM may throw
     * OutOfMemoryError (JDK 17, CI, a 200 → 700 MiB live set in under a second: likely the GC overhead limit).
     * Null otherwise.
     */
    synchronized String burst(String collection, long promotedBytes, long oldFreeBytes, long chunkBytes,
                              double promoPeakBytesPerS) {
        double norm = Math.max(average, promoPeakBytesPerS); // per collection, or a second of the peak rate
        boolean burst = parallel && samples > 0 && promotedBytes > chunkBytes && promotedBytes > BURST_FACTOR * norm
                && oldFreeBytes < 2 * promotedBytes;
        return burst ? String.format("%s promoted %d MiB (%d MiB usual), %d MiB left free: the live set is growing",
                collection, promotedBytes >> 20, (long) norm >> 20, oldFreeBytes >> 20) : null;
    }

    /**
     * True when the chunks allocated since the last collection ({@code pendingBytes}) are too many to
     * leave to the next young collection, which would promote them and count them in PS's estimate;
     * a placing collection ({@link #grew}) must move them now. A young collection that promotes S
     * moves PS's average by w (S − average) and its deviation by up to w |S − average|, so the padded estimate rises by up
     * to (1 + padding) w S, where w is the weight, or 1/n for the n-th young collection while that is
     * more. Left to that collection only while the estimate after it, with the application's usual
     * promotion (the estimate again) on top, stays within the old generation's free space after it:
     * 2 × estimate + (1 + (1 + padding) w) × pending ≤ free − pending. Growth in steps of a few
     * chunks then costs no full collection, only the first, large inflation does (each placing
     * collection slides the chunks over what died below them: 0.4 to 0.8 s at 400 MiB on JDK 17).
     */
    boolean mustPlace(long pendingBytes, long oldFreeBytes, long youngCollections) {
        if (!parallel || pendingBytes <= 0) {
            return false;
        }
        double w = Math.max(weight, 1.0 / (youngCollections + 1));
        double after = 2.0 * estimateBytes() + (2 + (1 + padding) * w) * pendingBytes;
        return after > oldFreeBytes;
    }

    /** The old generation's free space (its maximum less what it holds); 0 if unknown or not Parallel. */
    long oldFreeBytes() {
        if (old == null) {
            return 0;
        }
        MemoryUsage u = old.getUsage();
        return Math.max(0, Math.max(u.getMax(), u.getCommitted()) - u.getUsed());
    }

    /** The young collections so far (PS Scavenge's count); 0 if unknown. */
    long youngCollections() {
        return scavenge != null ? Math.max(0, scavenge.getCollectionCount()) : 0;
    }

    /**
     * Before the first chunk: the JVM's first {@code HeapFirstMaximumCompactionCount} (3; JDK 17 to 24)
     * full collections compact fully, whatever the cause, and with a balloon in the old generation
     * each slid it (0.4-1.0 s at 300-360 MiB on JDK 17). Taken now, while the balloon is empty, they
     * cost ~50 ms each, once per JVM. Agent thread, each inflating tick; acts at the first one that
     * grows ({@code growing}) and never again.
     */
    void takeFirstFullCompactions(boolean growing) {
        if (!parallel || !growing || firstFullCompactionsTaken) {
            return;
        }
        firstFullCompactionsTaken = true;
        long due = HeapStats.vmOptionLong("HeapFirstMaximumCompactionCount", 0) - (full != null ? full.getCollectionCount() : 0);
        long t0 = System.nanoTime();
        for (long i = 0; i < due; i++) {
            System.gc();
        }
        if (due > 0) {
            Log.info("Parallel: took the JVM's first " + due + " full collections before the balloon (they compact fully), "
                    + (System.nanoTime() - t0) / 1_000_000 + " ms");
        }
    }

    /**
     * Agent thread: the balloon grew this tick by chunks still in eden ({@code pendingBytes} since the last
     * collection). Places them if the next young collection could not absorb them ({@link #mustPlace}),
     * then releases their pages: after the move, so the collection moved resident pages cheaply.
     */
    void grew(Balloon balloon, long pendingBytes) {
        if (mustPlace(pendingBytes, oldFreeBytes(), youngCollections())) {
            long t0 = System.nanoTime();
            System.gc(); // a placing collection: the new chunks move into the old generation, uncounted
            Log.debug("placing collection took " + (System.nanoTime() - t0) / 1_000_000 + " ms");
            balloon.refreshAddresses(); // now, not when the notification comes: the next state must be true
        }
        balloon.releasePending();
    }


    /**
     * GC-notification thread: a young collection promoted {@code bytes}; the fallback estimate
     * follows PS's own (AdaptivePaddedAverage: the first samples weigh 1/n until that is below
     * the weight).
     */
    synchronized void young(long bytes) {
        double x = Math.max(0, bytes);
        samples++;
        double w = Math.max(weight, 1.0 / samples);
        average = (1 - w) * average + w * x;
        deviation = (1 - w) * deviation + w * Math.abs(x - average);
    }
}
