package io.heapballoon.demo;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * A demo and test application: keeps a live set of N MiB whose content it can verify, and
 * churns short-lived garbage at M MiB/s.
 *
 * <pre>
 * java ChurnApp --live-mib N --churn-mib-per-s M [--check-interval-s 1] [--spike-mib S]
 *                [--rotate-mib-per-s R] [--gc-interval-s G]
 * stdin:  "live N" (grow/shrink the live set), "check" (verify now), "gc" (System.gc()), "quit"
 * stdout: one JSON line per second {"live_mib":..,"checks":..,"errors":..,"allocated_mib":..,
 *         "stall_p99_ms":..,"stall_max_ms":..};
 *         {"error":"corrupt",...} on a mismatch; {"error":"oom"} and exit 3 on OutOfMemoryError.
 * </pre>
 *
 * Each live MiB block is four 256 KiB byte[] pieces, so no collector treats it as a humongous
 * object (a 1 MiB array in 1 MiB G1 regions would occupy two regions and double the live set).
 */
public final class ChurnApp {
    static final int BLOCK_BYTES = 1 << 20;
    static final int PIECES = 16;  // 64 KiB pieces pack G1 regions tightly: live data is what it says
    static final int PIECE_BYTES = BLOCK_BYTES / PIECES;

    private final List<byte[][]> blocks = new ArrayList<>();
    private final Object lock = new Object();
    private long checks;
    private long errors;
    private long allocatedBytes;
    private volatile int wantedLiveMib;
    private volatile boolean checkRequested;
    private volatile boolean quit;
    /** Stalls of the last second, µs (main thread only): how late each 5 ms step of the churn
     *  loop was, its allocations plus its sleep. A collection, a guest that waits for memory or
     *  a paused VM all show here, as a request's latency would. */
    private final long[] stallsUs = new long[2048];
    private int stallCount;
    /** Sink for garbage so the JIT cannot elide the allocations. */
    static volatile Object sink;

    public static void main(String[] args) throws Exception {
        int liveMib = 0;
        int churnMibPerS = 0;
        int spikeMib = 0;
        int rotateMibPerS = 0;
        int gcIntervalS = 0;
        int checkIntervalS = 1;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--live-mib": liveMib = Integer.parseInt(args[i + 1]); break;
                case "--churn-mib-per-s": churnMibPerS = Integer.parseInt(args[i + 1]); break;
                case "--check-interval-s": checkIntervalS = Integer.parseInt(args[i + 1]); break;
                case "--spike-mib": spikeMib = Integer.parseInt(args[i + 1]); break;
                case "--rotate-mib-per-s": rotateMibPerS = Integer.parseInt(args[i + 1]); break;
                case "--gc-interval-s": gcIntervalS = Integer.parseInt(args[i + 1]); break;
                default: throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        try {
            ChurnApp app = new ChurnApp();
            app.spikeMib = spikeMib;
            app.rotateMibPerS = rotateMibPerS;
            app.gcIntervalS = gcIntervalS;
            app.run(liveMib, churnMibPerS, checkIntervalS);
        } catch (OutOfMemoryError e) {
            sink = null;
            System.out.println("{\"error\":\"oom\"}");
            System.out.flush();
            System.exit(3);
        }
    }

    /** 256 KiB of fixed pseudo-random bytes; every piece is this template rotated by its own shift. */
    static final byte[] TEMPLATE = new byte[PIECE_BYTES];

    static {
        new java.util.Random(0x6865617062616cL).nextBytes(TEMPLATE);
    }

    /** The rotation of piece {@code piece} of block {@code block} (distinct for every piece). */
    static int shift(int block, int piece) {
        return (int) (((long) block * PIECES + piece) * 7919L % PIECE_BYTES);
    }

    static byte[][] makeBlock(int index) {
        byte[][] block = new byte[PIECES][];
        for (int p = 0; p < PIECES; p++) {
            block[p] = makePiece(index, p);
        }
        return block;
    }

    static byte[] makePiece(int block, int p) {
        byte[] piece = new byte[PIECE_BYTES];
        int s = shift(block, p);
        System.arraycopy(TEMPLATE, s, piece, 0, PIECE_BYTES - s);
        System.arraycopy(TEMPLATE, 0, piece, PIECE_BYTES - s, s);
        return piece;
    }

    /** Offset of the first wrong byte of a piece, or -1 when it is intact. */
    static int firstMismatch(byte[] piece, int block, int p) {
        int s = shift(block, p);
        int head = PIECE_BYTES - s;
        int m = java.util.Arrays.mismatch(piece, 0, head, TEMPLATE, s, PIECE_BYTES);
        if (m >= 0) {
            return m;
        }
        m = java.util.Arrays.mismatch(piece, head, PIECE_BYTES, TEMPLATE, 0, s);
        return m >= 0 ? head + m : -1;
    }

    /** A load spike at start: this much short-lived data, then a full GC. Leaves the heap dirty
     *  but mostly empty, as a service's heap looks after a burst of traffic. */
    private int spikeMib;
    /** Live-set turnover: this many MiB a second of the live set are rebuilt (same content),
     *  64 KiB piece by piece, so old data dies below younger objects, as in a cache with churn. */
    private int rotateMibPerS;
    /** System.gc() this often (0: never): with Serial or Parallel a full GC compacts the heap. */
    private int gcIntervalS;
    private long rotateNext;
    private long rotatedBytes;

    /** Continuous turnover: replaces the pieces due by now (same content), one 64 KiB piece at
     *  a time, so old-generation data dies at a steady rate rather than in bursts. */
    private void rotate(long dueBytes) {
        synchronized (lock) {
            while (rotatedBytes < dueBytes && !blocks.isEmpty()) {
                int piece = (int) (rotateNext % PIECES);
                int block = (int) (rotateNext / PIECES % blocks.size());
                blocks.get(block)[piece] = makePiece(block, piece);
                allocatedBytes += PIECE_BYTES;
                rotatedBytes += PIECE_BYTES;
                rotateNext = (rotateNext + 1) % ((long) blocks.size() * PIECES);
            }
            rotatedBytes = Math.max(rotatedBytes, dueBytes - BLOCK_BYTES); // an empty live set owes nothing
        }
    }

    private void spike() {
        java.util.List<byte[]> burst = new java.util.ArrayList<>();
        for (long done = 0; done < ((long) spikeMib << 20); done += 64 << 10) {
            burst.add(new byte[64 << 10]);
        }
        allocatedBytes += (long) spikeMib << 20;
        burst.clear();
        System.gc();
    }

    private void run(int liveMib, int churnMibPerS, int checkIntervalS) throws Exception {
        wantedLiveMib = liveMib;
        resizeLiveSet();
        if (spikeMib > 0) {
            spike();
        }
        Thread input = new Thread(this::readCommands, "churn-input");
        input.setDaemon(true);
        input.start();
        long nextReportNs = System.nanoTime();
        long nextCheckNs = System.nanoTime() + checkIntervalS * 1_000_000_000L;
        long churnStartNs = System.nanoTime();
        long nextGcNs = System.nanoTime() + gcIntervalS * 1_000_000_000L;
        long churnedBytes = 0;
        while (!quit) {
            resizeLiveSet();
            long now = System.nanoTime();
            // churn: keep allocation at churnMibPerS MiB/s on average, in 64 KiB objects
            long due = (long) ((now - churnStartNs) / 1e9 * churnMibPerS * BLOCK_BYTES);
            while (churnedBytes < due) {
                sink = new byte[64 << 10];
                churnedBytes += 64 << 10;
                allocatedBytes += 64 << 10;
            }
            long stallNs = System.nanoTime() - now;
            if (checkRequested || now >= nextCheckNs) {
                checkRequested = false;
                verify();
                nextCheckNs = now + checkIntervalS * 1_000_000_000L;
            }
            if (rotateMibPerS > 0) {
                rotate((long) ((now - churnStartNs) / 1e9 * rotateMibPerS * BLOCK_BYTES));
            }
            if (gcIntervalS > 0 && now >= nextGcNs) {
                System.gc();
                nextGcNs = now + gcIntervalS * 1_000_000_000L;
            }
            if (now >= nextReportNs) {
                report();
                nextReportNs = now + 1_000_000_000L;
            }
            long slept = System.nanoTime();
            Thread.sleep(5);
            stall(stallNs + Math.max(0, System.nanoTime() - slept - 5_000_000L));
        }
        report();
    }

    private void resizeLiveSet() {
        int wanted = wantedLiveMib;
        synchronized (lock) {
            while (blocks.size() < wanted) {
                blocks.add(makeBlock(blocks.size()));
                allocatedBytes += BLOCK_BYTES;
            }
            while (blocks.size() > wanted) {
                blocks.remove(blocks.size() - 1);
            }
        }
    }

    private void verify() {
        synchronized (lock) {
            checks++;
            for (int b = 0; b < blocks.size(); b++) {
                byte[][] block = blocks.get(b);
                for (int p = 0; p < PIECES; p++) {
                    int offset = firstMismatch(block[p], b, p);
                    if (offset >= 0) {
                        errors++;
                        System.out.println("{\"error\":\"corrupt\",\"block\":" + b + ",\"piece\":" + p
                                + ",\"offset\":" + offset + "}");
                        System.out.flush();
                    }
                }
            }
        }
    }

    private void stall(long ns) {
        if (stallCount < stallsUs.length) {
            stallsUs[stallCount++] = ns / 1000;
        }
    }

    private void report() {
        long[] s = java.util.Arrays.copyOf(stallsUs, stallCount);
        stallCount = 0;
        java.util.Arrays.sort(s);
        String p99 = s.length == 0 ? "0" : String.format(java.util.Locale.ROOT, "%.1f", s[(int) Math.ceil(s.length * 0.99) - 1] / 1000.0);
        String max = s.length == 0 ? "0" : String.format(java.util.Locale.ROOT, "%.1f", s[s.length - 1] / 1000.0);
        synchronized (lock) {
            System.out.println("{\"live_mib\":" + blocks.size() + ",\"checks\":" + checks + ",\"errors\":" + errors
                    + ",\"allocated_mib\":" + (allocatedBytes >> 20) + ",\"stall_p99_ms\":" + p99
                    + ",\"stall_max_ms\":" + max + "}");
        }
        System.out.flush();
    }

    private void readCommands() {
        try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
            String line;
            while ((line = in.readLine()) != null) {
                String[] words = line.trim().split("\\s+");
                if (words[0].equals("live") && words.length == 2) {
                    wantedLiveMib = Math.max(0, Integer.parseInt(words[1]));
                } else if (words[0].equals("check")) {
                    checkRequested = true;
                } else if (words[0].equals("gc")) {
                    System.gc();
                } else if (words[0].equals("quit")) {
                    quit = true;
                    return;
                }
            }
        } catch (Exception e) {
            System.out.println("{\"error\":\"stdin\",\"message\":\"" + e.getClass().getSimpleName() + "\"}");
        }
    }
}
