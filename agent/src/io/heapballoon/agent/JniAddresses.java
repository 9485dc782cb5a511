package io.heapballoon.agent;

/** Owns the {@code jni} address mode: exact addresses and direct page release via NativeMem. */
final class JniAddresses implements AddressSource {
    @Override
    public String mode() {
        return "jni";
    }

    @Override
    public long payloadAddress(byte[] array, long knownAddr) {
        return NativeMem.address(array);
    }

    @Override
    public boolean canRelease() {
        return true;
    }

    @Override
    public long release(byte[] array) {
        return NativeMem.release(array);
    }
}
