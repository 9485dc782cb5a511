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

    /**
     * The JDK tool this JVM runs ({@code jcmd}, {@code jps}, {@code jstack}, {@code jar}, ...: its main
     * module is one of the JDK's {@code jdk.*} modules), or null. {@code JAVA_TOOL_OPTIONS} reaches
     * those JVMs too, where our guest images and services set it for every JVM; a tool is nobody's
     * heap to reclaim, and its module graph lacks {@code jdk.unsupported}, so the agent would only
     * print a warning into the tool's output.
     */
    static String jdkTool(String mainModule) {
        return mainModule != null && mainModule.startsWith("jdk.") ? mainModule : null;
    }

    static void start(String args) {
        try {
            String tool = jdkTool(System.getProperty("jdk.module.main"));
            if (tool != null) {
                Log.debug("not started in the JDK's own tool " + tool);
                return;
            }
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
