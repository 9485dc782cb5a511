package io.heapballoon.agent;

/**
 * Owns the agent's own System.gc() calls: probes (a complete collection when a stale estimate
 * holds the balloon back) and settling (Serial, Parallel: move new chunks into place now).
 * Agent thread only.
 *
 * <p>Never on Shenandoah: its control thread clears every soft reference in a cycle that
 * System.gc() requests (JDK 17, 21 and 25: "Blow all soft references on this cycle, if handling
 * allocation failure, either implicit or explicit GC request"), so a probe there drops the
 * whole balloon. Its own cycles run often enough to keep the estimate fresh.
 */
final class ExplicitGc {
    static final long PROBE_MIN_MS = 10_000;
    /** Serial's full collection compacts fully every 4th time (MarkSweepAlwaysCompactCount). */
    static final int SETTLE_COLLECTIONS = 4;
    /** A probe may cost at most 1/50 (2 %) of wall time: it waits 50 times its last pause. */
    static final int PROBE_COST_RATIO = 50;

    private final boolean allowed;
    private long lastProbeMs;
    private long lastProbeCostMs;
    private int settleLeft;

    ExplicitGc(String gc) {
        this.allowed = !"Shenandoah".equals(gc);
    }

    /** The balloon grew (Serial, Parallel): settle it once growth stops. */
    void grew() {
        settleLeft = allowed ? SETTLE_COLLECTIONS : 0;
    }

    /**
     * Serial and Parallel keep the new chunks where promotion put them, with dead space below,
     * and move them at a later full compaction, which rewrites their pages (and, in a guest,
     * makes the host reclaim them again). Once growth stops, a few explicit collections settle
     * the balloon at once (Parallel compacts fully on System.gc(); Serial every 4th time), one a
     * tick: a one-time cost per inflation, instead of moves at some later moment.
     */
    void settleIfDue() {
        if (settleLeft <= 0) {
            return;
        }
        settleLeft--;
        long t0 = System.nanoTime();
        System.gc();
        lastProbeMs = System.currentTimeMillis();
        Log.debug("settling collection took " + (System.nanoTime() - t0) / 1_000_000 + " ms");
    }

    /**
     * Asks for a complete collection when a stale estimate is what holds the balloon back: the
     * last fresh information ({@code lastInfoMs}: a complete collection or growth) and the last
     * probe are at least PROBE_MIN_MS old, and the last probe's pause, repeated at this interval,
     * would cost under 2% of wall time.
     */
    void maybeProbe(long nowMs, long lastInfoMs) {
        if (!allowed) {
            return;
        }
        long interval = Math.max(PROBE_MIN_MS, PROBE_COST_RATIO * lastProbeCostMs);
        if (nowMs - Math.max(lastInfoMs, lastProbeMs) < interval) {
            return;
        }
        long t0 = System.nanoTime();
        System.gc();
        lastProbeCostMs = (System.nanoTime() - t0) / 1_000_000;
        lastProbeMs = System.currentTimeMillis();
        Log.debug("probe collection took " + lastProbeCostMs + " ms");
    }
}
