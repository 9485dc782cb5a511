package io.heapballoon.agent;

import java.lang.management.ManagementFactory;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.management.MBeanServer;
import javax.management.ObjectName;

/**
 * Owns where the Java heap lies and how compressed references decode, as told by the
 * DiagnosticCommand MBean's vmInfo text (or /proc/self/maps "memfd:java_heap" for ZGC).
 */
final class HeapRange {
    private static final Pattern HEAP_ADDRESS =
            Pattern.compile("Heap address: 0x([0-9a-fA-F]+), size: (\\d+) MB, Compressed Oops mode: ([^\\n]*)");
    private static final Pattern BASE = Pattern.compile("(?:based|base): 0x([0-9a-fA-F]+)");
    private static final Pattern SHIFT = Pattern.compile("Oop shift amount: (\\d+)");
    private static final Pattern HEX = Pattern.compile("0x([0-9a-fA-F]+)");

    final long start;
    final long end;
    /** Compressed-oop decoding; -1 when vmInfo did not say. */
    final long oopBase;
    final int oopShift;
    final boolean zgc;

    private HeapRange(long start, long end, long oopBase, int oopShift, boolean zgc) {
        this.start = start;
        this.end = end;
        this.oopBase = oopBase;
        this.oopShift = oopShift;
        this.zgc = zgc;
    }

    static String vmInfo() throws Exception {
        MBeanServer server = ManagementFactory.getPlatformMBeanServer();
        return (String) server.invoke(new ObjectName("com.sun.management:type=DiagnosticCommand"), "vmInfo",
                new Object[] {null}, new String[] {String[].class.getName()});
    }

    /** Reads the heap range; null when it cannot be determined. */
    static HeapRange detect(String gc) {
        if ("ZGC".equals(gc)) {
            return new HeapRange(0, 0, -1, -1, true);
        }
        try {
            return parse(vmInfo());
        } catch (Exception e) {
            Log.warn("cannot read vmInfo", e);
            return null;
        }
    }

    static HeapRange parse(String info) {
        Matcher m = HEAP_ADDRESS.matcher(info);
        if (m.find()) {
            long start = Long.parseUnsignedLong(m.group(1), 16);
            long end = start + (Long.parseLong(m.group(2)) << 20);
            String mode = m.group(3);
            long base = -1;
            int shift = -1;
            Matcher b = BASE.matcher(mode);
            if (mode.startsWith("32-bit") || mode.startsWith("Zero based")) {
                base = 0;
            } else if (b.find()) {
                base = Long.parseUnsignedLong(b.group(1), 16);
            }
            Matcher s = SHIFT.matcher(mode);
            if (s.find()) {
                shift = Integer.parseInt(s.group(1));
            } else if (mode.startsWith("32-bit")) {
                shift = 0;
            }
            return new HeapRange(start, end, base, shift, false);
        }
        // No compressed oops: the bracketed ranges under "Heap:" span the heap.
        int at = info.indexOf("\nHeap:\n");
        if (at < 0) {
            return null;
        }
        long lo = Long.MAX_VALUE;
        long hi = 0;
        for (String line : info.substring(at + 7).split("\n")) {
            if (line.startsWith("Card table") || line.startsWith("Heap Regions") || line.startsWith("CodeHeap")
                    || line.startsWith("Metaspace") || line.startsWith("Polling page")) {
                break;
            }
            int bracket = line.indexOf('[');
            if (bracket < 0) {
                continue;
            }
            Matcher r = HEX.matcher(line.substring(bracket));
            while (r.find()) {
                long v = Long.parseUnsignedLong(r.group(1), 16);
                lo = Math.min(lo, v);
                hi = Math.max(hi, v);
            }
        }
        return lo < hi ? new HeapRange(lo, hi, -1, -1, false) : null;
    }

    /** True when [addr, addr+len) lies inside the heap (for ZGC: inside a java_heap memfd mapping). */
    boolean contains(List<ProcMaps.Range> maps, long addr, long len) {
        if (!zgc) {
            return addr >= start && addr + len <= end;
        }
        for (ProcMaps.Range r : maps) {
            if (r.path.contains("memfd:java_heap") && r.contains(addr, len)) {
                return true;
            }
        }
        return false;
    }
}
