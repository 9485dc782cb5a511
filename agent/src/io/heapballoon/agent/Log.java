package io.heapballoon.agent;

/** Owns the agent's only output channel: short lines on stderr with one fixed prefix. */
final class Log {
    private static final String PREFIX = "[heapballoon-agent] ";

    private Log() {
    }

    /** Debug lines only with {@code HEAPBALLOON_AGENT_DEBUG=1} in the environment. */
    private static final boolean DEBUG = "1".equals(System.getenv("HEAPBALLOON_AGENT_DEBUG"));

    static void debug(String message) {
        if (DEBUG) {
            System.err.println(PREFIX + "debug " + message);
        }
    }

    static void info(String message) {
        System.err.println(PREFIX + message);
    }

    static void warn(String message, Throwable error) {
        String cause = error == null ? "" : ": " + error;
        System.err.println(PREFIX + "WARNING " + message + cause);
    }
}
