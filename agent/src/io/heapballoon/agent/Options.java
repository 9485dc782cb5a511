package io.heapballoon.agent;

import java.io.File;
import java.util.Locale;

/**
 * Owns the agent's option string ({@code socket=...,name=...,native=...,interval_ms=...,headroom=...})
 * and the defaults for every option that is not given.
 */
final class Options {
    static final String DEFAULT_SOCKET = "/run/heapballoon/heapballoon.sock";

    final String socketPath;
    final String name;
    /** Path of libheapballoon.so, or null when native code is disabled or not found. */
    final String nativePath;
    final long intervalMs;
    /** Headroom in bytes, or -1 for the default (max(64 MiB, 5% of max heap)). */
    final long headroomBytes;

    private Options(String socketPath, String name, String nativePath, long intervalMs, long headroomBytes) {
        this.socketPath = socketPath;
        this.name = name;
        this.nativePath = nativePath;
        this.intervalMs = intervalMs;
        this.headroomBytes = headroomBytes;
    }

    static Options parse(String args) {
        String env = System.getenv("HEAPBALLOON_SOCKET");
        String socket = env != null && !env.isEmpty() ? env : DEFAULT_SOCKET;
        String name = null;
        String nativePath = null;
        boolean nativeGiven = false;
        long intervalMs = 1000;
        long headroom = -1;
        if (args != null) {
            for (String part : args.split(",")) {
                int eq = part.indexOf('=');
                if (part.isBlank() || eq <= 0) {
                    continue;
                }
                String key = part.substring(0, eq).trim();
                String value = part.substring(eq + 1).trim();
                try {
                    switch (key) {
                        case "socket": socket = value; break;
                        case "name": name = value; break;
                        case "native": nativeGiven = true; nativePath = "none".equals(value) ? null : value; break;
                        case "interval_ms": intervalMs = Math.max(50, Long.parseLong(value)); break;
                        case "headroom": headroom = parseBytes(value); break;
                        default: Log.info("ignoring unknown option " + key);
                    }
                } catch (NumberFormatException e) {
                    Log.info("ignoring bad value for option " + key + ": " + value);
                }
            }
        }
        if (!nativeGiven) {
            nativePath = besideJar("libheapballoon.so");
        }
        if (name == null || name.isEmpty()) {
            name = defaultName();
        }
        return new Options(socket, name, nativePath, intervalMs, headroom);
    }

    /** "64M" / "1G" / "1048576" → bytes. */
    static long parseBytes(String text) {
        String t = text.trim().toUpperCase(Locale.ROOT);
        long unit = 1;
        if (t.endsWith("K")) { unit = 1L << 10; } else if (t.endsWith("M")) { unit = 1L << 20; } else if (t.endsWith("G")) { unit = 1L << 30; }
        if (unit != 1) {
            t = t.substring(0, t.length() - 1);
        }
        return Long.parseLong(t) * unit;
    }

    /** The main class's simple name (or the jar's base name), else "pid-N"; safe for the option syntax. */
    static String defaultName() {
        String command = System.getProperty("sun.java.command", "").trim();
        String first = command.isEmpty() ? "" : command.split("\\s+")[0];
        if (first.endsWith(".jar")) {
            first = new File(first).getName();
            first = first.substring(0, first.length() - 4);
        } else if (first.contains(".")) {
            first = first.substring(first.lastIndexOf('.') + 1);
        }
        String clean = first.replaceAll("[^A-Za-z0-9._-]", "");
        if (clean.length() > 64) {
            clean = clean.substring(0, 64);
        }
        return clean.isEmpty() ? "pid-" + ProcessHandle.current().pid() : clean;
    }

    private static String besideJar(String fileName) {
        try {
            File jar = new File(Options.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            File lib = new File(jar.getParentFile(), fileName);
            return lib.isFile() ? lib.getPath() : null;
        } catch (Exception | Error e) {
            return null;
        }
    }
}
