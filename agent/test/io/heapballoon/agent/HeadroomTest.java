package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** The headroom law (docs/agent.md): what each collector needs at an allocation rate, and learning. */
class HeadroomTest {
    static final long MIB = 1L << 20;

    @Test
    void eachCollectorNeedsWhatItsRatesSay() {
        double alloc = 1600.0 * MIB;
        double promo = 100.0 * MIB;
        // G1: 100 ms of allocation + 250 ms of promotion
        assertEquals(160 * MIB + 25 * MIB, Headroom.needBytes("G1", alloc, promo, 0));
        // ZGC and Shenandoah: 3 concurrent cycles of allocation (a 20 ms cycle here)
        assertEquals(96 * MIB, Headroom.needBytes("Shenandoah", alloc, promo, 20));
        assertEquals(96 * MIB, Headroom.needBytes("ZGC", alloc, promo, 20));
        // Serial and Parallel: 250 ms of promotion; allocation alone does not compete with the balloon
        assertEquals(25 * MIB, Headroom.needBytes("Serial", alloc, promo, 0));
        assertEquals(25 * MIB, Headroom.needBytes("Parallel", alloc, promo, 0));
        assertEquals(0, Headroom.needBytes("Parallel", alloc, 0, 0));
    }

    @Test
    void aSoftClearOrAGcCostGiveBackBuysMoreHeadroomUpToAnEighthOfTheHeap() {
        HeapStats stats = new HeapStats();
        Headroom h = new Headroom(stats, Options.parse(""));
        long before = h.bytes();
        assertTrue(before >= Math.max(h.baseBytes(), h.needBytes()), before + " below base and need");
        long afterClear = h.learnFromClear();
        assertTrue(afterClear >= before + Math.max(before / 2, 16 * MIB) - MIB, afterClear + " after " + before);
        long afterCost = h.learnFromCost(32 * MIB);
        assertTrue(afterCost >= afterClear + 31 * MIB, afterCost + " after " + afterClear);
        for (int i = 0; i < 40; i++) {
            h.learnFromClear();
        }
        assertTrue(h.learnedBytes() <= stats.maxBytes() / 8);
    }
}
