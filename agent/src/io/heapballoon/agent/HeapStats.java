package io.heapballoon.agent;

import com.sun.management.GcInfo;
import com.sun.management.HotSpotDiagnosticMXBean;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryMXBean;
import java.lang.management.MemoryPoolMXBean;
import java.lang.management.MemoryType;
import java.lang.management.MemoryUsage;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Owns the JVM's memory and GC figures: heap sizes, GC counts and times, which collector runs,
 * its region size, and the heap usage right after the last collection (for live_bytes).
 */
final class HeapStats {
    final String gc;
    final long regionBytes;
    final int objectAlignmentBytes;
    final List<GarbageCollectorMXBean> collectors;

    private final MemoryMXBean memory = ManagementFactory.getMemoryMXBean();
    private final Set<String> heapPools = new HashSet<>();
    private long usedAfterGcBytes = -1;
    private long balloonAtGcBytes;

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
        regionBytes = "G1".equals(gc) ? vmOptionLong("G1HeapRegionSize", 0) : 0;
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

    static long vmOptionLong(String name, long dflt) {
        try {
            HotSpotDiagnosticMXBean hs = ManagementFactory.getPlatformMXBean(HotSpotDiagnosticMXBean.class);
            return Long.parseLong(hs.getVMOption(name).getValue());
        } catch (RuntimeException e) {
            return dflt;
        }
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
        if ("Serial".equals(gc) || "Parallel".equals(gc)) {
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

    /** Heap bytes in use at the end of the collection described by {@code info}. */
    long heapUsedAfter(GcInfo info) {
        long used = 0;
        for (Map.Entry<String, MemoryUsage> e : info.getMemoryUsageAfterGc().entrySet()) {
            if (heapPools.contains(e.getKey())) {
                used += e.getValue().getUsed();
            }
        }
        return used;
    }

    synchronized void recordAfterGc(long usedBytes, long balloonFootprintBytes) {
        usedAfterGcBytes = usedBytes;
        balloonAtGcBytes = balloonFootprintBytes;
    }

    /** The application's live data: used after the last GC minus the balloon at that time. */
    synchronized long liveBytes(long balloonFootprintNowBytes) {
        if (usedAfterGcBytes < 0) {
            return Math.max(0, usedBytes() - balloonFootprintNowBytes);
        }
        return Math.max(0, usedAfterGcBytes - balloonAtGcBytes);
    }
}
