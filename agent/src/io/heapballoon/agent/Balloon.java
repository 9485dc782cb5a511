package io.heapballoon.agent;

import java.lang.management.ManagementFactory;
import java.lang.ref.Reference;
import java.lang.ref.ReferenceQueue;
import java.lang.ref.SoftReference;
import java.lang.ref.WeakReference;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.function.LongSupplier;

/**
 * Owns the balloon: its chunks (zeroed byte[] held ONLY through SoftReferences, so the JVM
 * clears them before it would throw OutOfMemoryError), growing and shrinking it (LIFO), the
 * chunks' addresses and epoch, and direct release of their pages. Thread-safe: the agent
 * thread and the GC-notification thread both call in.
 */
final class Balloon {
    /** At ~70 bytes of JSON per chunk this keeps a state line well under the 1 MiB limit. */
    static final int MAX_CHUNKS = 12000;

    /** One chunk: the soft reference to its array plus what the driver is told about it. */
    static final class Chunk extends SoftReference<byte[]> {
        final long id;
        final int len;
        final long footprintBytes;
        /** JVM uptime when the chunk was added: the clock of GcInfo's start and end times. */
        final long addedUptimeMs;
        long addr;
        boolean released;

        Chunk(long id, byte[] array, ReferenceQueue<byte[]> queue, long footprintBytes, long addedUptimeMs) {
            super(array, queue);
            this.id = id;
            this.len = array.length;
            this.footprintBytes = footprintBytes;
            this.addedUptimeMs = addedUptimeMs;
        }
    }

    final ChunkGeometry geometry;
    private final AddressSource addresses;
    // Sized once: a growing list leaves its old arrays as garbage among the chunks, and Serial
    // then slides the chunks above them at its next full compaction.
    private final List<Chunk> chunks = new ArrayList<>(MAX_CHUNKS);
    private final ReferenceQueue<byte[]> queue = new ReferenceQueue<>();
    /** Chunks dropped but maybe not yet collected: still counted in "heap used after GC". */
    private final List<WeakReference<byte[]>> dropped = new ArrayList<>();
    private long nextId = 1;
    private long epoch;
    private long footprintBytes;
    private boolean direct;
    private boolean releaseErrorLogged;

    private final LongSupplier uptimeMs;

    Balloon(ChunkGeometry geometry, AddressSource addresses) {
        this(geometry, addresses, ManagementFactory.getRuntimeMXBean()::getUptime);
    }

    Balloon(ChunkGeometry geometry, AddressSource addresses, LongSupplier uptimeMs) {
        this.geometry = geometry;
        this.addresses = addresses;
        this.uptimeMs = uptimeMs;
    }

    synchronized long footprintBytes() {
        return footprintBytes;
    }

    synchronized int chunkCount() {
        return chunks.size();
    }

    synchronized long epoch() {
        return epoch;
    }

    String addressMode() {
        return addresses.mode();
    }

    boolean canRelease() {
        return addresses.canRelease();
    }

    /** Adds a freshly allocated zeroed array as the newest chunk. */
    synchronized void add(byte[] array) {
        add(array, true);
    }

    /**
     * Adds a chunk; {@code releaseNow} false leaves its pages to {@link #releasePending} (Parallel:
     * a chunk in eden is moved at once, and a released one costs a page fault per page to move).
     */
    synchronized void add(byte[] array, boolean releaseNow) {
        Chunk c = new Chunk(nextId++, array, queue, geometry.footprintBytes, uptimeMs.getAsLong());
        c.addr = addresses.payloadAddress(array, 0);
        if (direct && releaseNow) {
            releasePages(c, array);
        }
        chunks.add(c);
        footprintBytes += c.footprintBytes;
        epoch++;
    }

    /**
     * Bytes of the held chunks added after {@code uptimeMs}: a collection that ended then did
     * not see them, so they must not be subtracted from its figures (GC notifications arrive
     * late, often while the balloon is growing; subtracting them made the live set read 0).
     */
    synchronized long addedAfterBytes(long uptimeMs) {
        long sum = 0;
        for (int i = chunks.size() - 1; i >= 0 && chunks.get(i).addedUptimeMs > uptimeMs; i--) {
            sum += chunks.get(i).footprintBytes;
        }
        return sum;
    }

    /** Drops newest chunks until the footprint is at most {@code limitBytes}; bytes dropped. */
    synchronized long shrinkTo(long limitBytes) {
        long dropped = 0;
        while (footprintBytes > limitBytes && !chunks.isEmpty()) {
            dropped += drop(chunks.size() - 1);
        }
        return dropped;
    }

    /** Drops the {@code n} newest chunks; bytes dropped. */
    synchronized long dropNewest(int n) {
        long dropped = 0;
        for (int i = 0; i < n && !chunks.isEmpty(); i++) {
            dropped += drop(chunks.size() - 1);
        }
        return dropped;
    }

    private long drop(int index) {
        Chunk c = chunks.remove(index);
        byte[] array = c.get();
        if (array != null) {
            dropped.add(new WeakReference<>(array));
        }
        array = null;
        c.clear();
        footprintBytes -= c.footprintBytes;
        epoch++;
        return c.footprintBytes;
    }

    /**
     * Bytes of dropped chunks that the last GC has not yet collected (checked with refersTo, which
     * keeps nothing alive), so they are not mistaken for application data.
     */
    synchronized long droppedNotCollectedBytes() {
        dropped.removeIf(ref -> ref.refersTo(null));
        return dropped.size() * geometry.footprintBytes;
    }

    /**
     * Calls get() on every chunk so the soft-reference LRU policy sees it as just used, and
     * forgets chunks the JVM has cleared (also those announced on the queue). Bytes cleared.
     */
    synchronized long touchAndCollectCleared() {
        long cleared = 0;
        Reference<? extends byte[]> ref;
        while ((ref = queue.poll()) != null) {
            int i = chunks.indexOf(ref);
            if (i >= 0) {
                cleared += drop(i);
            }
        }
        for (Iterator<Chunk> it = chunks.iterator(); it.hasNext();) {
            Chunk c = it.next();
            if (c.get() == null) {
                it.remove();
                footprintBytes -= c.footprintBytes;
                cleared += c.footprintBytes;
                epoch++;
            }
        }
        return cleared;
    }

    /** Re-reads every chunk's address (after a GC that may move objects); true if any moved. */
    synchronized boolean refreshAddresses() {
        boolean moved = false;
        for (Chunk c : chunks) {
            byte[] array = c.get();
            if (array == null) {
                continue;
            }
            long addr = addresses.payloadAddress(array, c.addr);
            if (addr != c.addr) {
                moved = true;
                c.addr = addr;
                c.released = false;
                if (direct) {
                    releasePages(c, array);
                }
            }
        }
        if (moved) {
            epoch++;
        }
        return moved;
    }

    /** Switches direct release on or off; turning it on releases every chunk not yet released. */
    synchronized void setDirect(boolean on) {
        boolean was = direct;
        direct = on && addresses.canRelease();
        if (direct && !was) {
            releasePending();
        }
    }

    /** With direct release on, releases every chunk not yet released. */
    synchronized void releasePending() {
        if (!direct) {
            return;
        }
        for (Chunk c : chunks) {
            byte[] array = c.get();
            if (array != null && !c.released) {
                releasePages(c, array);
            }
        }
        epoch++;
    }

    private void releasePages(Chunk c, byte[] array) {
        long result = addresses.release(array);
        if (result >= 0) {
            c.released = true;
        } else if (!releaseErrorLogged) {
            releaseErrorLogged = true;
            Log.info("madvise of a balloon chunk failed, errno " + (-result));
        }
    }

    /** The chunks as the protocol's JSON array. */
    synchronized String chunksJson() {
        StringBuilder out = new StringBuilder(chunks.size() * 72 + 2).append('[');
        for (int i = 0; i < chunks.size(); i++) {
            Chunk c = chunks.get(i);
            if (i > 0) {
                out.append(',');
            }
            Wire.chunk(out, c.id, c.addr, c.len, c.released);
        }
        return out.append(']').toString();
    }
}
