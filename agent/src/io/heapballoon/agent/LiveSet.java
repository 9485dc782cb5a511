package io.heapballoon.agent;

import java.lang.management.MemoryUsage;
import java.util.Map;

/**
 * Owns the live-set estimate: how much heap the application's reachable data needs, taken only
 * from collections that examined the whole heap ("complete" collections), never from young
 * collections, which promote garbage that no later young collection clears.
 *
 * <p>Which notifications are complete, per collector (docs/agent.md has the full table):
 * <ul>
 *   <li>Serial: {@code MarkSweepCompact}; Parallel: {@code PS MarkSweep}; G1: {@code G1 Old
 *       Generation} (full GC) and, on JDK 20+, {@code G1 Concurrent GC} (Remark and Cleanup of a
 *       concurrent cycle). JDK 17's G1 reports no concurrent pause: a cycle shows as old-gen
 *       usage that fell between two notifications, and the next young collection's figures
 *       from <em>before</em> it (old + survivors) are then taken as the sample.</li>
 *   <li>ZGC: {@code ZGC Cycles} (single-generation), {@code ZGC Major Cycles} (generational);
 *       Shenandoah: {@code Shenandoah Cycles}. Their after-cycle usage includes what was
 *       allocated while the cycle ran, so the estimate is the smaller of the last two
 *       samples: noise only ever adds, and a real rise shows in both.</li>
 *   <li>{@code ... Pauses} beans carry no usage figures and are ignored.</li>
 * </ul>
 * Young collections ({@code Copy}, {@code PS Scavenge}, {@code G1 Young Generation},
 * {@code ZGC Minor Cycles}) may only lower the estimate: what is in use after any collection
 * is an upper bound on what is live.
 *
 * <p>Eden pools are left out of G1's concurrent samples, where they hold only new allocations;
 * elsewhere a sample is the whole heap after the collection (a Serial full collection may
 * compact live data into eden). The balloon's own chunks (held or dropped but not yet
 * collected) are subtracted by the caller. Thread-safe.
 */
final class LiveSet {
    enum Kind { COMPLETE, CONCURRENT, PARTIAL, IGNORE }

    static final long CONCURRENT_WINDOW_MS = 5_000;

    /** The sample a notification gave: which kind, and the non-eden heap bytes it measured. */
    static final class Sample {
        final Kind kind;
        final long usedBytes;
        final String source;

        Sample(Kind kind, long usedBytes, String source) {
            this.kind = kind;
            this.usedBytes = usedBytes;
            this.source = source;
        }
    }

    /** JDK 20+ G1 reports Remark/Cleanup; on JDK 17 cycles are inferred from old-gen drops. */
    private final boolean g1InferCycles;
    private final boolean g1;
    /** G1: a concurrent cycle ended and its mixed phase is being watched (see g1MixedPhase). */
    private boolean mixedArmed;
    private int youngSinceCycle;
    private boolean mixedSeen;
    private final long slackBytes;
    private long lastOldAfterBytes = -1;
    /** The estimate in bytes, -1 until the first complete collection. */
    private long estimateBytes = -1;
    /** Recent concurrent samples, {atMs, liveBytes}: the estimate is their minimum. */
    private final java.util.ArrayDeque<long[]> concurrent = new java.util.ArrayDeque<>();
    /** The lowest young-collection (upper-bound) figure since the last complete or concurrent sample. */
    private long boundSinceSampleBytes = Long.MAX_VALUE;
    private String source = "none";
    private long completeCount;
    private long completeAtMs;

    LiveSet(String gc, boolean hasG1ConcurrentBean, long regionBytes) {
        this.g1 = "G1".equals(gc);
        this.g1InferCycles = g1 && !hasG1ConcurrentBean;
        this.slackBytes = Math.max(2 * regionBytes, 4L << 20);
    }

    /** The kind of collection a bean's notification reports (by bean name; see the class doc). */
    static Kind classify(String beanName) {
        if (beanName.endsWith("Pauses")) {
            return Kind.IGNORE;
        }
        switch (beanName) {
            case "MarkSweepCompact":
            case "PS MarkSweep":
            case "G1 Old Generation":
                return Kind.COMPLETE;
            case "G1 Concurrent GC":
            case "ZGC Cycles":
            case "ZGC Major Cycles":
            case "Shenandoah Cycles":
                return Kind.CONCURRENT;
            case "Copy":
            case "PS Scavenge":
            case "G1 Young Generation":
            case "ZGC Minor Cycles":
                return Kind.PARTIAL;
            default:
                return Kind.COMPLETE; // an unknown collector: trust it, as before this estimate existed
        }
    }

    static boolean isEden(String pool) {
        return pool.contains("Eden");
    }

    static boolean isOld(String pool) {
        return pool.equals("G1 Old Gen") || pool.equals("Tenured Gen") || pool.equals("PS Old Gen");
    }

    /** Non-eden heap usage in {@code usage} (pools not in {@code heapPools} are skipped). */
    static long nonEden(Map<String, MemoryUsage> usage, java.util.Set<String> heapPools) {
        long sum = 0;
        for (Map.Entry<String, MemoryUsage> e : usage.entrySet()) {
            if (heapPools.contains(e.getKey()) && !isEden(e.getKey())) {
                sum += e.getValue().getUsed();
            }
        }
        return sum;
    }

    static long total(Map<String, MemoryUsage> usage, java.util.Set<String> heapPools) {
        long sum = 0;
        for (Map.Entry<String, MemoryUsage> e : usage.entrySet()) {
            if (heapPools.contains(e.getKey())) {
                sum += e.getValue().getUsed();
            }
        }
        return sum;
    }

    static long old(Map<String, MemoryUsage> usage) {
        long sum = 0;
        for (Map.Entry<String, MemoryUsage> e : usage.entrySet()) {
            if (isOld(e.getKey())) {
                sum += e.getValue().getUsed();
            }
        }
        return sum;
    }

    /**
     * The samples one notification gives (in order): for JDK 17 G1, a young collection that
     * follows an unreported concurrent cycle gives a cycle sample (its before-figures) first.
     */
    synchronized Sample[] samples(String beanName, Map<String, MemoryUsage> before, Map<String, MemoryUsage> after,
                                  java.util.Set<String> heapPools) {
        Kind kind = classify(beanName);
        if (kind == Kind.IGNORE) {
            return new Sample[0];
        }
        // Eden is left out only where it holds nothing but new allocations: after G1's concurrent
        // pauses. After a full collection, Serial may have compacted live data into eden.
        boolean g1Cycle = beanName.equals("G1 Concurrent GC");
        long used = g1Cycle ? nonEden(after, heapPools) : total(after, heapPools);
        Sample main = new Sample(kind, used, beanName);
        Sample inferred = null;
        if (g1InferCycles) {
            long oldBefore = old(before);
            if (lastOldAfterBytes >= 0 && lastOldAfterBytes - oldBefore > slackBytes) {
                inferred = new Sample(Kind.PARTIAL, nonEden(before, heapPools), "G1 concurrent cycle (inferred)");
                armMixedPhase(1); // this young collection is the cycle's first
            }
            lastOldAfterBytes = old(after);
        }
        if (!g1) {
            return new Sample[] {main};
        }
        if (g1Cycle) {
            armMixedPhase(0);
            return new Sample[] {new Sample(Kind.PARTIAL, used, beanName)};
        }
        if (kind == Kind.COMPLETE) {
            mixedArmed = false; // a full collection: the truth, no mixed phase to wait for
        }
        Sample mixedEnd = kind == Kind.PARTIAL && inferred == null ? g1MixedPhase(before, after, heapPools) : null;
        if (mixedEnd != null) {
            return new Sample[] {mixedEnd, main};
        }
        return inferred == null ? new Sample[] {main} : new Sample[] {inferred, main};
    }

    /**
     * G1's Remark and Cleanup see the old generation before its mixed collections: it still holds
     * every object that died there since the last cycle (on JDK 25 at 2 GiB/s, 500 MiB where
     * 200 MiB were live). So a cycle's own figure is only an upper bound, and the sample is taken
     * when its mixed phase is over: the non-eden heap after the first young collection that
     * frees no old region once mixed collections (old generation usage fell) have run; that
     * collection's own figures, so the balloon subtracted is the one it saw. Without mixed
     * collections (G1 found under 5 % of the heap worth collecting) the second young collection
     * after the cycle gives it. The first young collection after a cycle ("Prepare Mixed")
     * never collects old regions, so the phase is judged from the second.
     */
    private void armMixedPhase(int youngSeen) {
        mixedArmed = true;
        youngSinceCycle = youngSeen;
        mixedSeen = false;
    }

    private Sample g1MixedPhase(Map<String, MemoryUsage> before, Map<String, MemoryUsage> after,
                                java.util.Set<String> heapPools) {
        if (!mixedArmed) {
            return null;
        }
        youngSinceCycle++;
        if (old(before) - old(after) > slackBytes) {
            mixedSeen = true;
            return null;
        }
        if (!mixedSeen && youngSinceCycle < 2) {
            return null;
        }
        mixedArmed = false;
        return new Sample(Kind.CONCURRENT, nonEden(after, heapPools), "G1 mixed phase");
    }

    /**
     * Folds one sample, with the balloon's bytes at that moment subtracted, into the estimate.
     * Returns the application's live bytes this sample shows for a complete collection (the
     * figure the pressure rule judges), or -1 for a young collection.
     */
    synchronized long record(Sample sample, long balloonBytes, long nowMs) {
        long live = Math.max(0, sample.usedBytes - balloonBytes);
        switch (sample.kind) {
            case COMPLETE:
                estimateBytes = live;
                concurrent.clear();
                boundSinceSampleBytes = Long.MAX_VALUE;
                break;
            case CONCURRENT:
                // An upper bound seen since the last sample caps this one (G1: Remark's own
                // figure is often below the mixed phase's end, which counts what was promoted since).
                live = Math.min(live, boundSinceSampleBytes);
                boundSinceSampleBytes = Long.MAX_VALUE;
                long robust = robustConcurrent(live, nowMs);
                estimateBytes = robust;
                live = robust;
                break;
            case PARTIAL:
                boundSinceSampleBytes = Math.min(boundSinceSampleBytes, live);
                // A young collection's figure is an upper bound of the live set at that moment.
                // After a complete collection it may only lower the estimate (it also counts
                // garbage promoted since). Before any, it is the only figure there is, and the
                // newest one is the truest: the application may still be loading its data, and
                // an early, small figure kept would let the balloon take the room that data
                // needs. When this bound holds the balloon back, the controller's probe asks for
                // the complete collection that settles it.
                if (estimateBytes < 0 || live < estimateBytes || completeCount == 0) {
                    estimateBytes = live;
                    source = sample.source + " (upper bound)";
                }
                return -1;
            default:
                return -1;
        }
        source = sample.source;
        completeCount++;
        completeAtMs = nowMs;
        return live;
    }

    /**
     * A concurrent sample counts what was allocated while the cycle ran (at 1.6 GiB/s on
     * Shenandoah, up to 55 % over the live set), and that noise only ever adds: the estimate is
     * the smallest of the samples of the last {@value #CONCURRENT_WINDOW_MS} ms, and of at least
     * the last two. A real rise shows in every one of them, so it is seen within that window.
     */
    private long robustConcurrent(long live, long nowMs) {
        concurrent.addLast(new long[] {nowMs, live});
        while (concurrent.size() > 2 && nowMs - concurrent.peekFirst()[0] > CONCURRENT_WINDOW_MS) {
            concurrent.pollFirst();
        }
        long min = live;
        for (long[] sample : concurrent) {
            min = Math.min(min, sample[1]);
        }
        return min;
    }

    /** Live bytes, or -1 before any collection. */
    synchronized long estimateBytes() {
        return estimateBytes;
    }

    synchronized String source() {
        return source;
    }

    /** How many complete collections were seen: a change means fresh information. */
    synchronized long completeCount() {
        return completeCount;
    }

    /** When the last complete collection ended (currentTimeMillis), 0 if none yet. */
    synchronized long completeAtMs() {
        return completeAtMs;
    }
}
