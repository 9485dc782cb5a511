package io.heapballoon.agent;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** GC threads by their Linux names (comm, 15 characters), as each JDK and collector names them. */
class GcProfileTest {
    @Test
    void everyCollectorsThreadsCount() {
        String[] gc = {"GC Thread#0", "G1 Conc#0", "G1 Refine#0", "VM Thread", "ZWorker#0", "ZDriver",
            "XWorker#0", "XDriver", "XDirector", "XStat", "ZWorkerYoung#0", "ZWorkerOld#0", "ZDriverMinor",
            "ZDriverMajor", "Shenandoah GC T", "Shenandoah Cont"};
        for (String name : gc) {
            assertTrue(GcProfile.isGcThread(name), name);
        }
    }

    @Test
    void applicationAndJitThreadsDoNot() {
        for (String name : new String[] {"java", "C2 CompilerThre", "C1 CompilerThre", "Reference Handl",
            "RuntimeWorker#0", "Service Thread", "main"}) {
            assertFalse(GcProfile.isGcThread(name), name);
        }
    }
}
