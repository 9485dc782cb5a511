/*
 * libheapballoon.so: the two native methods of io.heapballoon.agent.NativeMem.
 *
 * address(byte[])  exact address of the array payload, from GetPrimitiveArrayCritical
 *                  (pinned only for the call; released with JNI_ABORT).
 * release(byte[])  while the array is pinned (the GC cannot move it), madvise() the whole pages
 *                  inside the payload away: MADV_REMOVE (shared memfd heaps, e.g. ZGC), falling
 *                  back to MADV_DONTNEED for a private anonymous heap. The payload is all zero,
 *                  so reading the released pages later yields the same zeros.
 *                  Returns the bytes released, or -errno.
 */
#include <errno.h>
#include <jni.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

JNIEXPORT jlong JNICALL
Java_io_heapballoon_agent_NativeMem_address(JNIEnv *env, jclass cls, jbyteArray array)
{
    (void)cls;
    jboolean is_copy = JNI_FALSE;
    void *payload = (*env)->GetPrimitiveArrayCritical(env, array, &is_copy);
    if (payload == NULL)
        return 0;
    jlong addr = is_copy ? 0 : (jlong)(uintptr_t)payload;
    (*env)->ReleasePrimitiveArrayCritical(env, array, payload, JNI_ABORT);
    return addr;
}

JNIEXPORT jint JNICALL
Java_io_heapballoon_agent_NativeMem_release(JNIEnv *env, jclass cls, jbyteArray array)
{
    (void)cls;
    jsize len = (*env)->GetArrayLength(env, array);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    jboolean is_copy = JNI_FALSE;
    unsigned char *payload = (*env)->GetPrimitiveArrayCritical(env, array, &is_copy);
    if (payload == NULL)
        return -ENOMEM;
    int result = -EOPNOTSUPP;
    if (!is_copy) {
        uintptr_t start = ((uintptr_t)payload + page - 1) & ~(page - 1);
        uintptr_t end = ((uintptr_t)payload + (uintptr_t)len) & ~(page - 1);
        result = 0;
        if (end > start) {
            size_t size = end - start;
            if (madvise((void *)start, size, MADV_REMOVE) != 0) {
                if ((errno == EINVAL || errno == EOPNOTSUPP) && madvise((void *)start, size, MADV_DONTNEED) == 0)
                    result = (int)size;
                else
                    result = -errno;
            } else {
                result = (int)size;
            }
        }
    }
    (*env)->ReleasePrimitiveArrayCritical(env, array, payload, JNI_ABORT);
    return result;
}
