package io.heapballoon.experiment;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Iterator;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import java.util.zip.CRC32;

/**
 * The experiment's workload: a small HTTP service on the JDK's own server (com.sun.net.httpserver).
 *
 * <pre>
 * java CacheService --port P --data-mib D --value-kib V --ttl-ms T --seed S --churn-kib C --warmup-mib W
 *                    [--warmup-ms B] [--touch-kib R] [--bind A]
 * GET /get?k=N   the value of key N: from the cache, else computed from the data set and cached
 * GET /stats     {"requests":..,"hits":..,"misses":..,"data_checks":..,"data_errors":..,
 *                 "oom_errors":..,"cache_entries":..,"cache_bytes":..,"p50_us":..,"p99_us":..,
 *                 "heap_committed_bytes":..}   (Runtime.totalMemory: the committed heap)
 * stdout: "READY port=P" once the data set is built
 * </pre>
 *
 * The data set is D MiB of seeded random bytes in 64 KiB pieces whose CRC32s are recorded at
 * start; a background thread re-checks them all every second (data checks). Cache entries carry
 * the CRC of their value, re-checked on every hit. Entries not read for T ms are dropped, so the
 * cache's working set (and the heap's live set) follows the load the service gets. Each request
 * also allocates C KiB of short-lived garbage, like parsing and rendering would.
 * Before it is ready it allocates W MiB of short-lived, non-zero garbage, so the heap's free
 * regions hold old data as in a service that has run a while (not the zero pages of a fresh heap,
 * which a kernel since 6.12 swaps out without writing them).
 * With B > 0 the warm-up is spread over B ms (a start-up burst that grows a heap not pre-touched).
 * Each request also reads R KiB of the data set (one byte a page, from a key-dependent piece), so
 * data pages the kernel swapped out cost request latency, not only the background check's.
 * An OutOfMemoryError anywhere is counted (oom_errors) and answered with HTTP 503.
 */
public final class CacheService {
    static final int PIECE = 64 << 10;

    static final class Entry {
        final byte[] value;
        final long crc;
        volatile long lastMs;
        Entry(byte[] value, long crc, long lastMs) { this.value = value; this.crc = crc; this.lastMs = lastMs; }
    }

    final byte[][] data;
    final long[] dataCrc;
    final int valueBytes;
    final long ttlMs;
    final int churnBytes;
    int touchBytes;
    final Map<Integer, Entry> cache = new ConcurrentHashMap<>();
    final AtomicLong requests = new AtomicLong(), hits = new AtomicLong(), misses = new AtomicLong();
    final AtomicLong dataChecks = new AtomicLong(), dataErrors = new AtomicLong(), oomErrors = new AtomicLong();
    final AtomicLong cacheBytes = new AtomicLong();
    final long[] latUs = new long[1 << 14];
    final AtomicLong latCount = new AtomicLong();
    static volatile Object sink;

    CacheService(int dataMib, int valueKib, long ttlMs, long seed, int churnKib) {
        SplittableRandom rnd = new SplittableRandom(seed);
        int pieces = Math.max(1, (dataMib << 20) / PIECE);
        data = new byte[pieces][];
        dataCrc = new long[pieces];
        for (int i = 0; i < pieces; i++) {
            byte[] p = new byte[PIECE];
            for (int j = 0; j < PIECE; j += 8) {
                long v = rnd.nextLong();
                for (int b = 0; b < 8; b++) p[j + b] = (byte) (v >>> (8 * b));
            }
            data[i] = p;
            dataCrc[i] = crc(p);
        }
        valueBytes = valueKib << 10;
        this.ttlMs = ttlMs;
        churnBytes = churnKib << 10;
    }

    static long crc(byte[] b) {
        CRC32 c = new CRC32();
        c.update(b);
        return c.getValue();
    }

    byte[] compute(int k) {
        byte[] v = new byte[valueBytes];
        byte[] src = data[Math.floorMod(k * 31 + 7, data.length)];
        int off = Math.floorMod(k * 131, PIECE);
        for (int i = 0; i < v.length; i++) v[i] = (byte) (src[(off + i) % PIECE] ^ k);
        return v;
    }

    long touch(int k) {
        long sum = 0;
        int pages = touchBytes >> 12;
        int start = Math.floorMod(k * 17, data.length);
        for (int i = 0; i < pages; i++) {
            byte[] p = data[(start + (i >> 4)) % data.length];
            sum += p[(i & 15) << 12];
        }
        return sum;
    }

    long get(int k) {
        long now = System.currentTimeMillis();
        Entry e = cache.get(k);
        if (e != null) {
            hits.incrementAndGet();
            e.lastMs = now;
            if (crc(e.value) != e.crc) dataErrors.incrementAndGet();
            return e.crc;
        }
        misses.incrementAndGet();
        byte[] v = compute(k);
        Entry fresh = new Entry(v, crc(v), now);
        if (cache.putIfAbsent(k, fresh) == null) cacheBytes.addAndGet(v.length);
        return fresh.crc;
    }

    void checkAndExpire() {
        for (int i = 0; i < data.length; i++) {
            if (crc(data[i]) != dataCrc[i]) dataErrors.incrementAndGet();
        }
        dataChecks.incrementAndGet();
        long cutoff = System.currentTimeMillis() - ttlMs;
        for (Iterator<Map.Entry<Integer, Entry>> it = cache.entrySet().iterator(); it.hasNext(); ) {
            Map.Entry<Integer, Entry> me = it.next();
            if (me.getValue().lastMs < cutoff) {
                it.remove();
                cacheBytes.addAndGet(-me.getValue().value.length);
            }
        }
    }

    synchronized long[] percentiles() {
        int n = (int) Math.min(latCount.get(), latUs.length);
        if (n == 0) return new long[] {0, 0};
        long[] s = Arrays.copyOf(latUs, n);
        Arrays.sort(s);
        return new long[] {s[(int) (n * 0.50)], s[Math.min(n - 1, (int) (n * 0.99))]};
    }

    void reply(HttpExchange ex, int code, String body) throws IOException {
        byte[] b = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", code == 200 && body.startsWith("{") ? "application/json" : "text/plain");
        ex.sendResponseHeaders(code, b.length);
        try (OutputStream os = ex.getResponseBody()) { os.write(b); }
    }

    void handleGet(HttpExchange ex) throws IOException {
        long t0 = System.nanoTime();
        try {
            String q = ex.getRequestURI().getRawQuery();
            int k = Integer.parseInt(q == null ? "0" : q.substring(q.indexOf('=') + 1));
            sink = new byte[churnBytes];
            long c = get(k);
            if (touch(k) == Long.MIN_VALUE) sink = null;  // keeps the reads
            requests.incrementAndGet();
            reply(ex, 200, Long.toHexString(c) + "\n");
        } catch (OutOfMemoryError oom) {
            oomErrors.incrementAndGet();
            reply(ex, 503, "oom\n");
        } catch (NumberFormatException bad) {
            reply(ex, 400, "bad key\n");
        }
        long i = latCount.getAndIncrement();
        latUs[(int) (i & (latUs.length - 1))] = (System.nanoTime() - t0) / 1000;
    }

    void handleStats(HttpExchange ex) throws IOException {
        long[] p = percentiles();
        String body = String.format("{\"requests\":%d,\"hits\":%d,\"misses\":%d,\"data_checks\":%d,\"data_errors\":%d,"
                + "\"oom_errors\":%d,\"cache_entries\":%d,\"cache_bytes\":%d,\"p50_us\":%d,\"p99_us\":%d,"
                + "\"heap_committed_bytes\":%d}",
                requests.get(), hits.get(), misses.get(), dataChecks.get(), dataErrors.get(), oomErrors.get(),
                cache.size(), cacheBytes.get(), p[0], p[1], Runtime.getRuntime().totalMemory());
        reply(ex, 200, body);
    }

    public static void main(String[] args) throws Exception {
        int port = 0, dataMib = 64, valueKib = 32, churnKib = 64, warmupMib = 0, touchKib = 0;
        long warmupMs = 0;
        long ttlMs = 8000, seed = 1;
        String bind = "127.0.0.1";  // a guest service (VM mode) binds 0.0.0.0: reached through a port forward
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--port": port = Integer.parseInt(args[i + 1]); break;
                case "--data-mib": dataMib = Integer.parseInt(args[i + 1]); break;
                case "--value-kib": valueKib = Integer.parseInt(args[i + 1]); break;
                case "--ttl-ms": ttlMs = Long.parseLong(args[i + 1]); break;
                case "--seed": seed = Long.parseLong(args[i + 1]); break;
                case "--churn-kib": churnKib = Integer.parseInt(args[i + 1]); break;
                case "--warmup-mib": warmupMib = Integer.parseInt(args[i + 1]); break;
                case "--warmup-ms": warmupMs = Long.parseLong(args[i + 1]); break;
                case "--touch-kib": touchKib = Integer.parseInt(args[i + 1]); break;
                case "--bind": bind = args[i + 1]; break;
                default: throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        CacheService svc = new CacheService(dataMib, valueKib, ttlMs, seed, churnKib);
        svc.touchBytes = touchKib << 10;
        byte[][] ring = new byte[16][];
        long pieces = (long) warmupMib * 16, t0 = System.currentTimeMillis();
        for (long i = 0; i < pieces; i++) {  // 64 KiB pieces
            if (warmupMs > 0 && (i & 63) == 0) {  // every 4 MiB: keep to the burst's pace
                long ahead = t0 + warmupMs * i / pieces - System.currentTimeMillis();
                if (ahead > 0) Thread.sleep(ahead);
            }
            byte[] b = new byte[PIECE];
            Arrays.fill(b, (byte) (0x5a ^ i));
            ring[(int) (i & 15)] = b;
        }
        sink = ring;
        HttpServer server = HttpServer.create(new InetSocketAddress(bind, port), 64);
        server.createContext("/get", ex -> { try { svc.handleGet(ex); } finally { ex.close(); } });
        server.createContext("/stats", ex -> { try { svc.handleStats(ex); } finally { ex.close(); } });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        Thread checker = new Thread(() -> {
            while (true) {
                try {
                    Thread.sleep(1000);
                    svc.checkAndExpire();
                } catch (InterruptedException e) {
                    return;
                } catch (OutOfMemoryError oom) {
                    svc.oomErrors.incrementAndGet();
                }
            }
        }, "data-check");
        checker.setDaemon(true);
        checker.start();
        System.out.println("READY port=" + server.getAddress().getPort());
        System.out.flush();
    }
}
