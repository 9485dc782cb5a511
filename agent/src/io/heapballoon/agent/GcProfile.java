package io.heapballoon.agent;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;

/**
 * Owns what the balloon costs the collector, measured apart with and without a balloon held:
 * the GC CPU share (CPU time of the JVM's GC threads, from /proc/self/task, over the CPU time
 * the JVM could use: wall time × available processors. Over the JVM's own CPU time instead, a
 * JVM that mostly sleeps at 100 MiB/s read 0 % or 7 % on one collection more or less.) and the pause p99 (the last {@value #PAUSES} pause durations of
 * GarbageCollectorMXBean notifications; concurrent "Cycles" are not pauses). Shown per JVM in
 * {@code status --json}. The first {@value #STARTUP_MS} ms of the JVM count in neither. Linux only;
 * elsewhere the CPU share reads -1.
 */
final class GcProfile {
    static final int PAUSES = 2048;
    static final long SAMPLE_MS = 1000;
    /** JVM start-up (class loading, JIT, the application building its data) is no one's GC cost. */
    static final long STARTUP_MS = 5000;
    /**
     * Thread-name prefixes of HotSpot's GC threads (comm is cut at 15 characters). JDK 21's
     * non-generational ZGC names its threads with an X ("XWorker#0", "XDriver", "XDirector"):
     * without those, its GC CPU share read 0.0 % at 2 GiB/s. Generational ZGC: "ZWorkerYoung#0",
     * "ZWorkerOld#0", "ZDriverMinor", "ZDriverMajor". benchmarks/gc_cost.py reads this list.
     */
    static final String[] GC_THREADS = {"GC Thread", "G1 ", "VM Thread", "ZDriver", "ZDirector", "ZWorker", "ZStat",
        "ZUnmapper", "ZUncommit", "ZRelocat", "XDriver", "XDirector", "XWorker", "XStat", "XUnmapper", "XUncommit",
        "Shenandoah", "Shen"};

    /** Index 0: no balloon held; 1: a balloon held. */
    private final long[] gcCpuTicks = new long[2];
    private final long[] wallMs = new long[2];
    /** USER_HZ: the unit of utime and stime in /proc (100 on Linux). */
    static final long TICKS_PER_S = 100;
    private final int processors = Runtime.getRuntime().availableProcessors();
    private final long[][] pausesMs = {new long[PAUSES], new long[PAUSES]};
    private final int[] pauseCount = new int[2];
    private long lastGcTicks = -1;
    private long lastSampleMs;

    static boolean isGcThread(String name) {
        for (String prefix : GC_THREADS) {
            if (name.startsWith(prefix)) {
                return true;
            }
        }
        return false;
    }

    /** utime + stime of a /proc stat line, in clock ticks; -1 if unreadable. */
    static long cpuTicks(String stat) {
        int close = stat.lastIndexOf(')');
        if (close < 0) {
            return -1;
        }
        String[] f = stat.substring(close + 2).trim().split(" ");
        // after "pid (comm) ": state is f[0]; utime and stime are fields 14 and 15 of the line
        return f.length > 12 ? Long.parseLong(f[11]) + Long.parseLong(f[12]) : -1;
    }

    private static String read(Path p) throws IOException {
        return new String(Files.readAllBytes(p), StandardCharsets.US_ASCII);
    }

    /** Agent thread, every tick: at most every SAMPLE_MS, folds GC and JVM CPU time into a bucket. */
    void sample(long nowMs, boolean balloonHeld) {
        if (lastGcTicks >= 0 && nowMs - lastSampleMs < SAMPLE_MS) {
            return;
        }
        long gc = 0;
        try (DirectoryStream<Path> tasks = Files.newDirectoryStream(Paths.get("/proc/self/task"))) {
            for (Path task : tasks) {
                try {
                    if (isGcThread(read(task.resolve("comm")).trim())) {
                        gc += Math.max(0, cpuTicks(read(task.resolve("stat"))));
                    }
                } catch (IOException | RuntimeException e) {
                    // the thread exited while we looked
                }
            }
        } catch (IOException | RuntimeException e) {
            return;
        }
        boolean started = java.lang.management.ManagementFactory.getRuntimeMXBean().getUptime() >= STARTUP_MS;
        synchronized (this) {
            if (started && lastGcTicks >= 0 && gc >= lastGcTicks && nowMs > lastSampleMs) {
                int b = balloonHeld ? 1 : 0;
                gcCpuTicks[b] += gc - lastGcTicks;
                wallMs[b] += nowMs - lastSampleMs;
            }
        }
        lastGcTicks = gc;
        lastSampleMs = nowMs;
    }

    /** GC-notification thread: one pause of {@code durationMs}. */
    synchronized void pause(long durationMs, boolean balloonHeld) {
        int b = balloonHeld ? 1 : 0;
        pausesMs[b][pauseCount[b]++ % PAUSES] = durationMs;
    }

    /** GC CPU share in permille of the CPUs the JVM may use, with or without a balloon; -1 before any sample. */
    synchronized long gcCpuPermille(boolean balloonHeld) {
        int b = balloonHeld ? 1 : 0;
        long capacityTicks = wallMs[b] * TICKS_PER_S / 1000 * processors;
        return capacityTicks > 0 ? gcCpuTicks[b] * 1000 / capacityTicks : -1;
    }

    /** The 99th percentile of the recent pauses, with or without a balloon; -1 before any. */
    synchronized long pauseP99Ms(boolean balloonHeld) {
        int b = balloonHeld ? 1 : 0;
        int n = Math.min(pauseCount[b], PAUSES);
        if (n == 0) {
            return -1;
        }
        long[] sorted = Arrays.copyOf(pausesMs[b], n);
        Arrays.sort(sorted);
        return sorted[Math.min(n - 1, (int) Math.ceil(n * 0.99) - 1)];
    }
}
