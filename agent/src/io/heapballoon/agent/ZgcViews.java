package io.heapballoon.agent;

import java.util.TreeSet;

/**
 * Owns ZGC's multi-mapped heap (JDK 17: the same memfd pages mapped at three "views", one per
 * pointer color). Wraps another AddressSource and reports every address in one fixed view, so
 * a color flip at the next GC cycle is not mistaken for the chunk moving.
 */
final class ZgcViews implements AddressSource {
    private final AddressSource inner;
    private long offsetMask = -1;
    private long viewBit;

    ZgcViews(AddressSource inner) {
        this.inner = inner;
    }

    @Override
    public String mode() {
        return inner.mode();
    }

    @Override
    public long payloadAddress(byte[] array, long knownAddr) {
        return canonical(inner.payloadAddress(array, knownAddr));
    }

    @Override
    public boolean canRelease() {
        return inner.canRelease();
    }

    @Override
    public long release(byte[] array) {
        return inner.release(array);
    }

    private synchronized long canonical(long addr) {
        if (addr == 0) {
            return 0;
        }
        if (offsetMask == -1) {
            TreeSet<Integer> topBits = new TreeSet<>();
            for (ProcMaps.Range r : ProcMaps.read()) {
                if (r.path.contains("memfd:java_heap")) {
                    topBits.add(63 - Long.numberOfLeadingZeros(r.start));
                }
            }
            if (topBits.size() < 2) {
                offsetMask = 0; // a single view (generational ZGC): addresses are already unique
            } else {
                offsetMask = (1L << topBits.first()) - 1;
                viewBit = 1L << topBits.last();
            }
        }
        long viewBits = addr & ~offsetMask;
        if (offsetMask == 0 || Long.bitCount(viewBits) != 1 || viewBits > viewBit) {
            return addr; // not a colored pointer into one of the views: leave it alone
        }
        return (addr & offsetMask) | viewBit;
    }
}
