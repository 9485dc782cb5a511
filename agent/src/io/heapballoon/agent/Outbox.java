package io.heapballoon.agent;

import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Owns what the agent owes the driver between sends: the pending event lines (at most
 * {@value #MAX_PENDING_EVENTS}; the oldest go first) and the flag that the state changed and
 * should be sent now. Written by the agent thread and the GC-notification thread (lock-free
 * queue and flag); drained only by the agent thread (AgentLoop.serve).
 */
final class Outbox {
    static final int MAX_PENDING_EVENTS = 64;

    private final ConcurrentLinkedQueue<String> events = new ConcurrentLinkedQueue<>();
    private final AtomicBoolean changed = new AtomicBoolean();

    /** Queue an event line and ask for a state message. */
    void event(String kind, long releasedBytes, String reason, long latencyMs) {
        events.add(Wire.event(kind, releasedBytes, reason, latencyMs));
        while (events.size() > MAX_PENDING_EVENTS) {
            events.poll();
        }
        changed.set(true);
    }

    /** The state changed: send it at the next opportunity. */
    void changed() {
        changed.set(true);
    }

    /** Agent thread: the next pending event line, or null. */
    String pollEvent() {
        return events.poll();
    }

    /** Agent thread: drop pending events (a hello carries the full state). */
    void clearEvents() {
        events.clear();
    }

    /** Agent thread: whether the state changed since the last call. */
    boolean takeChanged() {
        return changed.getAndSet(false);
    }
}
