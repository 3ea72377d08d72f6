/*
 * A stand-in for the CUDA driver library (libcuda.so.1) implementing, over host memory,
 * the driver calls plaid makes, so that every CUDA code path is tested on machines without
 * a GPU. Built by the tests and found through LD_LIBRARY_PATH.
 *
 * - Device pointers are host addresses; cuMemAlloc is an aligned malloc, cuMemHostAlloc
 *   (pinned memory) too.
 * - Asynchronous copies are DEFERRED: they are queued on their stream and performed only
 *   when the stream, or an event recorded after them, is synchronized. A staging buffer
 *   reused before its copy was waited for therefore shows up as corrupted data.
 * - Calls that need a context fail with CUDA_ERROR_INVALID_CONTEXT when the calling thread
 *   has none current, as the real driver does.
 * - Errors are injected through the environment: FAKE_CUDA_FAIL_COPY_AT=N makes the N-th
 *   (1-based) asynchronous copy fail with CUDA_ERROR_ILLEGAL_ADDRESS.
 * - FAKE_CUDA_DEVICES sets the device count (default 1); built with -DFAKE_CUDA_NO_DEVICE
 *   it is a driver without a device (cuInit fails with CUDA_ERROR_NO_DEVICE).
 * - fake_cuda_stats() reports pinned bytes (now and peak), copies performed, and misuse
 *   (pinned memory freed or a stream destroyed with copies still pending).
 */

#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct fake_ctx *CUcontext;
typedef struct fake_stream *CUstream;
typedef struct fake_event *CUevent;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
};

#define MAX_DEVICES 8
#define MAX_STACK 16

struct fake_ctx {
    int device;
    int refs;
};

typedef struct {
    unsigned char *dst;
    const unsigned char *src;
    size_t len;
    uint64_t seq;
} pending_copy;

struct fake_stream {
    pending_copy *copies;
    size_t count, capacity;
    uint64_t next_seq;
};

struct fake_event {
    CUstream stream;
    uint64_t seq;
    int recorded;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_initialized;
static struct fake_ctx g_primary[MAX_DEVICES];
static struct fake_stream g_default_stream;
static __thread CUcontext t_stack[MAX_STACK];
static __thread int t_depth;
static uint64_t g_pinned_now, g_pinned_peak, g_copies, g_async_calls, g_misuse;

/* Pinned allocations, to check their size on free and pending copies from them. */
typedef struct {
    void *ptr;
    size_t len;
} allocation;
static allocation *g_pinned;
static size_t g_pinned_count, g_pinned_capacity;

static int device_count(void)
{
#ifdef FAKE_CUDA_NO_DEVICE
    return 0;
#else
    const char *env = getenv("FAKE_CUDA_DEVICES");
    int n = env != NULL ? atoi(env) : 1;
    return n < 0 ? 0 : n > MAX_DEVICES ? MAX_DEVICES : n;
#endif
}

static CUcontext current(void)
{
    return t_depth > 0 ? t_stack[t_depth - 1] : NULL;
}

static CUresult need_context(void)
{
    if (!g_initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    return current() != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

CUresult cuGetErrorName(CUresult error, const char **name)
{
    if (name == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    switch (error) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case CUDA_ERROR_NO_DEVICE: *name = "CUDA_ERROR_NO_DEVICE"; break;
    case CUDA_ERROR_INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *name = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    default: *name = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuInit(unsigned int flags)
{
    if (flags != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (device_count() == 0) {
        return CUDA_ERROR_NO_DEVICE;
    }
    pthread_mutex_lock(&g_lock);
    g_initialized = 1;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int *version)
{
    if (version == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *version = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    if (count == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!g_initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    *count = device_count();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!g_initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (device == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (ordinal < 0 || ordinal >= device_count()) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device)
{
    if (!g_initialized) {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (ctx == NULL || device < 0 || device >= device_count()) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    pthread_mutex_lock(&g_lock);
    g_primary[device].device = device;
    g_primary[device].refs++;
    *ctx = &g_primary[device];
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device)
{
    CUresult rc = CUDA_SUCCESS;
    if (device < 0 || device >= device_count()) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    pthread_mutex_lock(&g_lock);
    if (g_primary[device].refs <= 0) {
        g_misuse++;
        rc = CUDA_ERROR_INVALID_CONTEXT;
    } else {
        g_primary[device].refs--;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    if (ctx == NULL || t_depth >= MAX_STACK) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    t_stack[t_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext *ctx)
{
    if (t_depth == 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    t_depth--;
    if (ctx != NULL) {
        *ctx = t_stack[t_depth];
    }
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device)
{
    CUresult rc = need_context();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    *device = current()->device;
    return CUDA_SUCCESS;
}

/* ---- memory -------------------------------------------------------------------------- */

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes)
{
    void *p = NULL;
    CUresult rc = need_context();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (dptr == NULL || bytes == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (posix_memalign(&p, 256, bytes) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    CUresult rc = need_context();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    free((void *)(uintptr_t)dptr);
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void **pp, size_t bytes, unsigned int flags)
{
    void *p = NULL;
    CUresult rc = need_context();
    (void)flags;
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (pp == NULL || bytes == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (posix_memalign(&p, 4096, bytes) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&g_lock);
    if (g_pinned_count == g_pinned_capacity) {
        size_t capacity = g_pinned_capacity ? 2 * g_pinned_capacity : 64;
        allocation *grown = realloc(g_pinned, capacity * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&g_lock);
            free(p);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        g_pinned = grown;
        g_pinned_capacity = capacity;
    }
    g_pinned[g_pinned_count].ptr = p;
    g_pinned[g_pinned_count].len = bytes;
    g_pinned_count++;
    g_pinned_now += bytes;
    if (g_pinned_now > g_pinned_peak) {
        g_pinned_peak = g_pinned_now;
    }
    pthread_mutex_unlock(&g_lock);
    *pp = p;
    return CUDA_SUCCESS;
}

/* Copies still queued anywhere that read or write [p, p + len). Called with the lock. */
static int pending_in(const void *p, size_t len);

CUresult cuMemFreeHost(void *p)
{
    size_t i;
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < g_pinned_count; i++) {
        if (g_pinned[i].ptr == p) {
            if (pending_in(p, g_pinned[i].len)) {
                g_misuse++;
            }
            g_pinned_now -= g_pinned[i].len;
            g_pinned[i] = g_pinned[--g_pinned_count];
            rc = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    if (rc == CUDA_SUCCESS) {
        free(p);
    }
    return rc;
}

/* ---- streams, events and deferred copies -------------------------------------------- */

#define MAX_STREAMS 4096
static CUstream g_streams[MAX_STREAMS];
static size_t g_stream_count;

static int pending_in(const void *p, size_t len)
{
    const unsigned char *lo = p, *hi = (const unsigned char *)p + len;
    size_t s, k;
    for (s = 0; s <= g_stream_count; s++) {
        CUstream st = s < g_stream_count ? g_streams[s] : &g_default_stream;
        for (k = 0; k < st->count; k++) {
            const pending_copy *c = &st->copies[k];
            if ((c->src < hi && c->src + c->len > lo) || (c->dst < hi && c->dst + c->len > lo)) {
                return 1;
            }
        }
    }
    return 0;
}

static CUstream resolve(CUstream s)
{
    return s != NULL ? s : &g_default_stream;
}

/* Perform the copies of `s` queued before sequence number `upto`. Called with the lock. */
static void flush(CUstream s, uint64_t upto)
{
    size_t k, kept = 0;
    for (k = 0; k < s->count; k++) {
        pending_copy *c = &s->copies[k];
        if (c->seq < upto) {
            memcpy(c->dst, c->src, c->len);
            g_copies++;
        } else {
            s->copies[kept++] = *c;
        }
    }
    s->count = kept;
}

CUresult cuStreamCreate(CUstream *stream, unsigned int flags)
{
    CUstream s;
    CUresult rc = need_context();
    (void)flags;
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (stream == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&g_lock);
    if (g_stream_count == MAX_STREAMS) {
        pthread_mutex_unlock(&g_lock);
        free(s);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    g_streams[g_stream_count++] = s;
    pthread_mutex_unlock(&g_lock);
    *stream = s;
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream stream)
{
    size_t i;
    CUresult rc = CUDA_ERROR_INVALID_HANDLE;
    pthread_mutex_lock(&g_lock);
    for (i = 0; i < g_stream_count; i++) {
        if (g_streams[i] == stream) {
            /* The real driver finishes queued work; plaid must not rely on it. */
            if (stream->count > 0) {
                g_misuse++;
                flush(stream, UINT64_MAX);
            }
            g_streams[i] = g_streams[--g_stream_count];
            free(stream->copies);
            free(stream);
            rc = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

CUresult cuStreamSynchronize(CUstream stream)
{
    CUresult rc = need_context();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    pthread_mutex_lock(&g_lock);
    flush(resolve(stream), UINT64_MAX);
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

static CUresult enqueue(void *dst, const void *src, size_t len, CUstream stream)
{
    const char *fail_at = getenv("FAKE_CUDA_FAIL_COPY_AT");
    CUstream s;
    CUresult rc = need_context();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (dst == NULL || src == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&g_lock);
    g_async_calls++;
    if (fail_at != NULL && (uint64_t)strtoull(fail_at, NULL, 10) == g_async_calls) {
        pthread_mutex_unlock(&g_lock);
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    s = resolve(stream);
    if (s->count == s->capacity) {
        size_t capacity = s->capacity ? 2 * s->capacity : 16;
        pending_copy *grown = realloc(s->copies, capacity * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&g_lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        s->copies = grown;
        s->capacity = capacity;
    }
    s->copies[s->count].dst = dst;
    s->copies[s->count].src = src;
    s->copies[s->count].len = len;
    s->copies[s->count].seq = s->next_seq++;
    s->count++;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t len, CUstream stream)
{
    return enqueue((void *)(uintptr_t)dst, src, len, stream);
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t len, CUstream stream)
{
    return enqueue(dst, (const void *)(uintptr_t)src, len, stream);
}

CUresult cuEventCreate(CUevent *event, unsigned int flags)
{
    CUresult rc = need_context();
    (void)flags;
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (event == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *event = calloc(1, sizeof **event);
    return *event != NULL ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuEventDestroy_v2(CUevent event)
{
    if (event == NULL) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    free(event);
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent event, CUstream stream)
{
    CUresult rc = need_context();
    if (rc != CUDA_SUCCESS) {
        return rc;
    }
    if (event == NULL) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    pthread_mutex_lock(&g_lock);
    event->stream = resolve(stream);
    event->seq = event->stream->next_seq;
    event->recorded = 1;
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

CUresult cuEventSynchronize(CUevent event)
{
    if (event == NULL) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    pthread_mutex_lock(&g_lock);
    if (event->recorded) {
        flush(event->stream, event->seq);
    }
    pthread_mutex_unlock(&g_lock);
    return CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags)
{
    (void)stream;
    (void)flags;
    return cuEventSynchronize(event);
}

/* ---- for the tests ------------------------------------------------------------------ */

void fake_cuda_stats(uint64_t *pinned_now, uint64_t *pinned_peak, uint64_t *copies,
                     uint64_t *misuse)
{
    pthread_mutex_lock(&g_lock);
    *pinned_now = g_pinned_now;
    *pinned_peak = g_pinned_peak;
    *copies = g_copies;
    *misuse = g_misuse;
    pthread_mutex_unlock(&g_lock);
}

/* Reset the peak and the copy counter (between phases of a test). */
void fake_cuda_reset_stats(void)
{
    pthread_mutex_lock(&g_lock);
    g_pinned_peak = g_pinned_now;
    g_copies = 0;
    g_async_calls = 0;
    pthread_mutex_unlock(&g_lock);
}
