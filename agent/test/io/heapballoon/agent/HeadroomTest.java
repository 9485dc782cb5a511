package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
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

    @Test
    void shenandoahInflatesOnlyAboveItsTriggerZoneAndG1KeepsItsReserve() {
        long heap = 1024 * MIB;
        long zone = heap * 15 / 100; // ShenandoahMinFreeThreshold 10 % + ShenandoahEvacReserve 5 %
        // H/2 above the zone where Shenandoah starts a cycle (the old margin, 2 x 64 MiB, was inside it)
        assertEquals(zone + 32 * MIB, Headroom.inflateMarginBytes(64 * MIB, 64 * MIB, 0, zone));
        assertTrue(Headroom.inflateMarginBytes(64 * MIB, 64 * MIB, 0, zone) > 2 * 64 * MIB);
        // a slower cycle raises H (R x 3 x T): the margin grows with it
        assertEquals(zone + 100 * MIB, Headroom.inflateMarginBytes(200 * MIB, 64 * MIB, 0, zone));
        // G1: H/2, never less than its to-space reserve; ZGC: H/2
        assertEquals(heap / 10, Headroom.inflateMarginBytes(64 * MIB, 64 * MIB, heap / 10, 0));
        assertEquals(200 * MIB, Headroom.inflateMarginBytes(400 * MIB, 64 * MIB, heap / 10, 0));
        assertEquals(32 * MIB, Headroom.inflateMarginBytes(64 * MIB, 64 * MIB, 0, 0));
    }

    @Test
    void anEmptyShenandoahBalloonStartsOnlyInTheFirstQuarterOfTheHeapsFill() {
        long heap = 1024 * MIB;
        long margin = 186 * MIB; // 154 MiB zone + H/2 of 64 MiB
        // 200 MiB live: the fill runs from 200 to 838 MiB used; its first quarter ends at 359.5 MiB
        assertTrue(Headroom.inFirstQuarterOfFill(209 * MIB, 200 * MIB, heap, margin), "just after a cycle");
        assertTrue(Headroom.inFirstQuarterOfFill(359 * MIB, 200 * MIB, heap, margin));
        assertFalse(Headroom.inFirstQuarterOfFill(360 * MIB, 200 * MIB, heap, margin));
        assertFalse(Headroom.inFirstQuarterOfFill(813 * MIB, 200 * MIB, heap, margin), "0.5 s before the heap runs out");
    }
}
