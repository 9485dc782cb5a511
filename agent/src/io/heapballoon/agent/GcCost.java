package io.heapballoon.agent;

import java.util.ArrayDeque;

/**
 * Owns the GC-cost measurement: the share of wall time spent in GC pauses over a sliding
 * window, and that share as last measured over a whole window with no balloon (the baseline
 * the balloon's extra cost is judged against). Agent thread only.
 */
final class GcCost {
    /** Before any balloon-free window was measured, assume this baseline. */
    static final double DEFAULT_BASELINE = 0.05;

    private final HeapStats stats;
    private final long windowMs;
    private final ArrayDeque<long[]> samples = new ArrayDeque<>();
    private double baseline = -1;
    /** When a balloon was last held (currentTimeMillis), 0 for never. */
    private long balloonHeldAtMs;

    GcCost(HeapStats stats, long windowMs) {
        this.stats = stats;
        this.windowMs = windowMs;
    }

    /**
     * Records the pause-time counter now; returns the pause share of the last window, or -1
     * while less than a window has been seen.
     */
    double sample(long nowMs, boolean balloonHeld) {
        long pauseMs = stats.pauseTimeMs();
        samples.addLast(new long[] {nowMs, pauseMs});
        if (balloonHeld) {
            balloonHeldAtMs = nowMs;
        }
        while (samples.size() > 2 && nowMs - samples.peekFirst()[0] > windowMs) {
            samples.pollFirst();
        }
        long[] oldest = samples.peekFirst();
        long spanMs = nowMs - oldest[0];
        if (spanMs < windowMs - 1000) {
            return -1;
        }
        double share = (double) (pauseMs - oldest[1]) / spanMs;
        if (balloonHeldAtMs < oldest[0]) {
            baseline = share; // a whole window without a balloon
        }
        return share;
    }

    double baselineShare() {
        return baseline < 0 ? DEFAULT_BASELINE : baseline;
    }

    /** Forgets the window (after a give-back, the old window no longer says anything). */
    void restart(long nowMs) {
        samples.clear();
        samples.addLast(new long[] {nowMs, stats.pauseTimeMs()});
    }
}
