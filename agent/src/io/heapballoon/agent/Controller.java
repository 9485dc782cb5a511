package io.heapballoon.agent;

import com.sun.management.GarbageCollectionNotificationInfo;
import java.lang.management.ManagementFactory;

/**
 * Owns the balloon's control law: the target and reclaim mode from the driver, when to inflate
 * and when to give memory back. Its parts own the rest: Headroom (H), LiveSet (L), GcCost and
 * GcProfile (GC time), ExplicitGc (probes, settling), BackOff (what a give-back leaves behind:
 * hold, ceiling, flaps) and Outbox (events and the changed flag for the driver). Called from the
 * agent thread (onTarget, tick) and the GC-notification thread (afterGc); each field below says
 * which thread owns it.
 *
 * <p>The law, with C the balloon's capacity (the heap; the old generation for Serial and
 * Parallel), L the live-set estimate (LiveSet: complete collections only), B the balloon and
 * H the headroom:
 * <ul>
 *   <li><b>Give back</b> when a complete collection shows L + B + H &gt; C: shrink to C − H − L.
 *       A young collection triggers it only on Parallel, and only for a burst (ParallelOld.burst):
 *       all of it. Old garbage is the collector's to clean up. Second rule, GC cost: when the share of
 *       wall time spent in GC pauses over {@value #GC_WINDOW_MS} ms exceeds what it was without a
 *       balloon by more than {@value GcCost#EXTRA_SHARE}, for {@value GcCost#SUSTAIN_MS} ms without a break (10
 *       points: a tenth of the application's time; a balloon that costs more is not worth its
 *       memory), a quarter of the balloon is given back.</li>
 *   <li><b>Inflate</b> while B + chunk &le; balloonMaxBytes (the H/4 there is hysteresis), never
 *       during a back-off, nor past the give-back's size until a later complete collection shows
 *       room (BackOff). Region-based collectors: only while the heap has a chunk plus a margin
 *       free (Headroom.inflateMarginBytes), at the collector's pace, forcing no emergency
 *       collections (which clear soft references).</li>
 *   <li><b>Probe</b> and <b>settle</b> (Serial): ExplicitGc. <b>Place</b> (Parallel): ParallelOld.</li>
 *   <li><b>Flaps</b>: a give-back whose trigger shows no rise of the live set since the balloon
 *       last grew, followed by re-inflation, is counted as a flap.</li>
 * </ul>
 * The guarantee underneath all of this: chunks are held only through SoftReferences, so the JVM
 * clears them before it would throw OutOfMemoryError, whatever this law decides.
 */
final class Controller {
    static final long GC_WINDOW_MS = 20_000;
    /** After the balloon grew, collections that move its chunks are still the growth's cost. */
    static final long SETTLE_MS = 30_000;
    static final long INFLATE_BUDGET_NS = 30_000_000L;

    final HeapStats stats;
    final Balloon balloon;
    final LiveSet live;
    final GcCost gcCost;
    final Headroom headroom;
    final GcProfile profile = new GcProfile();
    /** Parallel: the old-generation space its promotion estimate needs, and where new chunks go. */
    final ParallelOld parallelOld;
    private final ExplicitGc explicit;
    private final BackOff backOff = new BackOff();
    /** Events and the changed flag for the driver (both threads write; the agent thread sends). */
    final Outbox out = new Outbox();
    private final java.lang.management.RuntimeMXBean runtime = ManagementFactory.getRuntimeMXBean();
    private final long jvmStartMs = runtime.getStartTime();
    /** Uptime minus GcInfo time, an upper bound (GC-notification thread only). */
    private long gcClockOffsetMs = Long.MAX_VALUE;
    /** The balloon at the last collection (the GC-notification thread writes, the agent thread reads). */
    private volatile long balloonAtLastGcBytes;

    /** The driver's target and reclaim mode (written by the agent thread, read by both). */
    private volatile long targetBytes;
    private volatile String requestedReclaim = "ksm";
    /** Inflating towards the target until inflate_done is sent (agent thread). */
    private volatile boolean inflating;
    /** Times the JVM itself cleared balloon soft references (both threads; ++ under this). */
    private volatile long softCleared;
    /** When the balloon last grew (currentTimeMillis; written by the agent thread). */
    private volatile long lastGrowthMs;

    Controller(HeapStats stats, Balloon balloon, Options options) {
        this.stats = stats;
        this.balloon = balloon;
        this.headroom = new Headroom(stats, options);
        this.explicit = new ExplicitGc(stats.gc);
        this.live = new LiveSet(stats.gc, stats.hasG1ConcurrentBean(), stats.regionBytes);
        this.gcCost = new GcCost(stats, GC_WINDOW_MS);
        this.parallelOld = new ParallelOld(stats);
    }

    long targetBytes() { return targetBytes; }

    long flaps() { return backOff.flaps(); }

    long softCleared() { return softCleared; }

    /** The reclaim mode in effect: "direct" needs native release, else it falls back to "ksm". */
    String reclaim() {
        String r = requestedReclaim;
        return "direct".equals(r) && !balloon.canRelease() ? "ksm" : r;
    }

    /** H: the driver's (or the static) headroom, or what the allocation rate needs (Headroom). */
    long headroomBytes() { return headroom.bytes(); }

    /** The application's live bytes: the estimate, or heap used less the balloon before any GC. */
    long liveBytes() {
        long estimate = live.estimateBytes();
        return estimate >= 0 ? estimate : Math.max(0, stats.usedBytes() - balloon.footprintBytes());
    }

    /**
     * The largest balloon this JVM can hold now, in whole chunks: C − L − max(H + H/4, R), R being
     * what Parallel's promotion estimate needs free in its old generation (ParallelOld; 0 elsewhere).
     */
    long balloonMaxBytes() { return balloonMaxBytes(liveBytes()); }

    private long balloonMaxBytes(long liveBytes) {
        long chunk = balloon.geometry.footprintBytes;
        long h = headroomBytes();
        long room = stats.balloonCapacityBytes() - liveBytes - Math.max(h + h / 4, parallelOld.reserveBytes(chunk));
        return Math.max(0, room / chunk * chunk);
    }

    /** A {@code target} message from the driver. */
    void onTarget(long target, String reclaim, long headroom) {
        targetBytes = Math.max(0, target);
        requestedReclaim = reclaim;
        this.headroom.setDriverBytes(headroom);
        balloon.setDirect("direct".equals(reclaim()));
        inflating = balloon.footprintBytes() + balloon.geometry.footprintBytes <= targetBytes;
        out.changed();
    }

    /** A give-back happened: start (or lengthen) the back-off and cap re-inflation (BackOff). */
    private void backOff(long now, long liveBytes) {
        long headroomBytes = headroomBytes();
        // A rise of the live set, or of the headroom the allocation rate needs, explains a give-back.
        long tolerance = Math.max(headroomBytes / 4, balloon.geometry.footprintBytes);
        explicit.changed();
        backOff.gaveBack(now, liveBytes, headroomBytes, tolerance, balloon.footprintBytes(), live.completeCount());
    }

    /** GC-notification thread: fold the collection into the live set; give back on real pressure. */
    void afterGc(GarbageCollectionNotificationInfo info) {
        long gcEndMs = jvmStartMs + info.getGcInfo().getEndTime();
        noteCleared(balloon.touchAndCollectCleared());
        String bean = info.getGcName();
        java.util.Map<String, java.lang.management.MemoryUsage> before = info.getGcInfo().getMemoryUsageBeforeGc();
        java.util.Map<String, java.lang.management.MemoryUsage> after = info.getGcInfo().getMemoryUsageAfterGc();
        if (LiveSet.classify(bean) == LiveSet.Kind.PARTIAL) {
            long promoted = LiveSet.old(after) - LiveSet.old(before);
            long footprint = balloon.footprintBytes();
            if (!stats.regionBased()) {
                promoted -= Math.max(0, footprint - balloonAtLastGcBytes); // new chunks, promoted from eden
            }
            headroom.promoted(promoted);
            String burst = parallelOld.burst(bean, promoted, stats.balloonCapacityBytes() - LiveSet.old(after),
                    balloon.geometry.footprintBytes, headroom.promoBytesPerS());
            if (footprint > 0 && burst != null) {
                giveBack(0, burst, gcEndMs, liveBytes());
            }
            parallelOld.young(promoted);
        }
        balloonAtLastGcBytes = balloon.footprintBytes(); // any collection moved the chunks it saw out of eden
        if (bean.endsWith("Cycles")) {
            headroom.cycle(info.getGcInfo().getDuration());
        } else {
            profile.pause(info.getGcInfo().getDuration(), balloon.footprintBytes() > 0);
        }
        LiveSet.Sample[] samples = live.samples(bean, before, after, stats.heapPools());
        if (samples.length == 0) {
            return; // a "Pauses" bean: the matching "Cycles" notification carries the figures
        }
        // The balloon as the collection saw it: chunks added since it ended are not in its figures.
        // GcInfo's clock runs ~25 ms behind getUptime() (HotSpot starts them apart); the smallest
        // gap between a collection's end and its notification seen so far bounds that offset.
        long gcClockEndMs = info.getGcInfo().getEndTime();
        gcClockOffsetMs = Math.min(gcClockOffsetMs, runtime.getUptime() - gcClockEndMs);
        long notOurs = balloon.footprintBytes() - balloon.addedAfterBytes(gcClockEndMs + gcClockOffsetMs)
                + balloon.droppedNotCollectedBytes();
        for (LiveSet.Sample sample : samples) {
            long liveBytes = live.record(sample, notOurs, System.currentTimeMillis());
            if (liveBytes >= 0) {
                judgePressure(liveBytes, sample.source, gcEndMs);
            }
        }
        if (balloon.refreshAddresses()) {
            out.event("moved", 0, info.getGcName(), 0);
            if (System.currentTimeMillis() - lastGrowthMs < SETTLE_MS) {
                gcCost.restart(System.currentTimeMillis()); // settling in after growth, not running cost
            }
        }
        out.changed();
    }

    /** The give-back rule, judged only on complete collections. */
    private void judgePressure(long liveBytes, String source, long gcEndMs) {
        long footprint = balloon.footprintBytes();
        long capacity = stats.balloonCapacityBytes();
        long headroom = headroomBytes();
        if (footprint > 0 && liveBytes + footprint + headroom > capacity) {
            giveBack(capacity - headroom - liveBytes, String.format("%s: live %d MiB + balloon %d MiB + headroom %d MiB > %d MiB",
                    source, liveBytes >> 20, footprint >> 20, headroom >> 20, capacity >> 20), gcEndMs, liveBytes);
        }
    }

    /** GC-notification thread: shrink to {@code limitBytes} now, back off, say why ({@code pressure_release}). */
    private void giveBack(long limitBytes, String reason, long gcEndMs, long liveBytes) {
        long released = balloon.shrinkTo(Math.max(0, limitBytes));
        long now = System.currentTimeMillis();
        backOff(now, liveBytes);
        out.event("pressure_release", released, reason, Math.max(0, now - gcEndMs));
    }

    /**
     * The JVM cleared balloon soft references: it was one step from an OutOfMemoryError, so the
     * balloon left it too little room. Counted, and this JVM's headroom grows (Headroom.learnFromClear).
     */
    private void noteCleared(long clearedBytes) {
        if (clearedBytes > 0) {
            long before = headroomBytes();
            long after;
            synchronized (this) {
                softCleared++;
                after = headroom.learnFromClear();
            }
            backOff(System.currentTimeMillis(), liveBytes());
            if (stats.shenandoah()) {
                // Its allocation-failure degenerations recur every heap fill while the balloon is small
                // (free-set region tails hide the trigger); a large balloon stops them: rebuild it now.
                backOff.endHold();
            }
            String reason = String.format("JVM cleared balloon soft references: headroom %d MiB -> %d MiB", before >> 20, after >> 20);
            Log.info("soft references cleared (" + (clearedBytes >> 20) + " MiB); " + reason.substring(reason.indexOf("headroom")));
            out.event("soft_cleared", clearedBytes, reason, 0);
        }
    }

    /** Agent thread, every tick: keep chunks fresh, watch GC cost, move towards the target. */
    void tick() {
        long now = System.currentTimeMillis();
        headroom.sample(now);
        profile.sample(now, balloon.footprintBytes() > 0);
        noteCleared(balloon.touchAndCollectCleared());
        watchGcCost(now);
        long target = targetBytes;
        if (balloon.footprintBytes() > target) {
            balloon.shrinkTo(target);
            out.changed();
            return;
        }
        long limit = backOff.limitBytes(now, target, live.completeCount());
        if (limit < 0) {
            return; // backing off after a give-back
        }
        boolean blockedByEstimate = inflate(limit);
        if (blockedByEstimate || limit < target) {
            if (targetBytes - balloon.footprintBytes() >= balloon.geometry.footprintBytes) {
                explicit.maybeProbe(now, Math.max(live.completeAtMs(), lastGrowthMs));
            }
        }
    }

    private void watchGcCost(long now) {
        long footprint = balloon.footprintBytes();
        double share = gcCost.sustainedOverBound(now, footprint > 0);
        if (share < 0) {
            return;
        }
        double baseline = gcCost.baselineShare();
        long released = balloon.shrinkTo(footprint - Math.max(footprint / 4, balloon.geometry.footprintBytes));
        gcCost.restart(now);
        headroom.learnFromCost(released); // before backOff: a rise of H explains the give-back (no flap)
        backOff(now, liveBytes());
        out.event("pressure_release", released, String.format("gc pauses %.0f%% of the last %d s (%.0f%% without a balloon)",
                share * 100, GC_WINDOW_MS / 1000, baseline * 100), 0);
    }

    /**
     * Shenandoah: an empty balloon starts only in the first quarter of the heap's fill, from the
     * live set (where a cycle leaves it) to the inflate margin. Started later, it is still small when
     * the heap runs out, and on JDK 25 that comes before the trigger while the balloon is small: the
     * degenerated collection clears it (docs/agent.md). An empty balloon has nothing to lose then.
     */
    private boolean shenandoahMayStart() {
        if (!stats.shenandoah()) {
            return true;
        }
        return Headroom.inFirstQuarterOfFill(stats.usedBytes(), liveBytes(), stats.maxBytes(), headroom.inflateMarginBytes());
    }

    /** Grows the balloon towards {@code limit}; true when the live-set estimate stopped it. */
    private boolean inflate(long limit) {
        long chunkBytes = balloon.geometry.footprintBytes;
        long deadline = System.nanoTime() + INFLATE_BUDGET_NS;
        boolean grew = false;
        boolean blocked = false;
        long liveSizedForBytes = Long.MAX_VALUE; // the lowest live estimate a step allowed (BackOff.grew)
        // A tick's growth: Shenandoah at most SHENANDOAH_INFLATE_BYTES_PER_TICK (see the constant); Parallel at
        // most what eden has free, less a chunk and 100 ms of the application's allocation (ParallelOld).
        long stopAt = stats.shenandoah() ? balloon.footprintBytes() + Headroom.SHENANDOAH_INFLATE_BYTES_PER_TICK : Long.MAX_VALUE;
        long edenRoom = parallelOld.edenRoomBytes(chunkBytes + (long) headroom.allocBytesPerS() / 10);
        if (balloon.footprintBytes() == 0 && !shenandoahMayStart() || parallelOld.tooSmallToPlace(balloon.footprintBytes(),
                balloonMaxBytes(liveBytes()), limit, chunkBytes, headroomBytes() + headroomBytes() / 4)) {
            return false;
        }
        long upToBytes = Math.min(limit, stopAt);
        parallelOld.takeFirstFullCompactions(balloon.footprintBytes() + chunkBytes <= upToBytes);
        while (balloon.footprintBytes() + chunkBytes <= upToBytes
                && balloon.chunkCount() < Balloon.MAX_CHUNKS && System.nanoTime() < deadline) {
            long liveNow = liveBytes();
            if (balloon.footprintBytes() + chunkBytes > balloonMaxBytes(liveNow)) {
                blocked = headroomBytes() + headroomBytes() / 4 >= parallelOld.reserveBytes(chunkBytes); // else no probe helps
                break;
            }
            liveSizedForBytes = Math.min(liveSizedForBytes, liveNow);
            if ((edenRoom -= chunkBytes) < 0) {
                break;
            }
            if (stats.regionBased() && stats.usedBytes() + chunkBytes + headroom.inflateMarginBytes() > stats.maxBytes()) {
                break; // no free regions to spare: let the collector free garbage first
            }
            byte[] array;
            try {
                array = new byte[balloon.geometry.payloadBytes];
            } catch (OutOfMemoryError e) {
                long dropped = balloon.dropNewest(1);
                backOff(System.currentTimeMillis(), liveBytes());
                inflating = false;
                out.event("oom_avoided", dropped, "OutOfMemoryError while inflating", 0);
                return false;
            }
            balloon.add(array, !parallelOld.active());
            grew = true;
        }
        if (grew) {
            explicit.changed();
            lastGrowthMs = System.currentTimeMillis();
            gcCost.restart(lastGrowthMs); // growing costs GC time once: judge only what follows
            if (backOff.grew(Math.min(liveSizedForBytes, liveBytes()), headroomBytes())) {
                Log.info("flap: re-inflating after a give-back that no rise of the live set explained");
            }
            out.changed();
        }
        if (inflating && (balloon.footprintBytes() + chunkBytes > targetBytes || balloon.chunkCount() >= Balloon.MAX_CHUNKS)) {
            inflating = false;
            out.event("inflate_done", 0, "", 0);
        }
        if (grew && parallelOld.active()) {
            parallelOld.grew(balloon, balloon.footprintBytes() - balloonAtLastGcBytes);
        } else if (grew && !stats.regionBased()) {
            explicit.grew();
        } else if (!grew) {
            explicit.settleIfDue();
        }
        return blocked;
    }
}
