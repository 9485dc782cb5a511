package io.heapballoon.agent;

/** Owns the agent's only output channel: short lines on stderr with one fixed prefix. */
final class Log {
    private static final String PREFIX = "[heapballoon-agent] ";

    private Log() {
    }

    static void info(String message) {
        System.err.println(PREFIX + message);
    }

    static void warn(String message, Throwable error) {
        String cause = error == null ? "" : ": " + error;
        System.err.println(PREFIX + "WARNING " + message + cause);
    }
}
