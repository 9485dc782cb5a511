package io.heapballoon.agent;

import java.lang.instrument.Instrumentation;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Entry points of the heapballoon Java agent ({@code -javaagent:} or dynamic attach). Owns only
 * starting the single daemon thread "heapballoon-agent"; never throws into the host JVM.
 */
public final class Agent {
    private static final AtomicBoolean STARTED = new AtomicBoolean();

    private Agent() {
    }

    public static void premain(String args, Instrumentation instrumentation) {
        start(args);
    }

    public static void premain(String args) {
        start(args);
    }

    public static void agentmain(String args, Instrumentation instrumentation) {
        start(args);
    }

    public static void agentmain(String args) {
        start(args);
    }

    static void start(String args) {
        try {
            if (!STARTED.compareAndSet(false, true)) {
                Log.info("already running in this JVM; ignoring a second start");
                return;
            }
            Thread thread = new Thread(new AgentLoop(Options.parse(args)), "heapballoon-agent");
            thread.setDaemon(true);
            thread.start();
        } catch (Throwable t) {
            try {
                Log.warn("not started", t);
            } catch (Throwable ignored) {
                // nothing left to do; never disturb the application
            }
        }
    }
}
