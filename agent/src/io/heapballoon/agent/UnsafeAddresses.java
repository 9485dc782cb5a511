package io.heapballoon.agent;

import java.lang.invoke.VarHandle;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import sun.misc.Unsafe;

/**
 * Owns the {@code unsafe} address mode: decodes an array's reference with sun.misc.Unsafe, and
 * trusts the result only after checking it lies inside the heap and reading back a random
 * cookie written through Java. Any mismatch switches to {@code none} for good: a wrong decode
 * can make a later raw read crash the JVM.
 */
final class UnsafeAddresses implements AddressSource {
    private final Unsafe unsafe;
    private final HeapRange heap;
    private final HeapStats stats;
    private final int refScale;
    private final long refBase;
    private final long byteBase;
    private final long oopBase;
    private final int oopShift;
    private final Object[] holder = new Object[1];
    private volatile boolean broken;

    private UnsafeAddresses(Unsafe unsafe, HeapRange heap, HeapStats stats, long oopBase, int oopShift) {
        this.unsafe = unsafe;
        this.heap = heap;
        this.stats = stats;
        this.refScale = unsafe.arrayIndexScale(Object[].class);
        this.refBase = unsafe.arrayBaseOffset(Object[].class);
        this.byteBase = unsafe.arrayBaseOffset(byte[].class);
        this.oopBase = oopBase;
        this.oopShift = oopShift;
    }

    static Unsafe theUnsafe() {
        try {
            Field f = Unsafe.class.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            return (Unsafe) f.get(null);
        } catch (ReflectiveOperationException | RuntimeException e) {
            return null;
        }
    }

    /** The byte[] header size (ARRAY_BYTE_BASE_OFFSET; a static field, so no Unsafe call warns). */
    static int byteArrayHeaderBytes() {
        return Unsafe.ARRAY_BYTE_BASE_OFFSET;
    }

    /** An unsafe source when this JVM's reference encoding is understood, else null. */
    static UnsafeAddresses create(HeapStats stats) {
        Unsafe u = theUnsafe();
        if (u == null) {
            Log.info("sun.misc.Unsafe unavailable; address_mode none");
            return null;
        }
        HeapRange heap = HeapRange.detect(stats.gc);
        if (heap == null) {
            Log.info("heap range unknown; address_mode none");
            return null;
        }
        int scale = u.arrayIndexScale(Object[].class);
        if (scale == 8) {
            return new UnsafeAddresses(u, heap, stats, 0, 0);
        }
        if (scale != 4) {
            return null;
        }
        String mode = String.valueOf(System.getProperty("java.vm.compressedOopsMode"));
        long base;
        int shift;
        if (mode.equals("32-bit")) {
            base = 0;
            shift = 0;
        } else if (mode.equals("Zero based")) {
            base = 0;
            shift = Integer.numberOfTrailingZeros(stats.objectAlignmentBytes);
        } else if (mode.startsWith("Non-zero") && heap.oopBase >= 0 && heap.oopShift >= 0) {
            base = heap.oopBase;
            shift = heap.oopShift;
        } else {
            Log.info("compressed oops mode '" + mode + "' not understood; address_mode none");
            return null;
        }
        if (heap.oopShift >= 0 && heap.oopShift != shift || heap.oopBase >= 0 && heap.oopBase != base) {
            Log.info("compressed oops decoding disagrees with vmInfo; address_mode none");
            return null;
        }
        return new UnsafeAddresses(u, heap, stats, base, shift);
    }

    @Override
    public String mode() {
        return broken ? "none" : "unsafe";
    }

    @Override
    public synchronized long payloadAddress(byte[] array, long knownAddr) {
        for (int attempt = 0; attempt < 3 && !broken; attempt++) {
            long gcBefore = stats.gcCount();
            long object = decode(array);
            long payload = object + byteBase;
            if (knownAddr != 0 && payload == knownAddr) {
                return payload;
            }
            List<ProcMaps.Range> maps = ProcMaps.read();
            boolean inside = heap.contains(maps, object, byteBase + (long) array.length)
                    && ProcMaps.readable(maps, payload, 8);
            if (inside && cookieReadsBack(array, payload)) {
                return payload;
            }
            if (stats.gcCount() == gcBefore) {
                fail(inside ? "read-back cookie mismatch at 0x" + Long.toHexString(payload)
                        : "decoded address 0x" + Long.toHexString(payload) + " is outside the heap");
            }
        }
        return 0;
    }

    private void fail(String why) {
        broken = true;
        Log.info("UNSAFE ADDRESS VALIDATION FAILED (" + why + "); address_mode none from now on,"
                + " raw memory is never touched again");
    }

    private long decode(byte[] array) {
        holder[0] = array;
        try {
            if (refScale == 4) {
                return oopBase + ((unsafe.getInt(holder, refBase) & 0xFFFFFFFFL) << oopShift);
            }
            return unsafe.getLong(holder, refBase);
        } finally {
            holder[0] = null;
        }
    }

    private boolean cookieReadsBack(byte[] array, long payload) {
        long cookie = ThreadLocalRandom.current().nextLong() | 1L;
        ByteBuffer view = ByteBuffer.wrap(array).order(ByteOrder.nativeOrder());
        view.putLong(0, cookie);
        VarHandle.fullFence();
        long seen = unsafe.getLong(payload);
        VarHandle.fullFence();
        view.putLong(0, 0L);
        return seen == cookie;
    }
}
