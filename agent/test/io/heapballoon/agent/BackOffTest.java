package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** What a give-back leaves behind: the hold, its doubling, the ceiling, and flaps. */
class BackOffTest {
    static final long MIB = 1L << 20;
    static final long TOLERANCE_BYTES = 8 * MIB;
    /** A currentTimeMillis far from 0 (the first give-back is not "repeated"). */
    static final long T0 = 1_700_000_000_000L;

    @Test
    void holdsForTheBackOffThenCapsAtTheBalloonUntilANewerCompleteCollection() {
        BackOff b = new BackOff();
        b.gaveBack(T0 + 1_000, 100 * MIB, 64 * MIB, TOLERANCE_BYTES, 200 * MIB, 3);
        assertEquals(-1, b.limitBytes(T0 + 1_000 + BackOff.MIN_MS - 1, 500 * MIB, 3));
        assertEquals(200 * MIB, b.limitBytes(T0 + 1_000 + BackOff.MIN_MS, 500 * MIB, 3));
        assertEquals(500 * MIB, b.limitBytes(T0 + 1_000 + BackOff.MIN_MS, 500 * MIB, 4));
        assertEquals(500 * MIB, b.limitBytes(T0 + 1_000 + BackOff.MIN_MS, 500 * MIB, 3), "the ceiling stays lifted");
    }

    @Test
    void unexplainedGiveBacksDoubleTheBackOffAndReinflationCountsAFlap() {
        BackOff b = new BackOff();
        assertFalse(b.grew(100 * MIB, 64 * MIB));
        long now = T0;
        long holdMs = BackOff.MIN_MS;
        for (int i = 0; i < 8; i++) {
            b.gaveBack(now, 100 * MIB, 64 * MIB, TOLERANCE_BYTES, 200 * MIB, i);
            holdMs = i == 0 ? BackOff.MIN_MS : Math.min(BackOff.MAX_MS, holdMs * 2);
            assertEquals(-1, b.limitBytes(now + holdMs - 1, 500 * MIB, i + 1), "give-back " + i);
            assertEquals(500 * MIB, b.limitBytes(now + holdMs, 500 * MIB, i + 1), "give-back " + i);
            assertTrue(b.grew(100 * MIB, 64 * MIB), "re-inflation after give-back " + i);
            now += holdMs;
        }
        assertEquals(BackOff.MAX_MS, holdMs);
        assertEquals(8, b.flaps());
        assertFalse(b.grew(100 * MIB, 64 * MIB), "one flap per give-back");
    }

    @Test
    void aRiseOfTheLiveSetOrHeadroomExplainsAGiveBack() {
        BackOff b = new BackOff();
        b.grew(100 * MIB, 64 * MIB);
        b.gaveBack(T0, 100 * MIB + TOLERANCE_BYTES + 1, 64 * MIB, TOLERANCE_BYTES, 200 * MIB, 0);
        assertFalse(b.grew(120 * MIB, 64 * MIB));
        b.gaveBack(T0 + 1_000, 120 * MIB, 64 * MIB + TOLERANCE_BYTES + 1, TOLERANCE_BYTES, 200 * MIB, 1);
        assertEquals(-1, b.limitBytes(T0 + 1_000 + BackOff.MIN_MS - 1, 500 * MIB, 2), "explained: the back-off stays short");
        assertEquals(500 * MIB, b.limitBytes(T0 + 1_000 + BackOff.MIN_MS, 500 * MIB, 2));
        assertFalse(b.grew(120 * MIB, 80 * MIB));
        assertEquals(0, b.flaps());
    }

    @Test
    void aGiveBackLongAfterThePreviousOneStartsAgainFromTheShortestBackOff() {
        BackOff b = new BackOff();
        b.grew(100 * MIB, 64 * MIB);
        b.gaveBack(T0, 100 * MIB, 64 * MIB, TOLERANCE_BYTES, 200 * MIB, 0);
        b.grew(100 * MIB, 64 * MIB);
        long later = T0 + BackOff.RESET_MS;
        b.gaveBack(later, 100 * MIB, 64 * MIB, TOLERANCE_BYTES, 200 * MIB, 1);
        assertEquals(500 * MIB, b.limitBytes(later + BackOff.MIN_MS, 500 * MIB, 2));
    }

    @Test
    void endingTheHoldKeepsTheCeilingUntilANewerCompleteCollection() {
        BackOff b = new BackOff();
        b.gaveBack(T0, 100 * MIB, 64 * MIB, TOLERANCE_BYTES, 0, 7);
        assertEquals(-1, b.limitBytes(T0 + 1, 500 * MIB, 7));
        b.endHold();
        assertEquals(0, b.limitBytes(T0 + 1, 500 * MIB, 7), "no hold, but no growth before a newer complete collection");
        assertEquals(500 * MIB, b.limitBytes(T0 + 1, 500 * MIB, 8));
    }
}
