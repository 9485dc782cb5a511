package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The agent's wire messages against tests/golden/protocol.json, which the Python tests read too. */
class WireTest {
    @SuppressWarnings("unchecked")
    static Map<String, Object> golden() throws IOException {
        Path path = Path.of(System.getProperty("golden", "tests/golden/protocol.json"));
        return Json.parseObject(Files.readString(path, StandardCharsets.UTF_8).trim());
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> list(Map<String, Object> doc, String key) {
        return (List<Map<String, Object>>) doc.get(key);
    }

    @Test
    void parsesWhatTheDriverSends() throws IOException {
        List<Map<String, Object>> cases = list(golden(), "driver_to_agent");
        assertFalse(cases.isEmpty());
        for (Map<String, Object> c : cases) {
            Wire.Incoming msg = Wire.parse((String) c.get("line"));
            String kind = (String) c.get("kind");
            assertEquals(kind.toUpperCase(), msg.kind.name(), (String) c.get("line"));
            if (kind.equals("target")) {
                assertEquals(c.get("target_bytes"), msg.targetBytes);
                assertEquals(c.get("reclaim"), msg.reclaim);
                assertEquals(c.get("headroom_bytes"), msg.headroomBytes);
            } else if (kind.equals("ping")) {
                assertEquals(c.get("id"), msg.id);
            } else if (kind.equals("error")) {
                assertEquals(c.get("error"), msg.text);
            }
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void rejectsBadLinesWithAReason() throws IOException {
        List<String> lines = (List<String>) golden().get("invalid_for_agent");
        assertFalse(lines.isEmpty());
        for (String line : lines) {
            Wire.Incoming msg = Wire.parse(line);
            assertEquals(Wire.Incoming.Kind.INVALID, msg.kind, line);
            assertFalse(msg.text.isEmpty(), line);
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void writesExactlyTheGoldenLines() throws IOException {
        for (Map<String, Object> c : list(golden(), "agent_to_driver")) {
            String kind = (String) c.get("kind");
            String built;
            switch (kind) {
                case "state":
                    built = Wire.state(fields((Map<String, Object>) c.get("state")));
                    break;
                case "hello":
                    built = Wire.hello(identity((Map<String, Object>) c.get("identity")),
                            fields((Map<String, Object>) c.get("state")));
                    break;
                case "event":
                    Map<String, Object> e = (Map<String, Object>) c.get("event");
                    built = Wire.event((String) e.get("kind"), (Long) e.get("released_bytes"), (String) e.get("reason"),
                            (Long) e.get("latency_ms"));
                    break;
                case "pong":
                    built = Wire.pong((Long) c.get("id"));
                    break;
                case "error":
                    built = Wire.error((String) c.get("error"));
                    break;
                default:
                    throw new AssertionError("unknown golden kind " + kind);
            }
            assertEquals(c.get("line"), built, kind);
        }
    }

    @SuppressWarnings("unchecked")
    static Wire.StateFields fields(Map<String, Object> s) {
        Wire.StateFields f = new Wire.StateFields();
        f.heapMaxBytes = (Long) s.get("heap_max_bytes");
        f.heapCommittedBytes = (Long) s.get("heap_committed_bytes");
        f.heapUsedBytes = (Long) s.get("heap_used_bytes");
        f.liveBytes = (Long) s.get("live_bytes");
        f.liveSource = (String) s.get("live_source");
        f.balloonMaxBytes = (Long) s.get("balloon_max_bytes");
        f.flaps = (Long) s.get("flaps");
        f.gcCount = (Long) s.get("gc_count");
        f.gcTimeMs = (Long) s.get("gc_time_ms");
        f.balloonBytes = (Long) s.get("balloon_bytes");
        f.targetBytes = (Long) s.get("target_bytes");
        f.reclaim = (String) s.get("reclaim");
        f.chunksEpoch = (Long) s.get("chunks_epoch");
        // Issue 15's optional fields: absent in the older golden lines, so the defaults stay.
        f.softCleared = (Long) s.getOrDefault("soft_cleared", f.softCleared);
        f.headroomBytes = (Long) s.getOrDefault("headroom_bytes", f.headroomBytes);
        f.allocBytesPerS = (Long) s.getOrDefault("alloc_bytes_per_s", f.allocBytesPerS);
        f.gcCpuPermille = (Long) s.getOrDefault("gc_cpu_permille", f.gcCpuPermille);
        f.gcCpuPermilleNoBalloon = (Long) s.getOrDefault("gc_cpu_permille_no_balloon", f.gcCpuPermilleNoBalloon);
        f.pauseP99Ms = (Long) s.getOrDefault("pause_p99_ms", f.pauseP99Ms);
        f.pauseP99MsNoBalloon = (Long) s.getOrDefault("pause_p99_ms_no_balloon", f.pauseP99MsNoBalloon);
        StringBuilder chunks = new StringBuilder("[");
        for (Map<String, Object> c : (List<Map<String, Object>>) s.get("chunks")) {
            if (chunks.length() > 1) {
                chunks.append(',');
            }
            Wire.chunk(chunks, (Long) c.get("id"), (Long) c.get("addr"), (int) (long) (Long) c.get("len"),
                    (Boolean) c.get("released"));
        }
        f.chunksJson = chunks.append(']').toString();
        return f;
    }

    static Wire.Identity identity(Map<String, Object> m) {
        Wire.Identity id = new Wire.Identity();
        id.pid = (Long) m.get("pid");
        id.name = (String) m.get("name");
        id.agentVersion = (String) m.get("agent_version");
        id.jvmVersion = (String) m.get("jvm_version");
        id.jvmVendor = (String) m.get("jvm_vendor");
        id.gc = (String) m.get("gc");
        id.regionBytes = (Long) m.get("region_bytes");
        id.addressMode = (String) m.get("address_mode");
        id.canRelease = (Boolean) m.get("can_release");
        assertTrue(id.pid > 0);
        return id;
    }
}
