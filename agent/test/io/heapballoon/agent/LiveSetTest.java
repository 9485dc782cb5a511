package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.management.MemoryUsage;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;

/** The live-set estimate: which collections count, per collector, and how samples fold in. */
class LiveSetTest {
    static final long MIB = 1L << 20;

    static Map<String, MemoryUsage> pools(Object... nameAndMib) {
        Map<String, MemoryUsage> m = new LinkedHashMap<>();
        for (int i = 0; i < nameAndMib.length; i += 2) {
            long used = ((Integer) nameAndMib[i + 1]) * MIB;
            m.put((String) nameAndMib[i], new MemoryUsage(0, used, used, -1));
        }
        return m;
    }

    @Test
    void classifiesEveryCollectorsBeans() {
        for (String complete : new String[] {"MarkSweepCompact", "PS MarkSweep", "G1 Old Generation"}) {
            assertEquals(LiveSet.Kind.COMPLETE, LiveSet.classify(complete), complete);
        }
        for (String cycle : new String[] {"G1 Concurrent GC", "ZGC Cycles", "ZGC Major Cycles", "Shenandoah Cycles"}) {
            assertEquals(LiveSet.Kind.CONCURRENT, LiveSet.classify(cycle), cycle);
        }
        for (String young : new String[] {"Copy", "PS Scavenge", "G1 Young Generation", "ZGC Minor Cycles"}) {
            assertEquals(LiveSet.Kind.PARTIAL, LiveSet.classify(young), young);
        }
        for (String pause : new String[] {"ZGC Pauses", "ZGC Minor Pauses", "ZGC Major Pauses", "Shenandoah Pauses"}) {
            assertEquals(LiveSet.Kind.IGNORE, LiveSet.classify(pause), pause);
        }
        assertEquals(LiveSet.Kind.COMPLETE, LiveSet.classify("Some Future Collector"));
    }

    @Test
    void youngCollectionsNeverRaiseTheEstimate() {
        Set<String> heap = Set.of("Eden Space", "Survivor Space", "Tenured Gen");
        LiveSet live = new LiveSet("Serial", false, 0);
        LiveSet.Sample full = live.samples("MarkSweepCompact", pools(), pools("Eden Space", 0, "Survivor Space", 0,
                "Tenured Gen", 300), heap)[0];
        assertEquals(300 * MIB - 100 * MIB, live.record(full, 100 * MIB, 1));  // balloon subtracted
        // promoted garbage: the old generation grows, the estimate does not
        LiveSet.Sample young = live.samples("Copy", pools(), pools("Survivor Space", 5, "Tenured Gen", 500), heap)[0];
        assertEquals(-1, live.record(young, 100 * MIB, 2));
        assertEquals(200 * MIB, live.estimateBytes());
        // ...but an upper bound below it lowers it
        LiveSet.Sample lower = live.samples("Copy", pools(), pools("Survivor Space", 0, "Tenured Gen", 250), heap)[0];
        live.record(lower, 100 * MIB, 3);
        assertEquals(150 * MIB, live.estimateBytes());
        assertEquals(1, live.completeCount());
    }

    @Test
    void beforeAnyCompleteCollectionTheNewestYoungFigureCounts() {
        // The application is still loading its data: an early, small figure must not stick.
        Set<String> heap = Set.of("G1 Eden Space", "G1 Survivor Space", "G1 Old Gen");
        LiveSet live = new LiveSet("G1", true, 0);
        assertEquals(-1, live.record(live.samples("G1 Young Generation", pools(),
                pools("G1 Survivor Space", 7, "G1 Old Gen", 30), heap)[0], 0, 1));
        assertEquals(37 * MIB, live.estimateBytes());
        live.record(live.samples("G1 Young Generation", pools(), pools("G1 Survivor Space", 10, "G1 Old Gen", 180), heap)[0], 0, 2);
        assertEquals(190 * MIB, live.estimateBytes());
        assertEquals("G1 Young Generation (upper bound)", live.source());
        // once a complete collection has counted, young figures may only lower it again
        live.record(live.samples("G1 Old Generation", pools(), pools("G1 Old Gen", 150), heap)[0], 0, 3);
        live.record(live.samples("G1 Young Generation", pools(), pools("G1 Survivor Space", 10, "G1 Old Gen", 400), heap)[0], 0, 4);
        assertEquals(150 * MIB, live.estimateBytes());
    }

    @Test
    void concurrentCyclesTakeTheSmallestOfTheLastFewSeconds() {
        Set<String> heap = Set.of("Shenandoah");
        LiveSet live = new LiveSet("Shenandoah", false, 0);
        // cycles 6 s apart: the smaller of the last two
        assertEquals(300 * MIB, live.record(live.samples("Shenandoah Cycles", pools(), pools("Shenandoah", 300), heap)[0], 0, 0));
        assertEquals(220 * MIB, live.record(live.samples("Shenandoah Cycles", pools(), pools("Shenandoah", 220), heap)[0], 0, 6_000));
        assertEquals(220 * MIB, live.record(live.samples("Shenandoah Cycles", pools(), pools("Shenandoah", 400), heap)[0], 0, 12_000));
        assertEquals(400 * MIB, live.record(live.samples("Shenandoah Cycles", pools(), pools("Shenandoah", 410), heap)[0], 0, 18_000));
        // cycles every 300 ms (a busy service): the smallest of the last 5 s, so allocation during one cycle is not live
        long t = 30_000;
        for (int mib : new int[] {240, 310, 260, 290}) {
            live.record(live.samples("Shenandoah Cycles", pools(), pools("Shenandoah", mib), heap)[0], 0, t += 300);
        }
        assertEquals(240 * MIB, live.estimateBytes());
        // a real rise shows in every sample: within 5 s it is the estimate
        for (int i = 0; i < 20; i++) {
            live.record(live.samples("Shenandoah Cycles", pools(), pools("Shenandoah", 700 + i % 3), heap)[0], 0, t += 300);
        }
        assertEquals(700 * MIB, live.estimateBytes());
        assertEquals(0, live.samples("Shenandoah Pauses", pools(), pools("Shenandoah", 1), heap).length);
    }

    @Test
    void g1OnJdk17InfersAConcurrentCycleFromOldGenFallingBetweenCollections() {
        Set<String> heap = Set.of("G1 Eden Space", "G1 Survivor Space", "G1 Old Gen");
        LiveSet live = new LiveSet("G1", false, MIB);
        LiveSet.Sample[] first = live.samples("G1 Young Generation", pools("G1 Old Gen", 400),
                pools("G1 Eden Space", 0, "G1 Survivor Space", 10, "G1 Old Gen", 600), heap);
        assertEquals(1, first.length);
        // Remark freed old regions between the two young collections: 600 → 250 before this one
        LiveSet.Sample[] next = live.samples("G1 Young Generation",
                pools("G1 Eden Space", 300, "G1 Survivor Space", 10, "G1 Old Gen", 250),
                pools("G1 Eden Space", 0, "G1 Survivor Space", 12, "G1 Old Gen", 260), heap);
        assertEquals(2, next.length);
        assertEquals(LiveSet.Kind.PARTIAL, next[0].kind);  // before the mixed phase: an upper bound only
        assertEquals(260 * MIB, next[0].usedBytes);  // old + survivors before, eden left out
        assertEquals(LiveSet.Kind.PARTIAL, next[1].kind);
        // JDK 20+: the G1 Concurrent GC bean reports the cycle itself; nothing is inferred
        LiveSet modern = new LiveSet("G1", true, MIB);
        modern.samples("G1 Young Generation", pools("G1 Old Gen", 400), pools("G1 Old Gen", 600), heap);
        assertEquals(1, modern.samples("G1 Young Generation", pools("G1 Old Gen", 250), pools("G1 Old Gen", 260), heap).length);
        LiveSet.Sample remark = modern.samples("G1 Concurrent GC", pools(),
                pools("G1 Eden Space", 40, "G1 Survivor Space", 10, "G1 Old Gen", 240), heap)[0];
        assertEquals(250 * MIB, remark.usedBytes);  // eden (new allocations) left out
        assertEquals(LiveSet.Kind.PARTIAL, remark.kind);
    }

    /** JDK 25 at 2 GiB/s: Remark saw 500 MiB where 200 MiB were live; the mixed phase shows the truth. */
    @Test
    void g1TakesTheLiveSetAfterTheMixedPhaseNotAtRemark() {
        Set<String> heap = Set.of("G1 Eden Space", "G1 Survivor Space", "G1 Old Gen");
        for (boolean modern : new boolean[] {true, false}) {
            LiveSet live = new LiveSet("G1", modern, MIB);
            live.record(live.samples("G1 Old Generation", pools(), pools("G1 Old Gen", 200), heap)[0], 0, 1);
            live.record(live.samples("G1 Young Generation", pools("G1 Old Gen", 480),
                    pools("G1 Survivor Space", 10, "G1 Old Gen", 500), heap)[0], 0, 2);
            if (modern) {
                LiveSet.Sample remark = live.samples("G1 Concurrent GC", pools(), pools("G1 Old Gen", 500), heap)[0];
                assertEquals(-1, live.record(remark, 0, 3));  // not live: the garbage is still there
            }
            // Prepare Mixed (on JDK 17 it also reveals the cycle: old gen fell from 500 to 495)
            for (LiveSet.Sample s : live.samples("G1 Young Generation", pools("G1 Old Gen", 495),
                    pools("G1 Survivor Space", 10, "G1 Old Gen", 505), heap)) {
                assertEquals(-1, live.record(s, 0, 4));
            }
            assertEquals(200 * MIB, live.estimateBytes());
            // two mixed collections free old regions
            for (int old : new int[] {400, 300}) {
                LiveSet.Sample[] mixed = live.samples("G1 Young Generation", pools("G1 Old Gen", old + 105),
                        pools("G1 Survivor Space", 10, "G1 Old Gen", old), heap);
                assertEquals(1, mixed.length);
                live.record(mixed[0], 0, 4);
            }
            // the first young collection that frees no old region ends the phase: its figures count
            LiveSet.Sample[] end = live.samples("G1 Young Generation", pools("G1 Old Gen", 300),
                    pools("G1 Survivor Space", 8, "G1 Old Gen", 212), heap);
            assertEquals(1, end.length); // 300 → 212 is a drop: still mixed
            live.record(end[0], 0, 4);
            end = live.samples("G1 Young Generation", pools("G1 Old Gen", 212),
                    pools("G1 Survivor Space", 8, "G1 Old Gen", 214), heap);
            assertEquals(2, end.length);
            assertEquals("G1 mixed phase", end[0].source);
            // 222 MiB, capped by the lowest upper bound since the cycle: the last mixed collection's 220
            assertEquals(220 * MIB, live.record(end[0], 0, 5));
            assertEquals(220 * MIB, live.estimateBytes());
            assertEquals(2, live.completeCount());
        }
    }
}
