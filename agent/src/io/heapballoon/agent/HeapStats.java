package io.heapballoon.agent;

import com.sun.management.HotSpotDiagnosticMXBean;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryMXBean;
import java.lang.management.MemoryPoolMXBean;
import java.lang.management.MemoryType;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * Owns the JVM's memory and GC figures: heap sizes, GC counts and times, which collector runs,
 * its region size, and what a balloon can grow into. The live set is LiveSet's.
 */
final class HeapStats {
    final String gc;
    final long regionBytes;
    final int objectAlignmentBytes;
    final List<GarbageCollectorMXBean> collectors;

    private final MemoryMXBean memory = ManagementFactory.getMemoryMXBean();
    private final Set<String> heapPools = new HashSet<>();

    HeapStats() {
        collectors = ManagementFactory.getGarbageCollectorMXBeans();
        List<String> names = new ArrayList<>();
        for (GarbageCollectorMXBean bean : collectors) {
            names.add(bean.getName());
        }
        gc = gcKind(names);
        for (MemoryPoolMXBean pool : ManagementFactory.getMemoryPoolMXBeans()) {
            if (pool.getType() == MemoryType.HEAP) {
                heapPools.add(pool.getName());
            }
        }
        regionBytes = "G1".equals(gc) ? vmOptionLong("G1HeapRegionSize", 0)
                : "Shenandoah".equals(gc) ? shenandoahRegionBytes(maxBytes()) : 0;
        objectAlignmentBytes = (int) vmOptionLong("ObjectAlignmentInBytes", 8);
    }

    /** Maps collector bean names to the protocol's gc names. */
    static String gcKind(List<String> beanNames) {
        for (String n : beanNames) {
            if (n.startsWith("G1 ")) {
                return "G1";
            } else if (n.startsWith("PS ")) {
                return "Parallel";
            } else if (n.equals("Copy") || n.equals("MarkSweepCompact")) {
                return "Serial";
            } else if (n.startsWith("ZGC")) {
                return "ZGC";
            } else if (n.startsWith("Shenandoah")) {
                return "Shenandoah";
            }
        }
        return "unknown";
    }

    /**
     * Shenandoah's region size, as HotSpot picks it (ShenandoahHeapRegion::setup_sizes): the
     * heap over ShenandoahTargetNumRegions, within ShenandoahMin/MaxRegionSize, rounded down to
     * a power of two; or ShenandoahRegionSize when set.
     */
    static long shenandoahRegionBytes(long heapBytes) {
        long set = vmOptionLong("ShenandoahRegionSize", 0);
        if (set > 0) {
            return set;
        }
        long target = Math.max(1, vmOptionLong("ShenandoahTargetNumRegions", 2048));
        long min = vmOptionLong("ShenandoahMinRegionSize", 256L << 10);
        long max = vmOptionLong("ShenandoahMaxRegionSize", 32L << 20);
        return Long.highestOneBit(Math.max(1, Math.min(max, Math.max(min, heapBytes / target))));
    }

    /** A -XX option's value as text, or null where this JVM has no such option (e.g. one removed in a later JDK). */
    private static String vmOption(String name) {
        try {
            return ManagementFactory.getPlatformMXBean(HotSpotDiagnosticMXBean.class).getVMOption(name).getValue();
        } catch (RuntimeException e) {
            return null;
        }
    }

    static long vmOptionLong(String name, long dflt) {
        String value = vmOption(name);
        try {
            return value != null ? Long.parseLong(value) : dflt;
        } catch (NumberFormatException e) {
            return dflt;
        }
    }

    static boolean vmOptionBoolean(String name, boolean dflt) {
        String value = vmOption(name);
        return value != null ? Boolean.parseBoolean(value) : dflt;
    }

    long maxBytes() {
        long max = memory.getHeapMemoryUsage().getMax();
        return max > 0 ? max : Runtime.getRuntime().maxMemory();
    }

    /**
     * What a balloon can grow into: the whole heap for region-based collectors (G1, ZGC,
     * Shenandoah); for Serial and Parallel the old generation, where arrays this large end up
     * (promoted, or allocated there directly), so the whole heap would overstate it.
     */
    long balloonCapacityBytes() {
        if (!regionBased()) {
            for (MemoryPoolMXBean pool : ManagementFactory.getMemoryPoolMXBeans()) {
                String name = pool.getName();
                if (pool.getType() == MemoryType.HEAP && (name.equals("Tenured Gen") || name.equals("PS Old Gen"))) {
                    long max = pool.getUsage().getMax();
                    if (max > 0) {
                        return max;
                    }
                }
            }
        }
        return maxBytes();
    }

    /** Shenandoah: its own trigger zone, no explicit collections, its own clear (Headroom, Controller). */
    boolean shenandoah() {
        return "Shenandoah".equals(gc);
    }

    /** G1, ZGC and Shenandoah: the balloon can use the whole heap, which fills region by region. */
    boolean regionBased() {
        return "G1".equals(gc) || "ZGC".equals(gc) || shenandoah();
    }

    long committedBytes() {
        return memory.getHeapMemoryUsage().getCommitted();
    }

    long usedBytes() {
        return memory.getHeapMemoryUsage().getUsed();
    }

    long gcCount() {
        long n = 0;
        for (GarbageCollectorMXBean bean : collectors) {
            n += Math.max(0, bean.getCollectionCount());
        }
        return n;
    }

    long gcTimeMs() {
        long t = 0;
        for (GarbageCollectorMXBean bean : collectors) {
            t += Math.max(0, bean.getCollectionTime());
        }
        return t;
    }

    /** GC time that stops or slows the application: concurrent "Cycles" beans are left out. */
    long pauseTimeMs() {
        long t = 0;
        for (GarbageCollectorMXBean bean : collectors) {
            if (!bean.getName().endsWith("Cycles")) {
                t += Math.max(0, bean.getCollectionTime());
            }
        }
        return t;
    }

    /** The names of the heap's memory pools (what LiveSet samples). */
    Set<String> heapPools() {
        return heapPools;
    }

    /** True when this JVM has JDK 20+'s "G1 Concurrent GC" bean (Remark and Cleanup pauses). */
    boolean hasG1ConcurrentBean() {
        for (GarbageCollectorMXBean bean : collectors) {
            if (bean.getName().equals("G1 Concurrent GC")) {
                return true;
            }
        }
        return false;
    }
}
