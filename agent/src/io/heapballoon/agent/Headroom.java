package io.heapballoon.agent;

import java.lang.management.ManagementFactory;

/**
 * Owns the headroom H: the free heap the balloon leaves the collector, and the rates it follows.
 *
 * <p>H = max(H<sub>base</sub>, need, G1's to-space reserve) + learned, where H<sub>base</sub> is the driver's figure (or
 * the option, or max(64 MiB, 5 % of the heap)), and need is what this collector needs between
 * two collections that free memory, at the application's allocation rate R (bytes allocated by
 * every thread but the agent's, {@code ThreadMXBean.getTotalThreadAllocatedBytes}) and the
 * old generation's growth rate P (bytes promoted by young collections):
 * <ul>
 *   <li>G1: the young generation must hold {@value #G1_YOUNG_MS} ms of allocation, plus the
 *       old-generation growth of {@value #G1_OLD_MS} ms (what promoted data fills while a
 *       concurrent cycle and its mixed collections run).</li>
 *   <li>ZGC and Shenandoah: the allocation during {@value #CONCURRENT_CYCLES} concurrent cycles
 *       (the median of the last {@value #CYCLES_KEPT} cycle times; one cycle running, the next one's
 *       trigger margin).</li>
 *   <li>Serial and Parallel: the balloon lives in the old generation, and their young generation is
 *       fixed, so the need is the promotion of {@value #FULL_INTERVAL_MS} ms: full collections
 *       come at most that often.</li>
 * </ul>
 * The rates are decaying peaks (half-life {@value #DECAY_HALF_LIFE_MS} ms): a burst raises the
 * headroom at once, and it comes down slowly, so a quiet second does not let the balloon take
 * back what the next busy second needs. When the JVM clears the balloon's soft references (it was
 * one step from an OutOfMemoryError), the learned part grows by half the headroom then in effect;
 * when the GC-cost rule gives memory back, by what it gave back. Up to an eighth of the heap,
 * halving every {@value #LEARNED_HALF_LIFE_MS} ms. docs/agent.md has the law and why these constants.
 */
final class Headroom {
    /** Rates are measured over this long: a collector's need follows what lasts over its cycles, not one burst. */
    static final long RATE_SAMPLE_MS = 2000;
    /** JVM start-up (loading data, a load spike) is not the steady state the headroom is for. */
    static final long STARTUP_MS = 5000;
    static final long DECAY_HALF_LIFE_MS = 30_000;
    static final long G1_YOUNG_MS = 100;
    static final long G1_OLD_MS = 250;
    static final double CONCURRENT_CYCLES = 3.0;
    /** The cycle time is the median of this many recent cycles: one slow cycle on a busy machine is not the norm. */
    static final int CYCLES_KEPT = 9;
    static final long FULL_INTERVAL_MS = 250;
    static final long LEARNED_HALF_LIFE_MS = 600_000;
    /**
     * Shenandoah's heuristics start a cycle from the free heap and the allocation rate they saw:
     * a balloon that took 79 MiB in one tick at 1.6 GiB/s (JDK 25) emptied the heap faster than
     * any trigger could follow, the application's next allocation failed, and the degenerated
     * collection cleared every soft reference. 8 MiB a tick (160 MiB/s, 512 MiB in ~3 s) is a
     * tenth of such an application's own rate.
     */
    static final long SHENANDOAH_INFLATE_BYTES_PER_TICK = 8L << 20;

    private final HeapStats stats;
    private final Options options;
    private final com.sun.management.ThreadMXBean threads;
    private volatile long driverBytes;
    // Agent thread only.
    private long lastAllocatedBytes = -1;
    private long lastSampleMs;
    private long promotedSinceSampleBytes;
    // Decaying peaks, written by the agent thread (rates) and the GC-notification thread (cycle).
    private volatile double allocBytesPerS;
    private volatile double promoBytesPerS;
    private volatile double cycleMs;
    private final long[] cyclesMs = new long[CYCLES_KEPT];
    private int cycleCount;
    private volatile long learnedBytes;
    /** G1 keeps G1ReservePercent (10 %) of the heap free as to-space; the balloon leaves it that at least. */
    private final long g1ReserveBytes;
    /**
     * Shenandoah's trigger zone: it starts a cycle when its free set falls below
     * ShenandoahMinFreeThreshold (10 %) of the heap, and that free set excludes ShenandoahEvacReserve
     * (5 %), kept for evacuation. Heap used above C minus this is where only a running cycle saves the
     * application's next allocation (see inflateMarginBytes).
     */
    private final long shenandoahTriggerBytes;
    private volatile long learnedAtMs;

    Headroom(HeapStats stats, Options options) {
        this.stats = stats;
        this.options = options;
        this.g1ReserveBytes = "G1".equals(stats.gc) ? stats.maxBytes() * HeapStats.vmOptionLong("G1ReservePercent", 10) / 100 : 0;
        this.shenandoahTriggerBytes = stats.shenandoah() ? stats.maxBytes()
                * (HeapStats.vmOptionLong("ShenandoahMinFreeThreshold", 10) + HeapStats.vmOptionLong("ShenandoahEvacReserve", 5)) / 100 : 0;
        java.lang.management.ThreadMXBean bean = ManagementFactory.getThreadMXBean();
        com.sun.management.ThreadMXBean t = bean instanceof com.sun.management.ThreadMXBean
                ? (com.sun.management.ThreadMXBean) bean : null;
        this.threads = t != null && t.isThreadAllocatedMemorySupported() ? t : null;
        if (threads != null && !threads.isThreadAllocatedMemoryEnabled()) {
            threads.setThreadAllocatedMemoryEnabled(true);
        }
    }

    void setDriverBytes(long bytes) {
        driverBytes = bytes;
    }

    /** The static part: the driver's headroom, else the option, else max(64 MiB, 5 % of the heap). */
    long baseBytes() {
        if (driverBytes > 0) {
            return driverBytes;
        }
        if (options.headroomBytes >= 0) {
            return options.headroomBytes;
        }
        // 5% of the heap, at least 64 MiB, but at most an eighth of a small heap (128 MiB keeps
        // 16 MiB; 64 MiB there left Serial's old generation no room for any balloon).
        // driver/policy.py headroom_bytes computes the same.
        long max = stats.maxBytes();
        return Math.max(Math.min(64L << 20, max / 8), max / 20);
    }

    /** What this collector needs between collections at the current rates (see the class doc). */
    long needBytes() {
        return needBytes(stats.gc, allocBytesPerS, promoBytesPerS, cycleMs);
    }

    static long needBytes(String gc, double allocBytesPerS, double promoBytesPerS, double cycleMs) {
        switch (gc) {
            case "G1":
                return (long) (allocBytesPerS * G1_YOUNG_MS / 1000 + promoBytesPerS * G1_OLD_MS / 1000);
            case "ZGC":
            case "Shenandoah":
                return (long) (allocBytesPerS * CONCURRENT_CYCLES * cycleMs / 1000);
            default:
                return (long) (promoBytesPerS * FULL_INTERVAL_MS / 1000);
        }
    }

    long bytes() {
        return Math.max(Math.max(baseBytes(), needBytes()), g1ReserveBytes) + learnedBytes();
    }

    /**
     * Region-based collectors: the heap that must stay free after a balloon chunk is allocated. G1
     * and ZGC: H/2, and for G1 at least its to-space reserve (a balloon that took it left a young
     * collection no room to evacuate into on JDK 21 at 100 MiB/s; the full collection after it
     * cleared the balloon). Shenandoah: H/2 above its trigger zone, so the balloon never takes the
     * heap to where Shenandoah starts a cycle; only the application's allocations get it there, and
     * the cycle then has the whole zone to run in. Its free set counts the tails of partly filled
     * regions (JDK 25: 64 KiB objects leave 65424 B of each 512 KiB region, 87 % of the free set), so
     * free heap near the trigger may hold no empty region. The old margin (max(H/2, 2 H<sub>base</sub>),
     * 128 MiB, inside the 154 MiB zone) let a chunk take the last empty regions; on a starved machine
     * the application's next allocation then failed before the cycle began, and that degenerated
     * collection ("Outside of Cycle") cleared every soft reference.
     */
    long inflateMarginBytes() {
        return inflateMarginBytes(bytes(), baseBytes(), g1ReserveBytes, shenandoahTriggerBytes);
    }

    /**
     * True while heap use is in the first quarter of its fill, from the live set (where a cycle
     * leaves it) to the inflate margin: where an empty Shenandoah balloon may start (Controller).
     */
    static boolean inFirstQuarterOfFill(long usedBytes, long liveBytes, long maxBytes, long marginBytes) {
        return usedBytes <= liveBytes + (maxBytes - marginBytes - liveBytes) / 4;
    }

    static long inflateMarginBytes(long headroomBytes, long baseBytes, long g1ReserveBytes, long shenandoahTriggerBytes) {
        if (shenandoahTriggerBytes > 0) {
            return Math.max(2 * baseBytes, shenandoahTriggerBytes + headroomBytes / 2);
        }
        return Math.max(headroomBytes / 2, g1ReserveBytes);
    }

    /** The learned part, halving every LEARNED_HALF_LIFE_MS: a lesson from a busy hour fades. */
    long learnedBytes() {
        long learned = learnedBytes;
        return learned == 0 ? 0 : (long) decayed(learned, System.currentTimeMillis() - learnedAtMs, LEARNED_HALF_LIFE_MS);
    }

    double allocBytesPerS() {
        return allocBytesPerS;
    }

    double promoBytesPerS() {
        return promoBytesPerS;
    }

    double cycleMs() {
        return cycleMs;
    }

    /** The JVM cleared balloon soft references: this JVM needs more room. Returns the new headroom. */
    long learnFromClear() {
        return learn(Math.max(bytes() / 2, 16L << 20));
    }

    /** The GC-cost rule gave {@code releasedBytes} back: keep that much more free, so the balloon does not re-take it. */
    long learnFromCost(long releasedBytes) {
        return learn(releasedBytes);
    }

    private synchronized long learn(long moreBytes) {
        learnedBytes = Math.min(stats.maxBytes() / 8, learnedBytes() + moreBytes);
        learnedAtMs = System.currentTimeMillis();
        return bytes();
    }

    private static double decayed(double peak, long elapsedMs) {
        return decayed(peak, elapsedMs, DECAY_HALF_LIFE_MS);
    }

    private static double decayed(double value, long elapsedMs, long halfLifeMs) {
        return value * Math.pow(0.5, (double) elapsedMs / halfLifeMs);
    }

    /** Agent thread, every tick: the allocation and promotion rates. */
    void sample(long nowMs) {
        if (threads == null) {
            return;
        }
        if (lastAllocatedBytes >= 0 && nowMs - lastSampleMs < RATE_SAMPLE_MS) {
            return;
        }
        if (ManagementFactory.getRuntimeMXBean().getUptime() < STARTUP_MS) {
            synchronized (this) {
                promotedSinceSampleBytes = 0;
            }
            return;
        }
        // The agent's own allocations (balloon chunks) are not the application's.
        long allocated = threads.getTotalThreadAllocatedBytes() - threads.getCurrentThreadAllocatedBytes();
        long promoted;
        synchronized (this) {
            promoted = promotedSinceSampleBytes;
            promotedSinceSampleBytes = 0;
        }
        if (lastAllocatedBytes >= 0 && allocated >= lastAllocatedBytes) {
            long elapsedMs = Math.max(1, nowMs - lastSampleMs);
            double rate = (allocated - lastAllocatedBytes) * 1000.0 / elapsedMs;
            allocBytesPerS = Math.max(rate, decayed(allocBytesPerS, elapsedMs));
            promoBytesPerS = Math.max(promoted * 1000.0 / elapsedMs, decayed(promoBytesPerS, elapsedMs));
        }
        lastAllocatedBytes = allocated;
        lastSampleMs = nowMs;
    }

    /** GC-notification thread: a young collection promoted this much into the old generation. */
    synchronized void promoted(long bytes) {
        if (bytes > 0) {
            promotedSinceSampleBytes += bytes;
        }
    }

    /** GC-notification thread: a concurrent cycle (ZGC, Shenandoah) took this long; T is their median. */
    synchronized void cycle(long durationMs) {
        cyclesMs[cycleCount++ % CYCLES_KEPT] = durationMs;
        long[] recent = java.util.Arrays.copyOf(cyclesMs, Math.min(cycleCount, CYCLES_KEPT));
        java.util.Arrays.sort(recent);
        cycleMs = recent[recent.length / 2];
    }
}
