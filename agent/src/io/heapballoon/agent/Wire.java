package io.heapballoon.agent;

import java.util.List;
import java.util.Map;

/**
 * Owns the agent's side of protocol v1 (docs/protocol.md): every line the agent writes (hello,
 * state, event, pong, error) is built here and only here, and every line the driver sends is
 * parsed and validated here into an {@link Incoming}. A bad line becomes an Incoming with an
 * error, which the agent answers with an {@code error} message. tests/golden/ holds lines that
 * the Python and the Java tests both check.
 */
final class Wire {
    static final int VERSION = 1;

    private Wire() {
    }

    /** A message from the driver: a target, a ping, an error report, or a line we reject. */
    static final class Incoming {
        enum Kind { TARGET, PING, ERROR, INVALID }

        final Kind kind;
        final long targetBytes;
        final String reclaim;
        final long headroomBytes;
        final long id;
        /** The driver's error text (ERROR), or why the line was rejected (INVALID). */
        final String text;

        private Incoming(Kind kind, long targetBytes, String reclaim, long headroomBytes, long id, String text) {
            this.kind = kind;
            this.targetBytes = targetBytes;
            this.reclaim = reclaim;
            this.headroomBytes = headroomBytes;
            this.id = id;
            this.text = text;
        }

        static Incoming invalid(String why) {
            return new Incoming(Kind.INVALID, 0, "", 0, 0, why);
        }
    }

    /** Parses one line from the driver; never throws. */
    static Incoming parse(String line) {
        Map<String, Object> msg;
        try {
            msg = Json.parseObject(line);
        } catch (IllegalArgumentException e) {
            return Incoming.invalid("not a JSON object");
        }
        Object v = msg.get("v");
        if (!(v instanceof Long) || (Long) v != VERSION) {
            return Incoming.invalid("unsupported protocol version " + v);
        }
        String type = Json.getString(msg, "type", "");
        switch (type) {
            case "target": {
                Object target = msg.get("target_bytes");
                if (!(target instanceof Long) || (Long) target < 0) {
                    return Incoming.invalid("field 'target_bytes' must be a non-negative integer");
                }
                String reclaim = Json.getString(msg, "reclaim", "ksm");
                if (!List.of("direct", "ksm", "report").contains(reclaim)) {
                    return Incoming.invalid("field 'reclaim' must be one of direct, ksm, report");
                }
                long headroom = Math.max(0, Json.getLong(msg, "headroom_bytes", 0));
                return new Incoming(Incoming.Kind.TARGET, (Long) target, reclaim, headroom, 0, "");
            }
            case "ping":
                return new Incoming(Incoming.Kind.PING, 0, "", 0, Json.getLong(msg, "id", 0), "");
            case "error":
                return new Incoming(Incoming.Kind.ERROR, 0, "", 0, Json.getLong(msg, "id", 0),
                        Json.getString(msg, "error", "?"));
            default:
                return Incoming.invalid("unknown message type '" + type + "'");
        }
    }

    private static Json.Obj head(String type) {
        return new Json.Obj().put("v", VERSION).put("type", type);
    }

    static String pong(long id) {
        return head("pong").put("id", id).toString();
    }

    static String error(String message) {
        return head("error").put("error", message).toString();
    }

    static String event(String kind, long releasedBytes, String reason, long latencyMs) {
        return head("event").put("kind", kind).put("released_bytes", releasedBytes).put("reason", reason)
                .put("latency_ms", latencyMs).toString();
    }

    /** What a state (and a hello) reports about the JVM and its balloon. */
    static final class StateFields {
        long heapMaxBytes;
        long heapCommittedBytes;
        long heapUsedBytes;
        long liveBytes;
        String liveSource = "";
        long balloonMaxBytes;
        long flaps;
        long softCleared;
        long headroomBytes;
        long allocBytesPerS;
        /** Parallel: the old-generation space its promotion estimate needs (ParallelOld); 0 elsewhere. */
        long promotionReserveBytes;
        /** GC threads' CPU over the JVM's, in permille, and the pause p99; -1: not measured yet. */
        long gcCpuPermille = -1;
        long gcCpuPermilleNoBalloon = -1;
        long pauseP99Ms = -1;
        long pauseP99MsNoBalloon = -1;
        long gcCount;
        long gcTimeMs;
        long balloonBytes;
        long targetBytes;
        String reclaim = "ksm";
        long chunksEpoch;
        /** The chunks as a JSON array ({@link #chunks}). */
        String chunksJson = "[]";
    }

    /** Who this agent is, for the hello. */
    static final class Identity {
        long pid;
        String name = "";
        String agentVersion = "";
        String jvmVersion = "";
        String jvmVendor = "";
        String gc = "unknown";
        long regionBytes;
        String addressMode = "none";
        boolean canRelease;
    }

    static String state(StateFields s) {
        return fields(head("state"), s).toString();
    }

    static String hello(Identity id, StateFields s) {
        Json.Obj hello = head("hello").put("pid", id.pid).put("name", id.name).put("agent_version", id.agentVersion)
                .put("jvm_version", id.jvmVersion).put("jvm_vendor", id.jvmVendor).put("gc", id.gc)
                .put("region_bytes", id.regionBytes).put("address_mode", id.addressMode)
                .raw("reclaim_modes", id.canRelease ? "[\"direct\",\"ksm\",\"report\"]" : "[\"ksm\",\"report\"]");
        return fields(hello, s).toString();
    }

    private static Json.Obj fields(Json.Obj obj, StateFields s) {
        obj.put("heap_max_bytes", s.heapMaxBytes)
                .put("heap_committed_bytes", s.heapCommittedBytes)
                .put("heap_used_bytes", s.heapUsedBytes)
                .put("live_bytes", s.liveBytes)
                .put("live_source", s.liveSource)
                .put("balloon_max_bytes", s.balloonMaxBytes)
                .put("flaps", s.flaps)
                .put("gc_count", s.gcCount)
                .put("gc_time_ms", s.gcTimeMs)
                .put("balloon_bytes", s.balloonBytes)
                .put("target_bytes", s.targetBytes)
                .put("reclaim", s.reclaim)
                .put("chunks_epoch", s.chunksEpoch)
                .raw("chunks", s.chunksJson);
        // Issue 15's fields travel only once they say something: the driver defaults them.
        putIf(obj, "soft_cleared", s.softCleared, 0);
        putIf(obj, "headroom_bytes", s.headroomBytes, 0);
        putIf(obj, "alloc_bytes_per_s", s.allocBytesPerS, 0);
        putIf(obj, "promotion_reserve_bytes", s.promotionReserveBytes, 0);
        putIf(obj, "gc_cpu_permille", s.gcCpuPermille, -1);
        putIf(obj, "gc_cpu_permille_no_balloon", s.gcCpuPermilleNoBalloon, -1);
        putIf(obj, "pause_p99_ms", s.pauseP99Ms, -1);
        putIf(obj, "pause_p99_ms_no_balloon", s.pauseP99MsNoBalloon, -1);
        return obj;
    }

    private static void putIf(Json.Obj obj, String name, long value, long absent) {
        if (value != absent) {
            obj.put(name, value);
        }
    }

    /** One chunk's entry: {"id":..,"addr":..,"len":..,"released":..}. */
    static void chunk(StringBuilder out, long id, long addr, int len, boolean released) {
        out.append("{\"id\":").append(id).append(",\"addr\":").append(addr).append(",\"len\":").append(len)
                .append(",\"released\":").append(released).append('}');
    }
}
