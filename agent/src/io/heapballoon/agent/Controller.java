package io.heapballoon.agent;

import com.sun.management.GarbageCollectionNotificationInfo;
import java.lang.management.ManagementFactory;
import java.util.ArrayDeque;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Owns the balloon policy: the target and reclaim mode from the driver, the headroom, inflating
 * only while the application's live data plus the balloon plus headroom fit the heap, giving
 * memory back under pressure (after a GC, or when GC time is high), cooldowns, and the events
 * this produces. Called from the agent thread (tick) and the GC-notification thread (afterGc).
 */
final class Controller {
    static final long COOLDOWN_MS = 5000;
    static final long GC_WINDOW_MS = 5000;
    static final double GC_TIME_LIMIT = 0.25;
    /** After a release for GC time, the balloon stays at most that size this long. */
    static final long GC_CEILING_MS = 60_000;
    static final long INFLATE_BUDGET_NS = 30_000_000L;
    static final int MAX_PENDING_EVENTS = 64;

    final HeapStats stats;
    final Balloon balloon;
    private final Options options;
    private final long jvmStartMs = ManagementFactory.getRuntimeMXBean().getStartTime();

    /** Pending event lines, sent by the agent thread. */
    final ConcurrentLinkedQueue<String> events = new ConcurrentLinkedQueue<>();
    /** Set whenever the state changed and should be sent now. */
    final AtomicBoolean changed = new AtomicBoolean();

    private volatile long targetBytes;
    private volatile String requestedReclaim = "ksm";
    private volatile long driverHeadroomBytes;
    private volatile long cooldownUntilMs;
    private volatile boolean inflating;
    private final ArrayDeque<long[]> gcSamples = new ArrayDeque<>();
    private long gcTimeReleaseAllowedMs;
    /** GC time share measured over a window with no balloon; -1 until measured. */
    private double baselineGcFraction = -1;
    private long gcCeilingBytes = Long.MAX_VALUE;
    private long gcCeilingUntilMs;

    Controller(HeapStats stats, Balloon balloon, Options options) {
        this.stats = stats;
        this.balloon = balloon;
        this.options = options;
    }

    long targetBytes() {
        return targetBytes;
    }

    /** The reclaim mode in effect: "direct" needs native release, else it falls back to "ksm". */
    String reclaim() {
        String r = requestedReclaim;
        return "direct".equals(r) && !balloon.canRelease() ? "ksm" : r;
    }

    long headroomBytes() {
        if (driverHeadroomBytes > 0) {
            return driverHeadroomBytes;
        }
        if (options.headroomBytes >= 0) {
            return options.headroomBytes;
        }
        return Math.max(64L << 20, stats.maxBytes() / 20);
    }

    /** A {@code target} message from the driver. */
    void onTarget(long target, String reclaim, long headroom) {
        targetBytes = Math.max(0, target);
        requestedReclaim = reclaim;
        driverHeadroomBytes = headroom;
        balloon.setDirect("direct".equals(reclaim()));
        inflating = balloon.footprintBytes() + balloon.geometry.footprintBytes <= targetBytes;
        changed.set(true);
    }

    void event(String kind, long releasedBytes, String reason, long latencyMs) {
        String line = new Json.Obj().put("v", 1).put("type", "event").put("kind", kind)
                .put("released_bytes", releasedBytes).put("reason", reason).put("latency_ms", latencyMs).toString();
        events.add(line);
        while (events.size() > MAX_PENDING_EVENTS) {
            events.poll();
        }
        changed.set(true);
    }

    private void cooldown() {
        cooldownUntilMs = System.currentTimeMillis() + COOLDOWN_MS;
    }

    /** GC-notification thread: record live data, give memory back if it no longer fits, re-address. */
    void afterGc(GarbageCollectionNotificationInfo info) {
        long gcEndMs = jvmStartMs + info.getGcInfo().getEndTime();
        noteCleared(balloon.touchAndCollectCleared());
        if (info.getGcName().endsWith("Pauses")) {
            return; // ZGC/Shenandoah pauses: the matching "Cycles" notification carries the figures
        }
        long used = stats.heapUsedAfter(info.getGcInfo());
        long footprint = balloon.footprintBytes();
        long notOurs = footprint + balloon.droppedNotCollectedBytes();
        stats.recordAfterGc(used, notOurs);
        long live = Math.max(0, used - notOurs);
        long max = stats.balloonCapacityBytes();
        long headroom = headroomBytes();
        if (footprint > 0 && live + footprint + headroom > max) {
            long released = balloon.shrinkTo(Math.max(0, max - headroom - live));
            long latencyMs = Math.max(0, System.currentTimeMillis() - gcEndMs);
            cooldown();
            event("pressure_release", released, "live+balloon+headroom > max", latencyMs);
        }
        if (balloon.refreshAddresses()) {
            event("moved", 0, info.getGcName(), 0);
        }
        changed.set(true);
    }

    private void noteCleared(long clearedBytes) {
        if (clearedBytes > 0) {
            cooldown();
            event("soft_cleared", clearedBytes, "JVM cleared balloon soft references", 0);
        }
    }

    /** Agent thread, every tick: keep chunks fresh, watch GC time, move towards the target. */
    void tick() {
        long now = System.currentTimeMillis();
        noteCleared(balloon.touchAndCollectCleared());
        watchGcTime(now);
        long target = targetBytes;
        if (balloon.footprintBytes() > target) {
            balloon.shrinkTo(target);
            changed.set(true);
        } else if (now >= cooldownUntilMs) {
            inflate(now < gcCeilingUntilMs ? Math.min(target, gcCeilingBytes) : target);
        }
    }

    private void watchGcTime(long now) {
        long gcMs = stats.pauseTimeMs();
        gcSamples.addLast(new long[] {now, gcMs});
        while (gcSamples.size() > 2 && now - gcSamples.peekFirst()[0] > GC_WINDOW_MS) {
            gcSamples.pollFirst();
        }
        long[] oldest = gcSamples.peekFirst();
        long windowMs = now - oldest[0];
        long footprint = balloon.footprintBytes();
        if (windowMs < GC_WINDOW_MS - 1000) {
            return;
        }
        double fraction = (double) (gcMs - oldest[1]) / windowMs;
        if (footprint == 0) {
            baselineGcFraction = fraction;
            return;
        }
        // Give memory back only when the balloon made collection expensive: GC time above the
        // limit AND well above what it was without a balloon. A JVM that always spends a lot of
        // time in GC (a slow machine, an emulated guest) would otherwise release and re-inflate
        // forever.
        double limit = baselineGcFraction < 0 ? GC_TIME_LIMIT : Math.max(GC_TIME_LIMIT, 2 * baselineGcFraction);
        if (now >= gcTimeReleaseAllowedMs && fraction > limit) {
            long released = balloon.shrinkTo(footprint - Math.max(footprint / 4, balloon.geometry.footprintBytes));
            gcTimeReleaseAllowedMs = now + COOLDOWN_MS;
            gcCeilingBytes = balloon.footprintBytes();
            gcCeilingUntilMs = now + GC_CEILING_MS;
            cooldown();
            event("pressure_release", released, String.format("gc time %.0f%% of the last 5 s (limit %.0f%%)",
                    fraction * 100, limit * 100), 0);
        }
    }

    private void inflate(long target) {
        long chunkBytes = balloon.geometry.footprintBytes;
        long deadline = System.nanoTime() + INFLATE_BUDGET_NS;
        boolean grew = false;
        while (balloon.footprintBytes() + chunkBytes <= target && balloon.chunkCount() < Balloon.MAX_CHUNKS
                && System.nanoTime() < deadline) {
            long footprint = balloon.footprintBytes();
            // Inflate only with a quarter headroom to spare beyond what the release rule needs, so
            // live data moving a few MiB cannot make the balloon release and re-inflate in a loop.
            long hysteresis = headroomBytes() / 4;
            if (stats.liveBytes(footprint) + footprint + chunkBytes + headroomBytes() + hysteresis
                    > stats.balloonCapacityBytes()) {
                break;
            }
            byte[] array;
            try {
                array = new byte[balloon.geometry.payloadBytes];
            } catch (OutOfMemoryError e) {
                long dropped = balloon.dropNewest(1);
                cooldown();
                inflating = false;
                event("oom_avoided", dropped, "OutOfMemoryError while inflating", 0);
                return;
            }
            balloon.add(array);
            grew = true;
        }
        if (grew) {
            changed.set(true);
        }
        if (inflating && (balloon.footprintBytes() + chunkBytes > target || balloon.chunkCount() >= Balloon.MAX_CHUNKS)) {
            inflating = false;
            event("inflate_done", 0, "", 0);
        }
    }
}
