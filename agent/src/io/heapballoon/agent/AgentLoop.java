package io.heapballoon.agent;

import com.sun.management.GarbageCollectionNotificationInfo;
import java.io.IOException;
import java.lang.management.GarbageCollectorMXBean;
import javax.management.NotificationEmitter;
import javax.management.openmbean.CompositeData;

/**
 * Owns the "heapballoon-agent" thread: sets everything up, keeps a connection to the driver
 * (reconnecting forever with backoff), speaks the protocol through Wire (hello, state, events;
 * target, ping; an error reply to a bad line),
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
            if (t instanceof NoClassDefFoundError && String.valueOf(t.getMessage()).contains("sun/misc/Unsafe")) {
                Log.warn("agent inactive: module jdk.unsupported (sun.misc.Unsafe) is not in this JVM's module graph; "
                        + "start java with --add-modules jdk.unsupported", null);
            } else {
                Log.warn("setup failed; agent inactive", t);
            }
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
        controller.out.clearEvents(); // the hello carries the full state
        long lastStateMs = System.currentTimeMillis();
        while (true) {
            for (String line : link.poll(TICK_MS)) {
                handle(link, line);
            }
            safeTick();
            String event;
            while ((event = controller.out.pollEvent()) != null) {
                link.send(event);
            }
            long now = System.currentTimeMillis();
            if (controller.out.takeChanged() || now - lastStateMs >= options.intervalMs) {
                link.send(Wire.state(stateFields()));
                lastStateMs = now;
            }
        }
    }

    private void handle(DriverLink link, String line) throws IOException {
        Wire.Incoming msg = Wire.parse(line);
        switch (msg.kind) {
            case TARGET:
                controller.onTarget(msg.targetBytes, msg.reclaim, msg.headroomBytes);
                break;
            case PING:
                link.send(Wire.pong(msg.id));
                break;
            case ERROR:
                Log.info("driver reported: " + msg.text);
                break;
            default:
                link.send(Wire.error("rejected: " + msg.text));
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
        Wire.Identity id = new Wire.Identity();
        id.pid = ProcessHandle.current().pid();
        id.name = options.name;
        id.agentVersion = AGENT_VERSION;
        id.jvmVersion = System.getProperty("java.version", "");
        id.jvmVendor = System.getProperty("java.vm.vendor", "");
        id.gc = stats.gc;
        id.regionBytes = stats.regionBytes;
        id.addressMode = balloon.addressMode();
        id.canRelease = balloon.canRelease();
        return Wire.hello(id, stateFields());
    }

    private Wire.StateFields stateFields() {
        Balloon balloon = controller.balloon;
        Wire.StateFields s = new Wire.StateFields();
        synchronized (balloon) {
            s.chunksJson = balloon.chunksJson();
            s.balloonBytes = balloon.footprintBytes();
            s.chunksEpoch = balloon.epoch();
        }
        s.heapMaxBytes = stats.maxBytes();
        s.heapCommittedBytes = stats.committedBytes();
        s.heapUsedBytes = stats.usedBytes();
        s.liveBytes = controller.liveBytes();
        s.liveSource = controller.live.source();
        s.balloonMaxBytes = controller.balloonMaxBytes();
        s.flaps = controller.flaps();
        s.softCleared = controller.softCleared();
        s.headroomBytes = controller.headroomBytes();
        s.allocBytesPerS = (long) controller.headroom.allocBytesPerS();
        s.promotionReserveBytes = controller.parallelOld.reserveBytes(controller.balloon.geometry.footprintBytes);
        s.gcCpuPermille = controller.profile.gcCpuPermille(true);
        s.gcCpuPermilleNoBalloon = controller.profile.gcCpuPermille(false);
        s.pauseP99Ms = controller.profile.pauseP99Ms(true);
        s.pauseP99MsNoBalloon = controller.profile.pauseP99Ms(false);
        s.gcCount = stats.gcCount();
        s.gcTimeMs = stats.gcTimeMs();
        s.targetBytes = controller.targetBytes();
        s.reclaim = controller.reclaim();
        return s;
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
