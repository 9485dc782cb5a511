package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;

/** The balloon as a collection saw it: chunks added after the collection ended are not in it. */
class BalloonTest {
    @Test
    void chunksAddedAfterACollectionAreNotSubtractedFromIt() {
        AtomicLong uptimeMs = new AtomicLong(1000);
        ChunkGeometry g = ChunkGeometry.forCollector("Serial", 0, 16);
        Balloon b = new Balloon(g, AddressSource.NONE, uptimeMs::get);
        b.add(new byte[16]);
        uptimeMs.set(2000);
        b.add(new byte[16]);
        b.add(new byte[16]);
        assertEquals(3 * g.footprintBytes, b.footprintBytes());
        assertEquals(0, b.addedAfterBytes(2000));                      // a collection ending at 2000 saw all three
        assertEquals(2 * g.footprintBytes, b.addedAfterBytes(1500));   // ...one ending at 1500 only the first
        assertEquals(3 * g.footprintBytes, b.addedAfterBytes(999));
        b.shrinkTo(g.footprintBytes);
        assertEquals(0, b.addedAfterBytes(1500));
    }
}
