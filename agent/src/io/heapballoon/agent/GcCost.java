package io.heapballoon.agent;

import java.util.ArrayDeque;
import java.util.function.LongSupplier;

/**
 * Owns the GC-cost measurement: the share of wall time spent in GC pauses over a sliding
 * window, that share as last measured over a whole window with no balloon (the baseline
 * the balloon's extra cost is judged against), and whether the share has been over its bound
 * (baseline + {@value #EXTRA_SHARE}) for {@value #SUSTAIN_MS} ms without a break.
 * Agent thread only (every field).
 */
final class GcCost {
    /** Before any balloon-free window was measured, assume this baseline. */
    static final double DEFAULT_BASELINE = 0.05;
    /** The balloon may add this share of wall time to GC pauses (10 points: a tenth of the application's time). */
    static final double EXTRA_SHARE = 0.10;
    /** The bound must be exceeded this long without a break before it acts. */
    static final long SUSTAIN_MS = 10_000;

    /** The JVM's total GC pause time so far, in ms (HeapStats.pauseTimeMs; a counter in tests). */
    private final LongSupplier pauseTimeMs;
    private final long windowMs;
    private final ArrayDeque<long[]> samples = new ArrayDeque<>();
    private double baseline = -1;
    /** When a balloon was last held (currentTimeMillis), 0 for never. */
    private long balloonHeldAtMs;
    /** Since when the share has been over its bound without a break (0: it is not). */
    private long overBoundSinceMs;

    GcCost(HeapStats stats, long windowMs) {
        this(stats::pauseTimeMs, windowMs);
    }

    GcCost(LongSupplier pauseTimeMs, long windowMs) {
        this.pauseTimeMs = pauseTimeMs;
        this.windowMs = windowMs;
    }

    /**
     * Records the pause-time counter now; returns the pause share of the last window, or -1
     * while less than a window has been seen.
     */
    double sample(long nowMs, boolean balloonHeld) {
        long pauseMs = pauseTimeMs.getAsLong();
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

    /**
     * Samples (see sample) and judges: the pause share once it has been over the bound for
     * {@value #SUSTAIN_MS} ms without a break while a balloon was held (the judgement then
     * starts over), else -1.
     */
    double sustainedOverBound(long nowMs, boolean balloonHeld) {
        double share = sample(nowMs, balloonHeld);
        if (!balloonHeld || share < 0 || share <= baselineShare() + EXTRA_SHARE) {
            overBoundSinceMs = 0;
            return -1;
        }
        if (overBoundSinceMs == 0) {
            overBoundSinceMs = nowMs;
        }
        if (nowMs - overBoundSinceMs < SUSTAIN_MS) {
            return -1; // a burst of slow collections (a busy machine) is not the balloon's running cost
        }
        overBoundSinceMs = 0;
        return share;
    }

    double baselineShare() {
        return baseline < 0 ? DEFAULT_BASELINE : baseline;
    }

    /** Forgets the window (after a give-back, the old window no longer says anything). */
    void restart(long nowMs) {
        samples.clear();
        samples.addLast(new long[] {nowMs, pauseTimeMs.getAsLong()});
    }
}
