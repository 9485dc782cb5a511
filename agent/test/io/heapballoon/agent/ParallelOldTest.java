package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import org.junit.jupiter.api.Test;

/** Parallel's promotion estimate from the perf-data format: synthetic buffers and this JVM's own file. */
class ParallelOldTest {
    /** A perf-data buffer in {@code order} with the long entries {@code names} = {@code values}. */
    static ByteBuffer perfData(ByteOrder order, String[] names, long[] values) {
        ByteBuffer b = ByteBuffer.allocate(4096).order(order);
        b.order(ByteOrder.BIG_ENDIAN).putInt(0, ParallelOld.MAGIC).order(order);
        b.put(4, (byte) (order == ByteOrder.LITTLE_ENDIAN ? 1 : 0));
        b.putInt(24, 64).putInt(28, names.length);
        int entry = 64;
        for (int i = 0; i < names.length; i++) {
            byte[] name = (names[i] + "\0").getBytes(StandardCharsets.US_ASCII);
            int dataAt = 24 + (name.length + 7) / 8 * 8;
            int length = dataAt + 8;
            b.putInt(entry, length).putInt(entry + 4, 20).putInt(entry + 8, 0).put(entry + 12, (byte) 'J')
                    .putInt(entry + 16, dataAt);
            for (int k = 0; k < name.length; k++) { // the name starts at entry + 20
                b.put(entry + 20 + k, name[k]);
            }
            b.putLong(entry + dataAt, values[i]);
            entry += length;
        }
        return b;
    }

    @Test
    void findsTheCounterInEitherByteOrder() {
        String[] names = {"sun.gc.policy.avgPromotedAvg", ParallelOld.COUNTER, "sun.gc.policy.avgPromotedPadded"};
        long[] values = {11, 141L << 20, 13};
        for (ByteOrder order : new ByteOrder[] {ByteOrder.LITTLE_ENDIAN, ByteOrder.BIG_ENDIAN}) {
            ByteBuffer b = perfData(order, names, values);
            int at = ParallelOld.findLong(b, ParallelOld.COUNTER);
            assertTrue(at > 0, order.toString());
            assertEquals(141L << 20, b.order(order).getLong(at), order.toString());
            assertEquals(-1, ParallelOld.findLong(b, "sun.gc.policy.avgPromotedAvgX"));
        }
    }

    @Test
    void garbageIsNotACounter() {
        assertEquals(-1, ParallelOld.findLong(ByteBuffer.allocate(16), ParallelOld.COUNTER));
        ByteBuffer b = perfData(ByteOrder.LITTLE_ENDIAN, new String[] {ParallelOld.COUNTER}, new long[] {1});
        b.putInt(64, 0).putInt(64 + 4, 4000); // a zero-length entry whose name lies past the end
        assertEquals(-1, ParallelOld.findLong(b, ParallelOld.COUNTER));
    }

    @Test
    void readsThisJvmsOwnPerfData() throws Exception {
        // Every HotSpot JVM with perf data (the default) has this counter; the file is the one ParallelOld maps.
        Path file = Paths.get("/tmp", "hsperfdata_" + System.getProperty("user.name"),
                Long.toString(ProcessHandle.current().pid()));
        try (FileChannel channel = FileChannel.open(file, StandardOpenOption.READ)) {
            ByteBuffer b = channel.map(FileChannel.MapMode.READ_ONLY, 0, channel.size());
            int at = ParallelOld.findLong(b, "java.cls.loadedClasses");
            assertTrue(at > 0);
            long loaded = b.order(b.get(4) == 1 ? ByteOrder.LITTLE_ENDIAN : ByteOrder.BIG_ENDIAN).getLong(at);
            assertTrue(loaded > 100, "classes loaded: " + loaded);
        }
    }

    @Test
    void theFallbackEstimateIsPsPaddedAverage() {
        // Weights 1/n for the first samples, then AdaptiveSizePolicyWeight (10 %); padding PromotedPadding (3).
        ParallelOld ps = new ParallelOld("Parallel");
        ps.young(100L << 20);
        assertEquals(100L << 20, ps.fallbackEstimateBytes()); // average 100, deviation 0
        ps.young(0);
        assertEquals(125L << 20, ps.fallbackEstimateBytes()); // average 50, deviation 25
        for (int i = 0; i < 200; i++) {
            ps.young(0);
        }
        assertTrue(ps.fallbackEstimateBytes() < 1L << 20, "decays with quiet young collections");
    }

    @Test
    void chunksAreLeftToTheNextYoungCollectionOnlyWhileItsEstimateStaysInTheFreeSpace() {
        ParallelOld ps = new ParallelOld("Parallel"); // the fallback estimate here
        long mib = 1L << 20;
        for (int i = 0; i < 300; i++) {
            ps.young(20 * mib);
        }
        assertEquals(20 * mib, ps.fallbackEstimateBytes(), (double) mib);
        // 2 × 20 + (2 + 4 × 0.1) × 24 = 97.6 MiB after the young collection that promotes 24 MiB of chunks
        assertFalse(ps.mustPlace(24 * mib, 200 * mib, 100), "room for it");
        assertTrue(ps.mustPlace(24 * mib, 90 * mib, 100), "the estimate would pass the free space");
        // a young JVM weighs its n-th young collection 1/n: 40 + (2 + 4 × 0.5) × 24 = 136 MiB
        assertTrue(ps.mustPlace(24 * mib, 120 * mib, 1));
        assertFalse(ps.mustPlace(24 * mib, 120 * mib, 100));
        assertFalse(ps.mustPlace(0, 10 * mib, 100), "nothing new to place");
        assertFalse(new ParallelOld("Serial").mustPlace(24 * mib, 10 * mib, 100), "Parallel only");
    }

    @Test
    void smallGrowthWaitsOnlyWhileTheEstimateBinds() {
        ParallelOld ps = new ParallelOld("Parallel"); // in JUnit's (not Parallel) JVM: the fallback estimate
        ps.young(150L << 20);
        long mib = 1L << 20;
        assertEquals(158 * mib, ps.reserveBytes(8 * mib));
        assertTrue(ps.tooSmallToPlace(376 * mib, 400 * mib, 512 * mib, 8 * mib, 80 * mib), "24 MiB < 400/16");
        assertFalse(ps.tooSmallToPlace(368 * mib, 400 * mib, 512 * mib, 8 * mib, 80 * mib), "32 MiB is worth it");
        assertFalse(ps.tooSmallToPlace(248 * mib, 400 * mib, 256 * mib, 8 * mib, 80 * mib), "the target binds");
        assertFalse(ps.tooSmallToPlace(376 * mib, 400 * mib, 512 * mib, 8 * mib, 200 * mib), "H + H/4 binds");
        assertFalse(new ParallelOld("Serial").tooSmallToPlace(376 * mib, 400 * mib, 512 * mib, 8 * mib, 80 * mib));
    }

    @Test
    void aBurstOfPromotionIntoAFullOldGenerationIsNamed() {
        long mib = 1L << 20;
        ParallelOld ps = new ParallelOld("Parallel");
        assertEquals(null, ps.burst("PS Scavenge", 43 * mib, 62 * mib, 8 * mib, 2 * mib), "no average yet");
        for (int i = 0; i < 20; i++) {
            ps.young(2 * mib);
        }
        String why = ps.burst("PS Scavenge", 43 * mib, 62 * mib, 8 * mib, 2 * mib); // the JDK 21 grow phase's numbers
        assertTrue(why != null && why.contains("promoted 43 MiB") && why.contains("62 MiB left free"), why);
        assertEquals(null, ps.burst("PS Scavenge", 43 * mib, 90 * mib, 8 * mib, 2 * mib), "room for another");
        assertEquals(null, ps.burst("PS Scavenge", 6 * mib, 2 * mib, 8 * mib, 0), "under a chunk");
        for (int i = 0; i < 40; i++) {
            ps.young(16 * mib); // 1.6 GiB/s: the live set turns over
        }
        assertEquals(null, ps.burst("PS Scavenge", 43 * mib, 62 * mib, 8 * mib, 2 * mib), "under 4 x the average");
        ParallelOld busy = new ParallelOld("Parallel");
        busy.young(2 * mib);
        assertEquals(null, busy.burst("PS Scavenge", 80 * mib, 20 * mib, 8 * mib, 150 * mib), "under 4 s of the peak rate");
        assertEquals(null, new ParallelOld("G1").burst("G1 Young Generation", 430 * mib, 0, 8 * mib, 0));
    }

    @Test
    void otherCollectorsReserveNothingAndAllocateFreely() {
        ParallelOld g1 = new ParallelOld("G1");
        assertEquals(0, g1.reserveBytes(8L << 20));
        assertEquals(Long.MAX_VALUE, g1.edenRoomBytes(0));
    }
}
