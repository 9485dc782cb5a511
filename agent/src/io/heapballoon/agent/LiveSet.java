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
    private final long slackBytes;
    private long lastOldAfterBytes = -1;
    /** The estimate in bytes, -1 until the first complete collection. */
    private long estimateBytes = -1;
    private long previousConcurrentBytes = -1;
    private String source = "none";
    private long completeCount;
    private long completeAtMs;

    LiveSet(String gc, boolean hasG1ConcurrentBean, long regionBytes) {
        this.g1InferCycles = "G1".equals(gc) && !hasG1ConcurrentBean;
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
        long used = beanName.equals("G1 Concurrent GC") ? nonEden(after, heapPools) : total(after, heapPools);
        Sample main = new Sample(kind, used, beanName);
        Sample inferred = null;
        if (g1InferCycles) {
            long oldBefore = old(before);
            if (lastOldAfterBytes >= 0 && lastOldAfterBytes - oldBefore > slackBytes) {
                inferred = new Sample(Kind.CONCURRENT, nonEden(before, heapPools), "G1 concurrent cycle (inferred)");
            }
            lastOldAfterBytes = old(after);
        }
        return inferred == null ? new Sample[] {main} : new Sample[] {inferred, main};
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
                previousConcurrentBytes = -1;
                break;
            case CONCURRENT:
                long robust = previousConcurrentBytes >= 0 ? Math.min(live, previousConcurrentBytes) : live;
                previousConcurrentBytes = live;
                estimateBytes = robust;
                live = robust;
                break;
            case PARTIAL:
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
