package io.heapballoon.agent;

import com.sun.management.GarbageCollectionNotificationInfo;
import java.io.IOException;
import java.lang.management.GarbageCollectorMXBean;
import java.util.Map;
import javax.management.NotificationEmitter;
import javax.management.openmbean.CompositeData;

/**
 * Owns the "heapballoon-agent" thread: sets everything up, keeps a connection to the driver
 * (reconnecting forever with backoff), speaks the protocol (hello, state, events; target, ping),
 * and ticks the Controller every {@value #TICK_MS} ms whether connected or not.
 */
final class AgentLoop implements Runnable {
    static final String AGENT_VERSION = "0.1.0";
    static final long TICK_MS = 50;
    static final long BACKOFF_MIN_MS = 100;
    static final long BACKOFF_MAX_MS = 2000;

    private final Options options;
    private Controller controller;
    private HeapStats stats;

    AgentLoop(Options options) {
        this.options = options;
    }

    @Override
    public void run() {
        try {
            setUp();
        } catch (Throwable t) {
            Log.warn("setup failed; agent inactive", t);
            return;
        }
        long backoffMs = BACKOFF_MIN_MS;
        boolean failureLogged = false;
        while (true) {
            try (DriverLink link = DriverLink.connect(options.socketPath, this::safeTick)) {
                if (failureLogged) {
                    Log.info("connected to " + options.socketPath);
                    failureLogged = false;
                }
                backoffMs = BACKOFF_MIN_MS;
                serve(link);
            } catch (IOException e) {
                if (!failureLogged) {
                    Log.info("driver not reachable at " + options.socketPath + " (" + e.getMessage() + "); retrying");
                    failureLogged = true;
                }
            } catch (Throwable t) {
                Log.warn("unexpected error; reconnecting", t);
            }
            long until = System.currentTimeMillis() + backoffMs;
            while (System.currentTimeMillis() < until) {
                safeTick();
                sleep(Math.min(TICK_MS, Math.max(1, until - System.currentTimeMillis())));
            }
            backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
        }
    }

    private void setUp() {
        stats = new HeapStats();
        AddressSource addresses = AddressSource.NONE;
        if (NativeMem.load(options.nativePath)) {
            addresses = new JniAddresses();
        } else {
            UnsafeAddresses unsafe = UnsafeAddresses.create(stats);
            if (unsafe != null) {
                addresses = unsafe;
            }
        }
        if ("ZGC".equals(stats.gc)) {
            addresses = new ZgcViews(addresses);
        }
        ChunkGeometry geometry = ChunkGeometry.forCollector(stats.gc, stats.regionBytes,
                UnsafeAddresses.byteArrayHeaderBytes());
        controller = new Controller(stats, new Balloon(geometry, addresses), options);
        for (GarbageCollectorMXBean bean : stats.collectors) {
            if (bean instanceof NotificationEmitter) {
                ((NotificationEmitter) bean).addNotificationListener((notification, handback) -> {
                    if (!GarbageCollectionNotificationInfo.GARBAGE_COLLECTION_NOTIFICATION.equals(notification.getType())) {
                        return;
                    }
                    try {
                        controller.afterGc(GarbageCollectionNotificationInfo.from((CompositeData) notification.getUserData()));
                    } catch (Throwable t) {
                        Log.warn("GC notification handling failed", t);
                    }
                }, null, null);
            }
        }
    }

    private void serve(DriverLink link) throws IOException {
        link.send(hello());
        controller.events.clear(); // the hello carries the full state
        long lastStateMs = System.currentTimeMillis();
        while (true) {
            for (String line : link.poll(TICK_MS)) {
                handle(link, line);
            }
            safeTick();
            String event;
            while ((event = controller.events.poll()) != null) {
                link.send(event);
            }
            long now = System.currentTimeMillis();
            if (controller.changed.getAndSet(false) || now - lastStateMs >= options.intervalMs) {
                link.send(stateJson("state").toString());
                lastStateMs = now;
            }
        }
    }

    private void handle(DriverLink link, String line) throws IOException {
        Map<String, Object> msg;
        try {
            msg = Json.parseObject(line);
        } catch (IllegalArgumentException e) {
            return;
        }
        if (Json.getLong(msg, "v", 0) != 1) {
            return;
        }
        String type = Json.getString(msg, "type", "");
        if (type.equals("target")) {
            String reclaim = Json.getString(msg, "reclaim", "ksm");
            if (!reclaim.equals("direct") && !reclaim.equals("report")) {
                reclaim = "ksm";
            }
            controller.onTarget(Json.getLong(msg, "target_bytes", 0), reclaim, Json.getLong(msg, "headroom_bytes", 0));
        } else if (type.equals("ping")) {
            link.send(new Json.Obj().put("v", 1).put("type", "pong").put("id", Json.getLong(msg, "id", 0)).toString());
        } else if (type.equals("error")) {
            Log.info("driver reported: " + Json.getString(msg, "error", "?"));
        }
    }

    private void safeTick() {
        try {
            controller.tick();
        } catch (Throwable t) {
            Log.warn("tick failed", t);
        }
    }

    private String hello() {
        Balloon balloon = controller.balloon;
        String reclaimModes = balloon.canRelease() ? "[\"direct\",\"ksm\",\"report\"]" : "[\"ksm\",\"report\"]";
        Json.Obj hello = new Json.Obj().put("v", 1).put("type", "hello")
                .put("pid", ProcessHandle.current().pid())
                .put("name", options.name)
                .put("agent_version", AGENT_VERSION)
                .put("jvm_version", System.getProperty("java.version", ""))
                .put("jvm_vendor", System.getProperty("java.vm.vendor", ""))
                .put("gc", stats.gc)
                .put("region_bytes", stats.regionBytes)
                .put("address_mode", balloon.addressMode())
                .raw("reclaim_modes", reclaimModes);
        return stateFields(hello).toString();
    }

    private Json.Obj stateJson(String type) {
        return stateFields(new Json.Obj().put("v", 1).put("type", type));
    }

    private Json.Obj stateFields(Json.Obj obj) {
        Balloon balloon = controller.balloon;
        String chunks;
        long footprint;
        long epoch;
        synchronized (balloon) {
            chunks = balloon.chunksJson();
            footprint = balloon.footprintBytes();
            epoch = balloon.epoch();
        }
        return obj.put("heap_max_bytes", stats.maxBytes())
                .put("heap_committed_bytes", stats.committedBytes())
                .put("heap_used_bytes", stats.usedBytes())
                .put("live_bytes", controller.liveBytes())
                .put("live_source", controller.live.source())
                .put("balloon_max_bytes", controller.balloonMaxBytes())
                .put("flaps", controller.flaps())
                .put("gc_count", stats.gcCount())
                .put("gc_time_ms", stats.gcTimeMs())
                .put("balloon_bytes", footprint)
                .put("target_bytes", controller.targetBytes())
                .put("reclaim", controller.reclaim())
                .put("chunks_epoch", epoch)
                .raw("chunks", chunks);
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
