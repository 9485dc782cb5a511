package io.heapballoon.agent;

/**
 * Owns the agent's own System.gc() calls: probes (a complete collection when a stale estimate
 * holds the balloon back) and settling (Serial: move new chunks into place now; Parallel: ParallelOld).
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
    /**
     * Each probe since the balloon last grew or gave back doubles the wait before the next, up to
     * 2^this: a probe that finds the same live set frees no room (Parallel's System.gc() compacts
     * fully and slides every chunk over what died below it, ~1 s for 400 MiB).
     */
    static final int PROBE_DOUBLINGS = 4;

    private final boolean allowed;
    private long lastProbeMs;
    private long lastProbeCostMs;
    private int settleLeft;
    /** Probes since the balloon last grew or gave back (agent thread increments; both threads reset). */
    private volatile int fruitlessProbes;

    ExplicitGc(String gc) {
        this.allowed = !"Shenandoah".equals(gc);
    }

    /** The balloon grew or gave back: the next probe may come after PROBE_MIN_MS again. */
    void changed() {
        fruitlessProbes = 0;
    }

    /** The balloon grew (Serial): settle it once growth stops. */
    void grew() {
        settleLeft = allowed ? SETTLE_COLLECTIONS : 0;
    }

    /**
     * Serial keeps the new chunks where promotion put them, with dead space below, and moves
     * them at a later full compaction, which rewrites their pages (and, in a guest, makes the host
     * reclaim them again). Once growth stops, a few explicit collections settle the balloon at once
     * (Serial compacts fully every 4th time), one a tick: a one-time cost per inflation, instead of
     * moves at some later moment. (Parallel places its chunks as they come: ParallelOld.)
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
     * probe are at least PROBE_MIN_MS old (doubled for each probe since the balloon last changed), and
     * the last probe's pause, repeated at this interval, would cost under 2% of wall time.
     */
    void maybeProbe(long nowMs, long lastInfoMs) {
        if (!allowed) {
            return;
        }
        long interval = Math.max(PROBE_MIN_MS << Math.min(fruitlessProbes, PROBE_DOUBLINGS), PROBE_COST_RATIO * lastProbeCostMs);
        if (nowMs - Math.max(lastInfoMs, lastProbeMs) < interval) {
            return;
        }
        long t0 = System.nanoTime();
        System.gc();
        lastProbeCostMs = (System.nanoTime() - t0) / 1_000_000;
        lastProbeMs = System.currentTimeMillis();
        fruitlessProbes++;
        Log.debug("probe collection took " + lastProbeCostMs + " ms");
    }
}
