package io.heapballoon.agent;

/**
 * Owns the size of one balloon chunk: a byte[] whose whole object (header + payload) exactly
 * fills the collector's allocation unit (G1 humongous regions, ZGC 2 MiB large-page granules),
 * about 8 MiB, so no heap is wasted around it; with Shenandoah, one region. {@code footprintBytes} is what it occupies.
 */
final class ChunkGeometry {
    static final long NOMINAL_CHUNK_BYTES = 8L << 20;
    static final long ZGC_GRANULE_BYTES = 2L << 20;

    final int payloadBytes;
    final long footprintBytes;

    private ChunkGeometry(int payloadBytes, long footprintBytes) {
        this.payloadBytes = payloadBytes;
        this.footprintBytes = footprintBytes;
    }

    static ChunkGeometry forCollector(String gc, long regionBytes, int arrayHeaderBytes) {
        long unit = 0;
        if ("G1".equals(gc) && regionBytes > 0) {
            unit = regionBytes;
        } else if ("ZGC".equals(gc)) {
            unit = ZGC_GRANULE_BYTES;
        }
        if ("Shenandoah".equals(gc) && regionBytes > 0) {
            // Exactly one region: an object of the region's size is not humongous there, so it
            // needs one empty region, not a run of contiguous ones. An 8 MiB chunk (16 regions of
            // a 1 GiB heap) failed to allocate in a fragmented heap at 1.6 GiB/s ("Failed to
            // allocate Shared, 8192K"), and the degenerated collection that followed cleared every
            // soft reference. A full region has no garbage, so no cycle evacuates (moves) it.
            return new ChunkGeometry((int) (regionBytes - arrayHeaderBytes), regionBytes);
        }
        long footprint = NOMINAL_CHUNK_BYTES;
        if (unit > 0) {
            long k = Math.max(1, Math.round((double) NOMINAL_CHUNK_BYTES / unit));
            footprint = k * unit;
        }
        return new ChunkGeometry((int) (footprint - arrayHeaderBytes), footprint);
    }
}
