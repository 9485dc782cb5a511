package io.heapballoon.agent;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;

/** Owns reading /proc/self/maps: which address ranges are mapped, readable, and what backs them. */
final class ProcMaps {
    /** One mapping: [start, end), permissions, backing path. */
    static final class Range {
        final long start;
        final long end;
        final boolean readable;
        final String path;

        Range(long start, long end, boolean readable, String path) {
            this.start = start;
            this.end = end;
            this.readable = readable;
            this.path = path;
        }

        boolean contains(long addr, long len) {
            return addr >= start && len >= 0 && addr + len <= end;
        }
    }

    private ProcMaps() {
    }

    static List<Range> read() {
        List<Range> out = new ArrayList<>();
        try {
            for (String line : Files.readAllLines(Paths.get("/proc/self/maps"))) {
                String[] f = line.trim().split("\\s+", 6);
                if (f.length < 5) {
                    continue;
                }
                int dash = f[0].indexOf('-');
                long start = Long.parseUnsignedLong(f[0].substring(0, dash), 16);
                long end = Long.parseUnsignedLong(f[0].substring(dash + 1), 16);
                out.add(new Range(start, end, f[1].startsWith("r"), f.length == 6 ? f[5] : ""));
            }
        } catch (IOException | RuntimeException e) {
            Log.warn("cannot read /proc/self/maps", e);
        }
        return out;
    }

    /** True when [addr, addr+len) lies inside readable mappings (adjacent ones are merged). */
    static boolean readable(List<Range> maps, long addr, long len) {
        long at = addr;
        long end = addr + len;
        boolean progressed = true;
        while (at < end && progressed) {
            progressed = false;
            for (Range r : maps) {
                if (r.readable && at >= r.start && at < r.end) {
                    at = r.end;
                    progressed = true;
                    break;
                }
            }
        }
        return at >= end;
    }
}
