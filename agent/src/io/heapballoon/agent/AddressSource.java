package io.heapballoon.agent;

/**
 * Owns how a chunk's payload address is found ({@code jni}, {@code unsafe} or {@code none}) and
 * whether the chunk's pages can be given back to the kernel directly.
 */
interface AddressSource {
    /** "jni", "unsafe" or "none"; an unsafe source turns "none" after a failed validation. */
    String mode();

    /**
     * The virtual address of the payload's first byte, or 0 when unknown. {@code knownAddr} is
     * the address reported last time (0 if none), so a source can skip re-validating it.
     */
    long payloadAddress(byte[] array, long knownAddr);

    /** Only the JNI source can release pages (it pins the array while it does). */
    default boolean canRelease() {
        return false;
    }

    /** Gives the payload's whole pages back to the kernel; bytes released, or -errno. */
    default long release(byte[] array) {
        return -95; // EOPNOTSUPP
    }

    /** The source used when no address is available. */
    AddressSource NONE = new AddressSource() {
        @Override
        public String mode() {
            return "none";
        }

        @Override
        public long payloadAddress(byte[] array, long knownAddr) {
            return 0;
        }

    };
}
