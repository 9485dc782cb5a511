package io.heapballoon.agent;

/**
 * Owns what a give-back leaves behind: the back-off during which the balloon does not grow, the
 * ceiling it may not grow past until a newer complete collection, and the flap count.
 *
 * <p>After a give-back the balloon holds for the back-off ({@value #MIN_MS} ms); it doubles, up to
 * {@value #MAX_MS} ms, with every give-back that no rise of the live set (nor of the headroom)
 * explains and that comes within {@value #RESET_MS} ms of the previous one. A give-back that
 * nothing explains, followed by re-inflation, is a flap.
 *
 * <p>Threads: give-backs come from the GC-notification thread (pressure, soft references
 * cleared) and the agent thread (GC cost, OutOfMemoryError while inflating); growth and the
 * hold check come from the agent thread. Every field is guarded by {@code this}; {@code flaps}
 * is also volatile so the status can read it without the lock.
 */
final class BackOff {
    static final long MIN_MS = 5_000;
    static final long MAX_MS = 160_000;
    static final long RESET_MS = 300_000;

    // All guarded by this.
    private long holdUntilMs;
    private long backoffMs = MIN_MS;
    private long lastReleaseMs;
    /** After a give-back: the balloon stays at most this big until a newer complete collection. */
    private long ceilingBytes = Long.MAX_VALUE;
    private long ceilingCompleteCount = -1;
    private boolean flapCandidate;
    /** The live estimate and the headroom when the balloon last grew. */
    private long liveAtGrowthBytes = -1;
    private long headroomAtGrowthBytes;
    private volatile long flaps;

    long flaps() {
        return flaps;
    }

    /**
     * A give-back happened at {@code now}, leaving the balloon at {@code footprintBytes}: start
     * (or lengthen) the back-off and cap re-inflation until a complete collection after
     * {@code completeCount}. A rise of the live set or of the headroom by more than
     * {@code toleranceBytes} since the balloon last grew explains it.
     */
    synchronized void gaveBack(long now, long liveBytes, long headroomBytes, long toleranceBytes,
                               long footprintBytes, long completeCount) {
        flapCandidate = liveAtGrowthBytes >= 0 && liveBytes <= liveAtGrowthBytes + toleranceBytes
                && headroomBytes <= headroomAtGrowthBytes + toleranceBytes;
        // A give-back that a rising live set explains is the balloon doing its job: the back-off
        // stays short. One that nothing explains may repeat: each doubles the back-off.
        boolean repeated = now - lastReleaseMs < RESET_MS;
        backoffMs = flapCandidate && repeated ? Math.min(MAX_MS, backoffMs * 2) : MIN_MS;
        lastReleaseMs = now;
        holdUntilMs = now + backoffMs;
        ceilingBytes = footprintBytes;
        ceilingCompleteCount = completeCount;
    }

    /**
     * Ends the hold at once; the ceiling stays until a newer complete collection. For a give-back
     * whose cause recurs while the balloon is small (Shenandoah's own degenerated collections, see
     * Controller.noteCleared): holding would leave the heap exposed to the next one.
     */
    synchronized void endHold() {
        holdUntilMs = 0;
    }

    /**
     * The most the balloon may grow to now, given the driver's {@code targetBytes} and the count
     * of complete collections so far; -1 while the back-off holds.
     */
    synchronized long limitBytes(long now, long targetBytes, long completeCount) {
        if (now < holdUntilMs) {
            return -1;
        }
        if (ceilingBytes != Long.MAX_VALUE && completeCount > ceilingCompleteCount) {
            ceilingBytes = Long.MAX_VALUE; // fresh information since the give-back
        }
        return Math.min(targetBytes, ceilingBytes);
    }

    /**
     * The balloon grew, sized for live set {@code liveBytes} (the lowest estimate its steps saw:
     * collections move the estimate during growth, and Serial's at 1.6 GiB/s read 201 to 235 MiB
     * from one full collection to the next): remember it and the headroom; true when this
     * re-inflation is a flap. Recording a higher estimate than the growth used turned a give-back
     * the live set did force (+15 MiB past it, +32 past what the growth used) into a flap.
     */
    synchronized boolean grew(long liveBytes, long headroomBytes) {
        boolean flap = flapCandidate;
        if (flap) {
            flapCandidate = false;
            flaps++;
        }
        liveAtGrowthBytes = liveBytes;
        headroomAtGrowthBytes = headroomBytes;
        return flap;
    }
}
