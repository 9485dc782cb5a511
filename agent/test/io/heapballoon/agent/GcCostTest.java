package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** The GC-cost bound acts only after it has been exceeded for SUSTAIN_MS without a break. */
class GcCostTest {
    static final long WINDOW_MS = 20_000;
    static final long TICK_MS = 50;

    /** A pause-time counter that grows by share × elapsed time. */
    static final class Pauses {
        long pauseMs;
    }

    /** Ticks from {@code fromMs} for {@code forMs} at {@code share}; returns the first judgement ≥ 0 (its time in [1]). */
    static double[] run(GcCost cost, Pauses p, long fromMs, long forMs, double share, boolean balloon) {
        for (long t = fromMs; t < fromMs + forMs; t += TICK_MS) {
            p.pauseMs = (long) (t * share);
            double judged = cost.sustainedOverBound(t, balloon);
            if (judged >= 0) {
                return new double[] {judged, t};
            }
        }
        return new double[] {-1, -1};
    }

    @Test
    void actsAfterTheBoundIsExceededForSustainMsAndThenStartsOver() {
        Pauses p = new Pauses();
        GcCost cost = new GcCost(() -> p.pauseMs, WINDOW_MS);
        // A balloon, 30 % of wall time in pauses: far above the default baseline + EXTRA_SHARE.
        double[] first = run(cost, p, 0, 60_000, 0.30, true);
        assertTrue(first[0] > GcCost.DEFAULT_BASELINE + GcCost.EXTRA_SHARE, "share " + first[0]);
        // The share is known after a window (less a second); it then must hold SUSTAIN_MS.
        assertEquals(WINDOW_MS - 1000 + GcCost.SUSTAIN_MS, first[1], TICK_MS);
        double[] second = run(cost, p, (long) first[1] + TICK_MS, 60_000, 0.30, true);
        assertEquals(first[1] + GcCost.SUSTAIN_MS, second[1], TICK_MS, "the judgement starts over");
    }

    @Test
    void withoutABalloonItNeverActsAndTheClockStartsAgain() {
        Pauses p = new Pauses();
        GcCost cost = new GcCost(() -> p.pauseMs, WINDOW_MS);
        run(cost, p, 0, WINDOW_MS, 0.30, true); // the window fills; over the bound since ~19 s
        assertEquals(-1, run(cost, p, WINDOW_MS, GcCost.SUSTAIN_MS - 2000, 0.30, false)[0], "no balloon: never");
        double[] judged = run(cost, p, WINDOW_MS + GcCost.SUSTAIN_MS - 2000, 60_000, 0.30, true);
        assertEquals(WINDOW_MS + GcCost.SUSTAIN_MS - 2000 + GcCost.SUSTAIN_MS, judged[1], TICK_MS);
    }
}
