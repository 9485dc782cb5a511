package io.heapballoon.agent;

/**
 * Owns the JNI library (libheapballoon.so, agent/native/heapballoon.c): exact payload addresses
 * from GetPrimitiveArrayCritical, and madvise() of a pinned array's interior pages.
 */
final class NativeMem {
    private static boolean loaded;

    private NativeMem() {
    }

    /** Payload address of {@code array} (pinned only for the call), or 0 if the JVM copies. */
    static native long address(byte[] array);

    /** madvise()s the page-aligned interior of the payload while pinned; bytes, or -errno. */
    static native int release(byte[] array);

    /** Loads the library at {@code path}; false (with one log line) when it cannot be used. */
    static synchronized boolean load(String path) {
        if (path == null) {
            return false;
        }
        try {
            if (!loaded) {
                System.load(path);
                loaded = true;
            }
            if (address(new byte[64]) == 0) {
                Log.info("native library gives no array addresses; not using it");
                return false;
            }
            return true;
        } catch (UnsatisfiedLinkError | SecurityException e) {
            Log.warn("cannot load native library " + path, e);
            return false;
        }
    }
}
