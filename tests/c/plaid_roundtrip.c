/*
 * End-to-end test of the C API, written only against include/plaid.h.
 *
 * Usage: plaid_roundtrip SCRATCH_DIR [GOLDEN_DIR]
 *
 * Writes files into SCRATCH_DIR (created with its parents if missing), reads them back and
 * checks every byte, status and message. GOLDEN_DIR, when given, is the repository's
 * tests/golden directory. PLAID_TEST_QUICK=1 in the environment shrinks the big-tensor
 * and many-tensor cases, for runs under valgrind.
 *
 * Prints one line per failed check (file:line, status names, the library's message)
 * and ends with "N passed, M failed"; exits non-zero when M > 0.
 */

/* opendir, mkdir, unlink and stat are POSIX, hidden by -std=c99 otherwise. */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "plaid.h"

/* ------------------------------------------------------------------------------------ */
/* Checks                                                                               */
/* ------------------------------------------------------------------------------------ */

static unsigned long g_passed;
static unsigned long g_failed;

/* The library's message captured right after the last CHECK_STATUS call. */
static char g_message[4096];

static int check_impl(int ok, const char *what, const char *file, int line)
{
    char message[1024];
    if (ok) {
        g_passed++;
        return 1;
    }
    g_failed++;
    plaid_last_error_message(message, sizeof message);
    fprintf(stderr, "%s:%d: check failed: %s\n    last plaid message: %s\n", file, line, what,
            message[0] != '\0' ? message : "(none)");
    return 0;
}

static int check_status_impl(plaid_status got, plaid_status want, const char *call,
                             const char *file, int line)
{
    /* Read the message before anything else can replace it. */
    plaid_last_error_message(g_message, sizeof g_message);
    if (got == want) {
        g_passed++;
        return 1;
    }
    g_failed++;
    fprintf(stderr, "%s:%d: %s\n    returned %s (%d), expected %s (%d)\n    message: %s\n", file,
            line, call, plaid_status_name(got), (int)got, plaid_status_name(want), (int)want,
            g_message[0] != '\0' ? g_message : "(none)");
    return 0;
}

static int check_message_impl(const char *needle, const char *file, int line)
{
    if (strstr(g_message, needle) != NULL) {
        g_passed++;
        return 1;
    }
    g_failed++;
    fprintf(stderr, "%s:%d: the message does not contain \"%s\"\n    message: %s\n", file, line,
            needle, g_message[0] != '\0' ? g_message : "(none)");
    return 0;
}

/* Each evaluates to 1 when the check passed, so a test can stop early on failure. */
#define CHECK(cond) check_impl((cond) ? 1 : 0, #cond, __FILE__, __LINE__)
#define CHECK_STATUS(call, want) check_status_impl((call), (want), #call, __FILE__, __LINE__)
#define CHECK_OK(call) CHECK_STATUS(call, PLAID_OK)
/* The message of the last CHECK_STATUS call contains `needle`. */
#define CHECK_MESSAGE(needle) check_message_impl((needle), __FILE__, __LINE__)

/* ------------------------------------------------------------------------------------ */
/* Helpers: randomness, paths, files                                                    */
/* ------------------------------------------------------------------------------------ */

#define POISON 0xA5
/* Bytes past each destination that the library must never touch. */
#define GUARD 64
#define MAX_RANK_TESTED 8

static uint64_t g_rng = 0x9E3779B97F4A7C15u;

static uint64_t xorshift64(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static void fill_random(unsigned char *bytes, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        bytes[i] = (unsigned char)(xorshift64() >> 56);
    }
}

static const char *g_scratch;
static int g_quick;

typedef struct {
    char text[4096];
} path_buf;

/* SCRATCH_DIR/name, written into `buf`. */
static const char *scratch_path(path_buf *buf, const char *name)
{
    snprintf(buf->text, sizeof buf->text, "%s/%s", g_scratch, name);
    return buf->text;
}

/* mkdir -p; returns 0 on success. */
static int make_directories(const char *path)
{
    char partial[4096];
    size_t i, len = strlen(path);
    if (len == 0 || len >= sizeof partial) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(partial, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (partial[i] == '/' || partial[i] == '\0') {
            char saved = partial[i];
            partial[i] = '\0';
            if (mkdir(partial, 0777) != 0 && errno != EEXIST) {
                return -1;
            }
            partial[i] = saved;
        }
    }
    return 0;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static unsigned char *read_whole_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *bytes = NULL;
    long size;
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        bytes = malloc((size_t)size + 1);
        if (bytes != NULL && fread(bytes, 1, (size_t)size, f) != (size_t)size) {
            free(bytes);
            bytes = NULL;
        }
        *len = (size_t)size;
    }
    fclose(f);
    return bytes;
}

static int write_whole_file(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    int ok;
    if (f == NULL) {
        return 0;
    }
    ok = fwrite(bytes, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

/* Entries of the scratch directory whose name contains `needle`, other than `except`. */
static int count_entries_containing(const char *needle, const char *except)
{
    DIR *dir = opendir(g_scratch);
    struct dirent *entry;
    int count = 0;
    if (dir == NULL) {
        return -1;
    }
    while ((entry = readdir(dir)) != NULL) {
        if (strstr(entry->d_name, needle) != NULL &&
            (except == NULL || strcmp(entry->d_name, except) != 0)) {
            count++;
        }
    }
    closedir(dir);
    return count;
}

static size_t find_bytes(const unsigned char *hay, size_t hay_len, const unsigned char *needle,
                         size_t needle_len)
{
    size_t i;
    for (i = 0; needle_len <= hay_len && i <= hay_len - needle_len; i++) {
        if (memcmp(hay + i, needle, needle_len) == 0) {
            return i;
        }
    }
    return (size_t)-1;
}

static int is_poisoned(const unsigned char *bytes, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (bytes[i] != POISON) {
            return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------------------------------ */
/* A model: tensors with known contents, written with the serializer                   */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    char name[128];
    uint32_t dtype;
    uint32_t ndim;
    uint64_t shape[MAX_RANK_TESTED];
    uint64_t nbytes;
    unsigned char *data; /* NULL when nbytes is 0 */
} tensor_spec;

typedef struct {
    size_t count;
    size_t capacity;
    tensor_spec *tensors;
} model;

static void model_free(model *m)
{
    size_t i;
    for (i = 0; i < m->count; i++) {
        free(m->tensors[i].data);
    }
    free(m->tensors);
    memset(m, 0, sizeof *m);
}

/* Add a tensor of random contents; returns 0 when out of memory. */
static int model_add(model *m, const char *name, uint32_t dtype, uint32_t ndim,
                     const uint64_t *shape)
{
    tensor_spec *t;
    uint64_t elements = 1;
    uint32_t k;
    if (m->count == m->capacity) {
        size_t grown = m->capacity == 0 ? 16 : m->capacity * 2;
        tensor_spec *more = realloc(m->tensors, grown * sizeof *more);
        if (more == NULL) {
            return 0;
        }
        m->tensors = more;
        m->capacity = grown;
    }
    t = &m->tensors[m->count];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (k = 0; k < ndim; k++) {
        t->shape[k] = shape[k];
        elements *= shape[k];
    }
    t->nbytes = elements * plaid_dtype_size(dtype);
    if (t->nbytes > 0) {
        t->data = malloc((size_t)t->nbytes);
        if (t->data == NULL) {
            return 0;
        }
        fill_random(t->data, (size_t)t->nbytes);
    }
    m->count++;
    return 1;
}

/*
 * Write `m` to `path` with `options` (NULL for defaults) and the NULL-terminated
 * key/value list `metadata` (may be NULL). Returns 1 when every call succeeded.
 */
static int model_write(const model *m, const char *path, const plaid_write_options *options,
                       const char *const *metadata)
{
    plaid_serializer *s = NULL;
    size_t i;
    int ok = 1;
    if (!CHECK_OK(plaid_serializer_new(path, options, &s))) {
        return 0;
    }
    for (i = 0; metadata != NULL && metadata[i] != NULL; i += 2) {
        ok &= CHECK_OK(plaid_serializer_set_metadata(s, metadata[i], metadata[i + 1]));
    }
    /* One check for all tensors, so that 10,000 of them count once. */
    for (i = 0; i < m->count && ok; i++) {
        const tensor_spec *t = &m->tensors[i];
        plaid_status status = plaid_serializer_add_tensor(s, t->name, t->dtype,
                                                          t->ndim ? t->shape : NULL, t->ndim,
                                                          t->data, t->nbytes);
        if (status != PLAID_OK) {
            ok = check_status_impl(status, PLAID_OK, "plaid_serializer_add_tensor", __FILE__,
                                   __LINE__);
            fprintf(stderr, "    (tensor #%zu '%s')\n", i, t->name);
        }
    }
    if (ok && m->count > 0) {
        ok = CHECK(i == m->count);
    }
    if (ok) {
        ok = CHECK_OK(plaid_serializer_finish(s));
    }
    plaid_serializer_free(s);
    return ok;
}

/* Compare what the deserializer reports with `m`; prints the first few mismatches. */
static size_t model_info_mismatches(const plaid_deserializer *d, const model *m)
{
    size_t i, bad = 0;
    if (plaid_deserializer_tensor_count(d) != m->count) {
        fprintf(stderr, "    tensor count %zu, expected %zu\n", plaid_deserializer_tensor_count(d),
                m->count);
        return 1;
    }
    for (i = 0; i < m->count; i++) {
        const tensor_spec *t = &m->tensors[i];
        const plaid_tensor_info *info = plaid_deserializer_tensor(d, i);
        size_t found = (size_t)-1;
        int same = info != NULL;
        uint32_t k;
        if (same) {
            same = strcmp(info->name, t->name) == 0 && info->name_len == strlen(t->name) &&
                   info->dtype == t->dtype && info->ndim == t->ndim &&
                   info->nbytes == t->nbytes && info->index == i &&
                   (t->ndim == 0 ? info->shape == NULL : info->shape != NULL);
            for (k = 0; same && k < t->ndim; k++) {
                same = info->shape[k] == t->shape[k];
            }
        }
        same = same && plaid_deserializer_find(d, t->name, &found) == PLAID_OK && found == i;
        if (!same && bad++ < 5) {
            fprintf(stderr, "    tensor #%zu '%s' reads back differently (find gave %zu)\n", i,
                    t->name, found);
        }
    }
    return bad;
}

/* ------------------------------------------------------------------------------------ */
/* A placement plan: poisoned host buffers and the destination handed out for each      */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    size_t count;
    unsigned char **buffers; /* nbytes + GUARD bytes each, poisoned */
    uint64_t *nbytes;
    uint32_t *kind; /* PLAID_DEST_SKIP leaves the destination untouched (zeroed) */
    int32_t *device;
    uint64_t *address;
    uint64_t *capacity;
    size_t calls;
    size_t cancel_on_call; /* 1-based call that returns non-zero; 0 for none */
    size_t contract_errors; /* out-of-order calls, dirty destinations, bad infos */
} plan;

static void plan_free(plan *p)
{
    size_t i;
    for (i = 0; p->buffers != NULL && i < p->count; i++) {
        free(p->buffers[i]);
    }
    free(p->buffers);
    free(p->nbytes);
    free(p->kind);
    free(p->device);
    free(p->address);
    free(p->capacity);
    memset(p, 0, sizeof *p);
}

/* Every tensor of `d` to its own poisoned host buffer. Returns 0 when out of memory. */
static int plan_init(plan *p, const plaid_deserializer *d)
{
    size_t i, n = plaid_deserializer_tensor_count(d);
    memset(p, 0, sizeof *p);
    p->count = n;
    p->buffers = calloc(n + 1, sizeof *p->buffers);
    p->nbytes = calloc(n + 1, sizeof *p->nbytes);
    p->kind = calloc(n + 1, sizeof *p->kind);
    p->device = calloc(n + 1, sizeof *p->device);
    p->address = calloc(n + 1, sizeof *p->address);
    p->capacity = calloc(n + 1, sizeof *p->capacity);
    if (!p->buffers || !p->nbytes || !p->kind || !p->device || !p->address || !p->capacity) {
        plan_free(p);
        return 0;
    }
    for (i = 0; i < n; i++) {
        const plaid_tensor_info *info = plaid_deserializer_tensor(d, i);
        p->nbytes[i] = info != NULL ? info->nbytes : 0;
        p->buffers[i] = malloc((size_t)p->nbytes[i] + GUARD);
        if (p->buffers[i] == NULL) {
            plan_free(p);
            return 0;
        }
        memset(p->buffers[i], POISON, (size_t)p->nbytes[i] + GUARD);
        p->kind[i] = PLAID_DEST_HOST;
        p->address[i] = (uint64_t)(uintptr_t)p->buffers[i];
        p->capacity[i] = p->nbytes[i];
    }
    return 1;
}

static void plan_repoison(plan *p)
{
    size_t i;
    for (i = 0; i < p->count; i++) {
        memset(p->buffers[i], POISON, (size_t)p->nbytes[i] + GUARD);
    }
    p->calls = 0;
    p->contract_errors = 0;
}

static int32_t place(void *user_data, const plaid_tensor_info *info, plaid_destination *dest)
{
    plan *p = user_data;
    size_t i;
    p->calls++;
    if (info == NULL || dest == NULL || info->index >= p->count) {
        p->contract_errors++;
        return 1;
    }
    i = info->index;
    if (i + 1 != p->calls || info->nbytes != p->nbytes[i] || dest->kind != PLAID_DEST_SKIP ||
        dest->device != 0 || dest->address != 0 || dest->capacity != 0) {
        p->contract_errors++;
    }
    if (p->cancel_on_call == p->calls) {
        return 1;
    }
    if (p->kind[i] != PLAID_DEST_SKIP) {
        dest->kind = p->kind[i];
        dest->device = p->device[i];
        dest->address = p->address[i];
        dest->capacity = p->capacity[i];
    }
    return 0;
}

/* Buffers that no longer hold only poison (guards included). */
static size_t plan_touched(const plan *p)
{
    size_t i, touched = 0;
    for (i = 0; i < p->count; i++) {
        touched += !is_poisoned(p->buffers[i], (size_t)p->nbytes[i] + GUARD);
    }
    return touched;
}

/* Tensor i landed intact, and its guard bytes were left alone. */
static int plan_holds(const plan *p, const model *m, size_t i)
{
    size_t n = (size_t)m->tensors[i].nbytes;
    return p->nbytes[i] == n && (n == 0 || memcmp(p->buffers[i], m->tensors[i].data, n) == 0) &&
           is_poisoned(p->buffers[i] + n, GUARD);
}

static size_t plan_mismatches(const plan *p, const model *m)
{
    size_t i, bad = 0;
    for (i = 0; i < m->count && i < p->count; i++) {
        if (!plan_holds(p, m, i) && bad++ < 5) {
            fprintf(stderr, "    tensor #%zu '%s' did not load intact\n", i, m->tensors[i].name);
        }
    }
    return bad + (p->count != m->count);
}

/* Open `path`, check its tensor list, load everything and compare. */
static void check_round_trip(const char *path, const model *m, const plaid_read_options *options)
{
    plaid_deserializer *d = NULL;
    plan p;
    if (!CHECK_OK(plaid_deserializer_open(path, options, &d))) {
        return;
    }
    CHECK(model_info_mismatches(d, m) == 0);
    if (CHECK(plan_init(&p, d))) {
        CHECK_OK(plaid_deserializer_load(d, place, &p));
        CHECK(p.calls == m->count);
        CHECK(p.contract_errors == 0);
        CHECK(plan_mismatches(&p, m) == 0);
        plan_free(&p);
    }
    plaid_deserializer_free(d);
}

/* ------------------------------------------------------------------------------------ */
/* Fixtures                                                                             */
/* ------------------------------------------------------------------------------------ */

/* One tensor of every dtype, 33 x 257 elements: several 4 KiB blocks and 8 KiB chunks. */
static int make_all_dtypes(model *m)
{
    static const uint64_t shape[2] = {33, 257};
    uint32_t dtype;
    memset(m, 0, sizeof *m);
    for (dtype = PLAID_DTYPE_BOOL; dtype <= PLAID_DTYPE_F4_E2M1FN_X2; dtype++) {
        char name[64];
        snprintf(name, sizeof name, "dtype.%s", plaid_dtype_name(dtype));
        if (!model_add(m, name, dtype, 2, shape)) {
            return 0;
        }
    }
    return 1;
}

/* Writes the all-dtypes model with small blocks to `path`; 1 on success. */
static int write_all_dtypes(const model *m, const char *path)
{
    plaid_write_options *wo = NULL;
    int ok;
    if (!CHECK_OK(plaid_write_options_new(&wo))) {
        return 0;
    }
    CHECK_OK(plaid_write_options_set_checksum_block_size(wo, 4096));
    CHECK_OK(plaid_write_options_set_sync(wo, 0));
    ok = model_write(m, path, wo, NULL);
    plaid_write_options_free(wo);
    return ok;
}

/* ------------------------------------------------------------------------------------ */
/* Areas                                                                                */
/* ------------------------------------------------------------------------------------ */

static void test_version(void)
{
    CHECK(plaid_abi_version() == PLAID_ABI_VERSION);
    CHECK(plaid_version() != NULL && strcmp(plaid_version(), PLAID_VERSION) == 0);
}

static void test_status_names(void)
{
    static const struct {
        plaid_status status;
        const char *name;
    } names[] = {
        {PLAID_OK, "PLAID_OK"},
        {PLAID_ERR_INVALID_ARGUMENT, "PLAID_ERR_INVALID_ARGUMENT"},
        {PLAID_ERR_IO, "PLAID_ERR_IO"},
        {PLAID_ERR_FORMAT, "PLAID_ERR_FORMAT"},
        {PLAID_ERR_UNSUPPORTED, "PLAID_ERR_UNSUPPORTED"},
        {PLAID_ERR_CHECKSUM, "PLAID_ERR_CHECKSUM"},
        {PLAID_ERR_CAPACITY, "PLAID_ERR_CAPACITY"},
        {PLAID_ERR_CANCELLED, "PLAID_ERR_CANCELLED"},
        {PLAID_ERR_NOT_FOUND, "PLAID_ERR_NOT_FOUND"},
        {PLAID_ERR_NO_CUDA, "PLAID_ERR_NO_CUDA"},
        {PLAID_ERR_CUDA, "PLAID_ERR_CUDA"},
        {PLAID_ERR_PANIC, "PLAID_ERR_PANIC"},
        {PLAID_ERR_DECRYPT, "PLAID_ERR_DECRYPT"},
        {13, "PLAID_ERR_UNKNOWN"},
        {-1, "PLAID_ERR_UNKNOWN"},
        {INT32_MAX, "PLAID_ERR_UNKNOWN"},
    };
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *got = plaid_status_name(names[i].status);
        if (!CHECK(got != NULL && strcmp(got, names[i].name) == 0)) {
            fprintf(stderr, "    status %d: got %s, expected %s\n", (int)names[i].status,
                    got != NULL ? got : "NULL", names[i].name);
        }
    }
}

static void test_last_error_message(void)
{
    plaid_serializer *s = NULL;
    char full[1024];
    char small[5];
    size_t len;

    CHECK_STATUS(plaid_serializer_new(NULL, NULL, &s), PLAID_ERR_INVALID_ARGUMENT);
    len = plaid_last_error_message(NULL, 0);
    CHECK(len > 4);
    CHECK(len == strlen(g_message));
    CHECK(plaid_last_error_message(full, sizeof full) == len && strlen(full) == len);
    memset(small, 'x', sizeof small);
    CHECK(plaid_last_error_message(small, sizeof small) == len);
    CHECK(small[4] == '\0' && strncmp(small, full, 4) == 0);
    /* len 0 with a real buffer writes nothing. */
    small[0] = 'x';
    CHECK(plaid_last_error_message(small, 0) == len && small[0] == 'x');
    /* A fallible call that succeeds clears the message. */
    {
        plaid_read_options *ro = NULL;
        CHECK_OK(plaid_read_options_new(&ro));
        CHECK(plaid_last_error_message(NULL, 0) == 0);
        CHECK(plaid_last_error_message(small, sizeof small) == 0 && small[0] == '\0');
        plaid_read_options_free(ro);
    }
}

static void test_dtypes_round_trip(void)
{
    static const uint64_t sizes[] = {1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 4, 8, 16, 1, 1, 1, 1, 1, 1};
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "dtypes.plaid");
    plaid_read_options *ro = NULL;
    model m;
    uint32_t dtype;

    for (dtype = PLAID_DTYPE_BOOL; dtype <= PLAID_DTYPE_F4_E2M1FN_X2; dtype++) {
        if (!CHECK(plaid_dtype_size(dtype) == sizes[dtype - PLAID_DTYPE_BOOL] &&
                   plaid_dtype_name(dtype) != NULL)) {
            fprintf(stderr, "    dtype %u\n", (unsigned)dtype);
        }
    }
    CHECK(plaid_dtype_size(0) == 0 && plaid_dtype_name(0) == NULL);
    CHECK(plaid_dtype_size(PLAID_DTYPE_F4_E2M1FN_X2 + 1) == 0);
    CHECK(plaid_dtype_name(PLAID_DTYPE_F4_E2M1FN_X2 + 1) == NULL);
    CHECK(plaid_dtype_name(PLAID_DTYPE_BF16) != NULL &&
          strcmp(plaid_dtype_name(PLAID_DTYPE_BF16), "bf16") == 0);

    if (!CHECK(make_all_dtypes(&m)) || !write_all_dtypes(&m, path)) {
        model_free(&m);
        return;
    }
    /* Defaults. */
    check_round_trip(path, &m, NULL);
    /* Three workers, 8 KiB chunks, verification explicitly on; the options are freed
     * right after open, which the header allows. */
    if (CHECK_OK(plaid_read_options_new(&ro))) {
        plaid_deserializer *d = NULL;
        CHECK_OK(plaid_read_options_set_threads(ro, 3));
        CHECK_OK(plaid_read_options_set_chunk_size(ro, 8192));
        CHECK_OK(plaid_read_options_set_verify(ro, 1));
        CHECK_OK(plaid_deserializer_open(path, ro, &d));
        plaid_read_options_free(ro);
        if (d != NULL) {
            plan p;
            if (CHECK(plan_init(&p, d))) {
                CHECK_OK(plaid_deserializer_load(d, place, &p));
                CHECK(p.contract_errors == 0);
                CHECK(plan_mismatches(&p, &m) == 0);
                plan_free(&p);
            }
            CHECK_OK(plaid_deserializer_verify(d));
            plaid_deserializer_free(d);
        }
    }
    model_free(&m);
    unlink(path);
}

static void test_options(void)
{
    plaid_write_options *wo = NULL;
    plaid_read_options *ro = NULL;

    CHECK_STATUS(plaid_write_options_new(NULL), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_new(NULL), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_alignment(NULL, 4096), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_checksum_block_size(NULL, 4096),
                 PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_threads(NULL, 1), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_sync(NULL, 0), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_verify(NULL, 0), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_threads(NULL, 1), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_chunk_size(NULL, 8192), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_mmap(NULL, 1), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_huge_pages(NULL, 1), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_verify_views_up_front(NULL, 1),
                 PLAID_ERR_INVALID_ARGUMENT);

    if (CHECK_OK(plaid_write_options_new(&wo))) {
        CHECK_STATUS(plaid_write_options_set_alignment(wo, 1000), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_write_options_set_alignment(wo, 2048), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_write_options_set_alignment(wo, 8192));
        CHECK_STATUS(plaid_write_options_set_checksum_block_size(wo, 0),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_write_options_set_checksum_block_size(wo, 5000),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_write_options_set_checksum_block_size(wo, 4096));
        CHECK_STATUS(plaid_write_options_set_threads(wo, 1025), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_write_options_set_threads(wo, 2));
        CHECK_OK(plaid_write_options_set_sync(wo, 0));
        plaid_write_options_free(wo);
    }
    if (CHECK_OK(plaid_read_options_new(&ro))) {
        CHECK_STATUS(plaid_read_options_set_chunk_size(ro, 0), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_read_options_set_chunk_size(ro, 4095), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_read_options_set_chunk_size(ro, (1ull << 30) + 1),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_read_options_set_chunk_size(ro, 8192));
        CHECK_STATUS(plaid_read_options_set_threads(ro, 1025), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_read_options_set_threads(ro, 3));
        CHECK_OK(plaid_read_options_set_verify(ro, 0));
        plaid_read_options_free(ro);
    }
}

static void test_odd_shapes(void)
{
    static const uint64_t empty_shape[2] = {0, 7};
    static const uint64_t rank8[8] = {2, 1, 3, 1, 2, 1, 2, 3};
    static const uint64_t small[1] = {5};
    static const char *const metadata[] = {
        "framework", "plaid-c-test", "k", "first", "k", "second", "名前", "値 ✓", NULL,
    };
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "odd.plaid");
    plaid_deserializer *d = NULL;
    const char *key = NULL, *value = NULL;
    model m;
    int ok;

    memset(&m, 0, sizeof m);
    ok = model_add(&m, "scalar", PLAID_DTYPE_F32, 0, NULL) &&
         model_add(&m, "empty", PLAID_DTYPE_F32, 2, empty_shape) &&
         model_add(&m, "rank8", PLAID_DTYPE_BF16, 8, rank8) &&
         model_add(&m, "模型.层.权重", PLAID_DTYPE_F16, 1, small) &&
         model_add(&m, "ünïcödé.weight", PLAID_DTYPE_I8, 1, small) &&
         model_add(&m, "🦙.embed_tokens", PLAID_DTYPE_U64, 1, small);
    if (!CHECK(ok) || !model_write(&m, path, NULL, metadata)) {
        model_free(&m);
        return;
    }
    check_round_trip(path, &m, NULL);

    if (CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        const plaid_tensor_info *scalar = plaid_deserializer_tensor(d, 0);
        const plaid_tensor_info *empty = plaid_deserializer_tensor(d, 1);
        size_t index = 99;
        CHECK(scalar != NULL && scalar->ndim == 0 && scalar->shape == NULL &&
              scalar->nbytes == 4);
        CHECK(empty != NULL && empty->ndim == 2 && empty->shape != NULL &&
              empty->shape[0] == 0 && empty->shape[1] == 7 && empty->nbytes == 0);
        CHECK_OK(plaid_deserializer_find(d, "🦙.embed_tokens", &index));
        CHECK(index == 5);

        /* Sorted by key (bytes); "k" was replaced. */
        CHECK(plaid_deserializer_metadata_count(d) == 3);
        CHECK_OK(plaid_deserializer_metadata_entry(d, 0, &key, &value));
        CHECK(key != NULL && value != NULL && strcmp(key, "framework") == 0 &&
              strcmp(value, "plaid-c-test") == 0);
        CHECK_OK(plaid_deserializer_metadata_entry(d, 1, &key, &value));
        CHECK(strcmp(key, "k") == 0 && strcmp(value, "second") == 0);
        CHECK_OK(plaid_deserializer_metadata_entry(d, 2, &key, &value));
        CHECK(strcmp(key, "名前") == 0 && strcmp(value, "値 ✓") == 0);
        key = value = NULL;
        CHECK_STATUS(plaid_deserializer_metadata_entry(d, 3, &key, &value), PLAID_ERR_NOT_FOUND);
        CHECK(key == NULL && value == NULL);
        CHECK_OK(plaid_deserializer_metadata_get(d, "名前", &value));
        CHECK(value != NULL && strcmp(value, "値 ✓") == 0);
        value = NULL;
        CHECK_STATUS(plaid_deserializer_metadata_get(d, "missing", &value), PLAID_ERR_NOT_FOUND);
        CHECK(value == NULL);
        CHECK_STATUS(plaid_deserializer_metadata_get(d, NULL, &value),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_metadata_get(d, "k", NULL), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_metadata_entry(d, 0, NULL, &value),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_metadata_entry(d, 0, &key, NULL),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK(plaid_deserializer_metadata_count(NULL) == 0);
        CHECK_STATUS(plaid_deserializer_metadata_get(NULL, "k", &value),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_metadata_entry(NULL, 0, &key, &value),
                     PLAID_ERR_INVALID_ARGUMENT);
        plaid_deserializer_free(d);
    }
    model_free(&m);
    unlink(path);
}

static void test_big_tensor(void)
{
    const uint64_t shape[1] = {g_quick ? 1000u * 1000u : 100u * 1000u * 1000u};
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "big.plaid");
    plaid_write_options *wo = NULL;
    model m;

    memset(&m, 0, sizeof m);
    if (!CHECK(model_add(&m, "big.u8", PLAID_DTYPE_U8, 1, shape))) {
        model_free(&m);
        return;
    }
    if (CHECK_OK(plaid_write_options_new(&wo))) {
        CHECK_OK(plaid_write_options_set_sync(wo, 0));
        if (model_write(&m, path, wo, NULL)) {
            check_round_trip(path, &m, NULL);
        }
        plaid_write_options_free(wo);
    }
    model_free(&m);
    unlink(path);
}

static int32_t only_small(void *user_data, const plaid_tensor_info *info)
{
    (void)user_data;
    return info->nbytes < 1000;
}

/* Cancels the load at the second tensor (a negative answer). */
static int32_t cancel_second(void *user_data, const plaid_tensor_info *info)
{
    (void)user_data;
    return info->index == 1 ? -1 : 1;
}

/* Copies out of the mapping and with pread; zero-copy views, verified on first view or up
 * front; a damaged tensor's view is refused. */
static void test_mapped(void)
{
    const uint64_t big_shape[1] = {g_quick ? 300000u : 3000000u};
    const uint64_t small_shape[2] = {3, 5};
    const uint64_t zero_shape[1] = {0};
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "mapped.plaid");
    plaid_read_options *ro = NULL;
    plaid_deserializer *d = NULL;
    const void *data = NULL;
    uint64_t nbytes = 0;
    unsigned char *bytes;
    size_t len = 0, i, at;
    int on;
    model m;

    memset(&m, 0, sizeof m);
    if (!CHECK(model_add(&m, "big", PLAID_DTYPE_U8, 1, big_shape) &&
               model_add(&m, "small", PLAID_DTYPE_F32, 2, small_shape) &&
               model_add(&m, "scalar", PLAID_DTYPE_I64, 0, NULL) &&
               model_add(&m, "empty", PLAID_DTYPE_F32, 1, zero_shape)) ||
        !model_write(&m, path, NULL, NULL)) {
        model_free(&m);
        return;
    }
    for (on = 0; on <= 1; on++) {
        if (CHECK_OK(plaid_read_options_new(&ro))) {
            CHECK_OK(plaid_read_options_set_mmap(ro, on));
            CHECK_OK(plaid_read_options_set_chunk_size(ro, 64 * 1024));
            CHECK_OK(plaid_read_options_set_threads(ro, 2));
            check_round_trip(path, &m, ro);
            plaid_read_options_free(ro);
        }
    }

    if (CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        CHECK(plaid_deserializer_format(d) == PLAID_FORMAT_PLAID);
        CHECK(plaid_deserializer_format(NULL) == 0);
        CHECK_OK(plaid_deserializer_map(d));
        CHECK_OK(plaid_deserializer_map(d));
        for (i = 0; i < m.count; i++) {
            data = NULL;
            nbytes = 99;
            if (CHECK_OK(plaid_deserializer_tensor_data(d, i, &data, &nbytes))) {
                CHECK(nbytes == m.tensors[i].nbytes);
                CHECK(data != NULL && (uintptr_t)data % 4096 == 0);
                CHECK(nbytes == 0 || memcmp(data, m.tensors[i].data, (size_t)nbytes) == 0);
            }
        }
        CHECK_STATUS(plaid_deserializer_tensor_data(d, m.count, &data, &nbytes),
                     PLAID_ERR_NOT_FOUND);
        CHECK_STATUS(plaid_deserializer_tensor_data(d, 0, NULL, &nbytes),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_tensor_data(d, 0, &data, NULL),
                     PLAID_ERR_INVALID_ARGUMENT);
        plaid_deserializer_free(d);
    }
    CHECK_STATUS(plaid_deserializer_map(NULL), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_deserializer_tensor_data(NULL, 0, &data, &nbytes),
                 PLAID_ERR_INVALID_ARGUMENT);

    /* Library-allocated host memory: everything, then only the small tensors. */
    if (CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        plaid_host_arena *arena = NULL;
        void *p = NULL;
        if (CHECK_OK(plaid_deserializer_load_host(d, NULL, NULL, &arena))) {
            for (i = 0; i < m.count; i++) {
                if (CHECK_OK(plaid_host_arena_tensor(arena, i, &p, &nbytes))) {
                    CHECK(nbytes == m.tensors[i].nbytes && (uintptr_t)p % 64 == 0);
                    CHECK(nbytes == 0 || memcmp(p, m.tensors[i].data, (size_t)nbytes) == 0);
                }
            }
            CHECK_STATUS(plaid_host_arena_tensor(arena, m.count, &p, &nbytes),
                         PLAID_ERR_NOT_FOUND);
            CHECK_STATUS(plaid_host_arena_tensor(arena, 0, NULL, &nbytes),
                         PLAID_ERR_INVALID_ARGUMENT);
            plaid_host_arena_free(arena);
        }
        arena = NULL;
        if (CHECK_OK(plaid_deserializer_load_host(d, only_small, NULL, &arena))) {
            CHECK_STATUS(plaid_host_arena_tensor(arena, 0, &p, &nbytes), PLAID_ERR_NOT_FOUND);
            if (CHECK_OK(plaid_host_arena_tensor(arena, 1, &p, &nbytes))) {
                CHECK(nbytes == m.tensors[1].nbytes &&
                      memcmp(p, m.tensors[1].data, (size_t)nbytes) == 0);
            }
            plaid_host_arena_free(arena);
        }
        arena = NULL;
        CHECK_STATUS(plaid_deserializer_load_host(d, cancel_second, NULL, &arena),
                     PLAID_ERR_CANCELLED);
        CHECK_MESSAGE("cancelled");
        CHECK(arena == NULL);
        plaid_deserializer_free(d);
        d = NULL;
        if (CHECK_OK(plaid_read_options_new(&ro))) {
            CHECK_OK(plaid_read_options_set_huge_pages(ro, 0));
            CHECK_OK(plaid_deserializer_open(path, ro, &d));
            plaid_read_options_free(ro);
        }
        if (d != NULL && CHECK_OK(plaid_deserializer_load_host(d, NULL, NULL, &arena))) {
            if (CHECK_OK(plaid_host_arena_tensor(arena, 0, &p, &nbytes))) {
                CHECK(nbytes == m.tensors[0].nbytes &&
                      memcmp(p, m.tensors[0].data, (size_t)nbytes) == 0);
            }
            plaid_host_arena_free(arena);
        }
        CHECK_STATUS(plaid_deserializer_load_host(d, NULL, NULL, NULL),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_load_host(NULL, NULL, NULL, &arena),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_host_arena_tensor(NULL, 0, &p, &nbytes), PLAID_ERR_INVALID_ARGUMENT);
        plaid_host_arena_free(NULL);
        plaid_deserializer_free(d);
    }

    /* Damage one byte of "big" (the first tensor's data starts at the first aligned
     * offset after the header; find it by its contents). */
    bytes = read_whole_file(path, &len);
    if (CHECK(bytes != NULL)) {
        at = find_bytes(bytes, len, m.tensors[0].data, 64);
        if (CHECK(at < len)) {
            bytes[at + 1000] ^= 0x01;
            CHECK(write_whole_file(path, bytes, len));
        }
        free(bytes);
    }
    if (CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        CHECK_OK(plaid_deserializer_map(d));
        CHECK_OK(plaid_deserializer_tensor_data(d, 1, &data, &nbytes));
        data = NULL;
        CHECK_STATUS(plaid_deserializer_tensor_data(d, 0, &data, &nbytes),
                     PLAID_ERR_CHECKSUM);
        CHECK_MESSAGE("big");
        CHECK(data == NULL);
        plaid_deserializer_free(d);
    }
    if (CHECK_OK(plaid_read_options_new(&ro))) {
        CHECK_OK(plaid_read_options_set_verify_views_up_front(ro, 1));
        if (CHECK_OK(plaid_deserializer_open(path, ro, &d))) {
            CHECK_STATUS(plaid_deserializer_map(d), PLAID_ERR_CHECKSUM);
            CHECK_MESSAGE("big");
            plaid_deserializer_free(d);
        }
        plaid_read_options_free(ro);
    }
    model_free(&m);
    unlink(path);
}

static void test_many_tensors(void)
{
    static const uint64_t shape[2] = {2, 3};
    const size_t count = g_quick ? 500 : 10000;
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "many.plaid");
    plaid_write_options *wo = NULL;
    model m;
    size_t i;
    int ok = 1;

    memset(&m, 0, sizeof m);
    for (i = 0; i < count && ok; i++) {
        char name[32];
        snprintf(name, sizeof name, "layer.%zu.w", i);
        ok = model_add(&m, name, PLAID_DTYPE_I32, 2, shape);
    }
    if (CHECK(ok) && CHECK_OK(plaid_write_options_new(&wo))) {
        CHECK_OK(plaid_write_options_set_sync(wo, 0));
        if (model_write(&m, path, wo, NULL)) {
            plaid_deserializer *d = NULL;
            size_t index = 0;
            check_round_trip(path, &m, NULL);
            if (CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
                char last[32];
                snprintf(last, sizeof last, "layer.%zu.w", count - 1);
                CHECK_OK(plaid_deserializer_find(d, last, &index));
                CHECK(index == count - 1);
                plaid_deserializer_free(d);
            }
        }
        plaid_write_options_free(wo);
    }
    model_free(&m);
    unlink(path);
}

/* Skip, capacity, cancel, bad destinations and loading twice, on the all-dtypes file. */
static void test_placement(void)
{
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "placement.plaid");
    plaid_deserializer *d = NULL;
    model m;
    plan p, q;
    size_t i, skipped_intact = 0, loaded_intact = 0;

    if (!CHECK(make_all_dtypes(&m)) || !write_all_dtypes(&m, path) ||
        !CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        model_free(&m);
        unlink(path);
        return;
    }
    if (!CHECK(plan_init(&p, d))) {
        plaid_deserializer_free(d);
        model_free(&m);
        return;
    }

    /* Skip: odd tensors keep the zeroed destination. */
    for (i = 0; i < p.count; i++) {
        p.kind[i] = i % 2 ? PLAID_DEST_SKIP : PLAID_DEST_HOST;
    }
    CHECK_OK(plaid_deserializer_load(d, place, &p));
    CHECK(p.calls == p.count && p.contract_errors == 0);
    for (i = 0; i < p.count; i++) {
        if (i % 2) {
            skipped_intact += is_poisoned(p.buffers[i], (size_t)p.nbytes[i] + GUARD);
        } else {
            loaded_intact += plan_holds(&p, &m, i);
        }
    }
    CHECK(skipped_intact == p.count / 2);
    CHECK(loaded_intact == p.count - p.count / 2);
    for (i = 0; i < p.count; i++) {
        p.kind[i] = PLAID_DEST_HOST;
    }

    /* Capacity one byte short: nothing is written anywhere. */
    plan_repoison(&p);
    p.capacity[3] = p.nbytes[3] - 1;
    CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_CAPACITY);
    CHECK_MESSAGE(m.tensors[3].name);
    CHECK(plan_touched(&p) == 0);
    p.capacity[3] = p.nbytes[3];

    /* Cancel on the second tensor: the callback is not called again, nothing is read. */
    plan_repoison(&p);
    p.cancel_on_call = 2;
    CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_CANCELLED);
    CHECK(p.calls == 2);
    CHECK(plan_touched(&p) == 0);
    p.cancel_on_call = 0;

    /* CUDA in a build without it, an unknown kind, a NULL host address. */
    plan_repoison(&p);
    p.kind[1] = PLAID_DEST_CUDA;
    p.address[1] = 0x1000;
    CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_NO_CUDA);
    CHECK(plan_touched(&p) == 0);
    p.kind[1] = 77;
    CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_MESSAGE("77");
    CHECK(plan_touched(&p) == 0);
    p.kind[1] = PLAID_DEST_HOST;
    p.address[1] = 0;
    CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_INVALID_ARGUMENT);
    CHECK(plan_touched(&p) == 0);
    p.address[1] = (uint64_t)(uintptr_t)p.buffers[1];

    /* Two tensors into one buffer is refused before anything is written. */
    p.address[2] = p.address[1];
    p.capacity[2] = p.capacity[1];
    CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_INVALID_ARGUMENT);
    CHECK(plan_touched(&p) == 0);
    p.address[2] = (uint64_t)(uintptr_t)p.buffers[2];
    p.capacity[2] = p.nbytes[2];

    /* Loading twice on one handle into different buffers. */
    plan_repoison(&p);
    CHECK_OK(plaid_deserializer_load(d, place, &p));
    if (CHECK(plan_init(&q, d))) {
        CHECK_OK(plaid_deserializer_load(d, place, &q));
        CHECK(q.contract_errors == 0);
        CHECK(plan_mismatches(&q, &m) == 0);
        plan_free(&q);
    }
    CHECK(plan_mismatches(&p, &m) == 0);

    CHECK_STATUS(plaid_deserializer_load(d, NULL, &p), PLAID_ERR_INVALID_ARGUMENT);
    plan_free(&p);
    plaid_deserializer_free(d);
    model_free(&m);
    unlink(path);
}

static void test_nulls(void)
{
    static const uint64_t shape[1] = {4};
    static const unsigned char data[4] = {1, 2, 3, 4};
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, "nulls.plaid");
    path_buf missing_storage;
    plaid_serializer *s = NULL;
    plaid_deserializer *d = NULL;
    /* A sentinel that failed calls must leave alone. */
    static char sentinel;
    plaid_serializer *s_out = (plaid_serializer *)(void *)&sentinel;
    plaid_deserializer *d_out = (plaid_deserializer *)(void *)&sentinel;
    size_t index = 12345;

    CHECK_STATUS(plaid_serializer_new(NULL, NULL, &s_out), PLAID_ERR_INVALID_ARGUMENT);
    CHECK(s_out == (plaid_serializer *)(void *)&sentinel);
    CHECK_STATUS(plaid_serializer_new(path, NULL, NULL), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_serializer_new("bad\xff.plaid", NULL, &s_out), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_serializer_new(scratch_path(&missing_storage, "no-such-dir/x.plaid"), NULL, &s_out),
                 PLAID_ERR_IO);
    CHECK(s_out == (plaid_serializer *)(void *)&sentinel);

    CHECK_STATUS(plaid_serializer_add_tensor(NULL, "t", PLAID_DTYPE_U8, shape, 1, data, 4),
                 PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_serializer_set_metadata(NULL, "k", "v"), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_serializer_finish(NULL), PLAID_ERR_INVALID_ARGUMENT);

    if (CHECK_OK(plaid_serializer_new(path, NULL, &s))) {
        CHECK_STATUS(plaid_serializer_add_tensor(s, NULL, PLAID_DTYPE_U8, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", PLAID_DTYPE_U8, shape, 1, NULL, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", PLAID_DTYPE_U8, NULL, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", 0, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", 999, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", PLAID_DTYPE_U8, shape, 1, data, 3),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", PLAID_DTYPE_U16, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "", PLAID_DTYPE_U8, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "bad\xff", PLAID_DTYPE_U8, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_serializer_add_tensor(s, "t", PLAID_DTYPE_U8, shape, 1, data, 4));
        CHECK_STATUS(plaid_serializer_add_tensor(s, "t", PLAID_DTYPE_U8, shape, 1, data, 4),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_set_metadata(s, NULL, "v"), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_set_metadata(s, "k", NULL), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_set_metadata(s, "", "v"), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_serializer_finish(s));
        plaid_serializer_free(s);
    }

    CHECK_STATUS(plaid_deserializer_open(NULL, NULL, &d_out), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_deserializer_open(path, NULL, NULL), PLAID_ERR_INVALID_ARGUMENT);
    CHECK(d_out == (plaid_deserializer *)(void *)&sentinel);
    CHECK(plaid_deserializer_tensor_count(NULL) == 0);
    CHECK(plaid_deserializer_tensor(NULL, 0) == NULL);
    CHECK_STATUS(plaid_deserializer_find(NULL, "t", &index), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_deserializer_load(NULL, place, NULL), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_deserializer_verify(NULL), PLAID_ERR_INVALID_ARGUMENT);
    if (CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        CHECK(plaid_deserializer_tensor_count(d) == 1);
        CHECK(plaid_deserializer_tensor(d, 1) == NULL);
        CHECK(plaid_deserializer_tensor(d, (size_t)-1) == NULL);
        CHECK_STATUS(plaid_deserializer_find(d, NULL, &index), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_find(d, "t", NULL), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_deserializer_find(d, "nope", &index), PLAID_ERR_NOT_FOUND);
        CHECK(index == 12345);
        CHECK_MESSAGE("nope");
        CHECK_STATUS(plaid_deserializer_load(d, NULL, NULL), PLAID_ERR_INVALID_ARGUMENT);
        CHECK(plaid_deserializer_metadata_count(d) == 0);
        plaid_deserializer_free(d);
    }

    /* Each free accepts NULL. */
    plaid_serializer_free(NULL);
    plaid_deserializer_free(NULL);
    plaid_write_options_free(NULL);
    plaid_read_options_free(NULL);
    CHECK(1);
    unlink(path);
}

static void test_atomicity(void)
{
    static const uint64_t shape[1] = {8};
    static const unsigned char old_data[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    static const unsigned char new_data[8] = {2, 2, 2, 2, 2, 2, 2, 2};
    path_buf unfinished_storage;
    const char *unfinished = scratch_path(&unfinished_storage, "unfinished.plaid");
    path_buf replaced_storage;
    const char *replaced = scratch_path(&replaced_storage, "replaced.plaid");
    plaid_serializer *s = NULL;
    plaid_deserializer *d = NULL;
    size_t index = 0;

    /* Freed without finish: nothing at the target, no temporary left behind. */
    if (CHECK_OK(plaid_serializer_new(unfinished, NULL, &s))) {
        CHECK_OK(plaid_serializer_add_tensor(s, "a", PLAID_DTYPE_U8, shape, 1, old_data, 8));
        CHECK(!file_exists(unfinished));
        plaid_serializer_free(s);
        s = NULL;
    }
    CHECK(!file_exists(unfinished));
    CHECK(count_entries_containing("unfinished.plaid", NULL) == 0);

    /* Finishing twice; adding after finish. */
    if (CHECK_OK(plaid_serializer_new(replaced, NULL, &s))) {
        CHECK_OK(plaid_serializer_add_tensor(s, "old", PLAID_DTYPE_U8, shape, 1, old_data, 8));
        CHECK_OK(plaid_serializer_finish(s));
        CHECK_STATUS(plaid_serializer_finish(s), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_add_tensor(s, "late", PLAID_DTYPE_U8, shape, 1, new_data, 8),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_serializer_set_metadata(s, "k", "v"), PLAID_ERR_INVALID_ARGUMENT);
        plaid_serializer_free(s);
        s = NULL;
    }
    CHECK(file_exists(replaced));

    /* An unfinished writer over an existing file leaves it alone. */
    if (CHECK_OK(plaid_serializer_new(replaced, NULL, &s))) {
        CHECK_OK(plaid_serializer_add_tensor(s, "new", PLAID_DTYPE_U8, shape, 1, new_data, 8));
        plaid_serializer_free(s);
        s = NULL;
    }
    /* A second writer replaces it, but only on finish. */
    if (CHECK_OK(plaid_serializer_new(replaced, NULL, &s))) {
        CHECK_OK(plaid_serializer_add_tensor(s, "new", PLAID_DTYPE_U8, shape, 1, new_data, 8));
        if (CHECK_OK(plaid_deserializer_open(replaced, NULL, &d))) {
            CHECK_OK(plaid_deserializer_find(d, "old", &index));
            CHECK_STATUS(plaid_deserializer_find(d, "new", &index), PLAID_ERR_NOT_FOUND);
            plaid_deserializer_free(d);
            d = NULL;
        }
        CHECK_OK(plaid_serializer_finish(s));
        plaid_serializer_free(s);
    }
    if (CHECK_OK(plaid_deserializer_open(replaced, NULL, &d))) {
        CHECK_OK(plaid_deserializer_find(d, "new", &index));
        CHECK_STATUS(plaid_deserializer_find(d, "old", &index), PLAID_ERR_NOT_FOUND);
        plaid_deserializer_free(d);
    }
    CHECK(count_entries_containing("replaced.plaid", "replaced.plaid") == 0);
    unlink(replaced);
}

/* Writes `len` bytes of `bytes` to `name` in the scratch dir and expects open to fail. */
static void expect_open_fails(const char *name, const unsigned char *bytes, size_t len,
                              plaid_status want, const char *needle)
{
    path_buf path_storage;
    const char *path = scratch_path(&path_storage, name);
    plaid_deserializer *d = NULL;
    if (!CHECK(write_whole_file(path, bytes, len))) {
        return;
    }
    if (!CHECK_STATUS(plaid_deserializer_open(path, NULL, &d), want)) {
        fprintf(stderr, "    (damaged file: %s)\n", name);
    }
    if (needle != NULL) {
        CHECK_MESSAGE(needle);
    }
    CHECK(d == NULL);
    plaid_deserializer_free(d);
    unlink(path);
}

static void test_damaged_files(void)
{
    static const uint64_t shape[1] = {16384};
    path_buf good_storage;
    const char *good = scratch_path(&good_storage, "good.plaid");
    path_buf flipped_storage;
    const char *flipped = scratch_path(&flipped_storage, "flipped.plaid");
    path_buf missing_storage;
    plaid_write_options *wo = NULL;
    plaid_read_options *ro = NULL;
    plaid_deserializer *d = NULL;
    unsigned char *bytes = NULL, *copy = NULL, garbage[4096];
    size_t len = 0, first_at, second_at, header_len = 0, k;
    model m;
    plan p;

    memset(&m, 0, sizeof m);
    if (!CHECK(model_add(&m, "first", PLAID_DTYPE_U8, 1, shape) &&
               model_add(&m, "second.weight", PLAID_DTYPE_F32, 1, shape)) ||
        !CHECK_OK(plaid_write_options_new(&wo))) {
        model_free(&m);
        return;
    }
    CHECK_OK(plaid_write_options_set_checksum_block_size(wo, 4096));
    CHECK_OK(plaid_write_options_set_sync(wo, 0));
    if (!model_write(&m, good, wo, NULL) || !CHECK((bytes = read_whole_file(good, &len)) != NULL) ||
        !CHECK((copy = malloc(len)) != NULL)) {
        goto done;
    }
    first_at = find_bytes(bytes, len, m.tensors[0].data, 64);
    second_at = find_bytes(bytes, len, m.tensors[1].data, 64);
    for (k = 0; k < 8; k++) {
        /* Header length: little-endian u64 at bytes 16..24 of the preamble. */
        header_len |= (size_t)bytes[16 + k] << (8 * k);
    }
    if (!CHECK(first_at != (size_t)-1 && second_at != (size_t)-1 && header_len > 16 &&
               32 + header_len <= first_at)) {
        goto done;
    }

    /* Truncated: in the data, in the header, to 10 bytes; trailing bytes. */
    expect_open_fails("cut-data.plaid", bytes, first_at + 5000, PLAID_ERR_FORMAT, "offset");
    expect_open_fails("cut-last.plaid", bytes, len - 1, PLAID_ERR_FORMAT, "offset");
    expect_open_fails("cut-header.plaid", bytes, 32 + header_len / 2, PLAID_ERR_FORMAT, "offset");
    expect_open_fails("cut-10.plaid", bytes, 10, PLAID_ERR_FORMAT, "offset");
    expect_open_fails("cut-0.plaid", bytes, 0, PLAID_ERR_FORMAT, "offset");
    {
        unsigned char *longer = malloc(len + 3);
        if (CHECK(longer != NULL)) {
            memcpy(longer, bytes, len);
            memset(longer + len, 0, 3);
            expect_open_fails("longer.plaid", longer, len + 3, PLAID_ERR_FORMAT, "offset");
            free(longer);
        }
    }

    /* One flipped bit in the header, and in the preamble's magic. */
    memcpy(copy, bytes, len);
    copy[32 + header_len / 2] ^= 0x10;
    expect_open_fails("header-bit.plaid", copy, len, PLAID_ERR_FORMAT, "offset");
    memcpy(copy, bytes, len);
    copy[3] ^= 0x01;
    expect_open_fails("magic-bit.plaid", copy, len, PLAID_ERR_FORMAT, NULL);

    /* Garbage: random bytes, a text file. */
    fill_random(garbage, sizeof garbage);
    expect_open_fails("random.plaid", garbage, sizeof garbage, PLAID_ERR_FORMAT, NULL);
    {
        static const char text[] = "This is not a model file.\nJust some text, long enough "
                                   "to pass the preamble length check.\n";
        expect_open_fails("text.plaid", (const unsigned char *)text, sizeof text - 1,
                          PLAID_ERR_FORMAT, NULL);
    }

    /* Missing. */
    CHECK_STATUS(plaid_deserializer_open(scratch_path(&missing_storage, "missing.plaid"), NULL, &d), PLAID_ERR_IO);
    CHECK(d == NULL);

    /* One flipped bit in the second tensor's data, 5000 bytes in (its second block). */
    memcpy(copy, bytes, len);
    copy[second_at + 5000] ^= 0x04;
    if (CHECK(write_whole_file(flipped, copy, len)) &&
        CHECK_OK(plaid_deserializer_open(flipped, NULL, &d))) {
        CHECK_STATUS(plaid_deserializer_verify(d), PLAID_ERR_CHECKSUM);
        CHECK_MESSAGE("second.weight");
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_CHECKSUM);
            CHECK_MESSAGE("second.weight");
            CHECK_MESSAGE("offset");
            /* Only the undamaged tensor is loaded: no error. */
            plan_repoison(&p);
            p.kind[1] = PLAID_DEST_SKIP;
            CHECK_OK(plaid_deserializer_load(d, place, &p));
            CHECK(plan_holds(&p, &m, 0));
            plan_free(&p);
        }
        plaid_deserializer_free(d);
        d = NULL;
    }
    /* With verification off the damaged bytes load as they are. */
    if (CHECK_OK(plaid_read_options_new(&ro))) {
        CHECK_OK(plaid_read_options_set_verify(ro, 0));
        if (CHECK_OK(plaid_deserializer_open(flipped, ro, &d))) {
            if (CHECK(plan_init(&p, d))) {
                CHECK_OK(plaid_deserializer_load(d, place, &p));
                CHECK(plan_holds(&p, &m, 0));
                CHECK(p.buffers[1][5000] == (m.tensors[1].data[5000] ^ 0x04));
                p.buffers[1][5000] ^= 0x04;
                CHECK(plan_holds(&p, &m, 1));
                plan_free(&p);
            }
            /* verify() checks regardless of the option. */
            CHECK_STATUS(plaid_deserializer_verify(d), PLAID_ERR_CHECKSUM);
            plaid_deserializer_free(d);
        }
        plaid_read_options_free(ro);
    }
    unlink(flipped);

done:
    plaid_write_options_free(wo);
    free(bytes);
    free(copy);
    model_free(&m);
    unlink(good);
}

static void test_golden(const char *golden_dir)
{
    char path[4096];
    plaid_deserializer *d = NULL;
    plan p;
    size_t i, empty = 0;

    if (golden_dir == NULL) {
        printf("skipped golden (no directory given)\n");
        return;
    }
    snprintf(path, sizeof path, "%s/all_dtypes.plaid", golden_dir);
    if (!file_exists(path)) {
        printf("skipped golden (%s does not exist)\n", path);
        return;
    }
    if (!CHECK_OK(plaid_deserializer_open(path, NULL, &d))) {
        return;
    }
    CHECK(plaid_deserializer_tensor_count(d) > 0);
    CHECK_OK(plaid_deserializer_verify(d));
    if (CHECK(plan_init(&p, d))) {
        CHECK_OK(plaid_deserializer_load(d, place, &p));
        CHECK(p.calls == p.count && p.contract_errors == 0);
        for (i = 0; i < p.count; i++) {
            /* Every tensor landed and stayed inside its destination. */
            empty += p.nbytes[i] > 0 && is_poisoned(p.buffers[i], (size_t)p.nbytes[i]);
            empty += !is_poisoned(p.buffers[i] + p.nbytes[i], GUARD);
        }
        CHECK(empty == 0);
        plan_free(&p);
    }
    plaid_deserializer_free(d);
}

/* ------------------------------------------------------------------------------------ */

/* tensorizer files written by the real tensorizer package (TENSORIZER_DIR), through the
 * same calls as plaid's own: format, roles, module indices, structured paths, meta
 * tensors loaded as zeros, a damaged tensor named, encrypted files refused. */
static const char *g_tensorizer;

static plaid_deserializer *open_fixture(const char *name, const plaid_read_options *ro)
{
    path_buf path;
    plaid_deserializer *d = NULL;
    snprintf(path.text, sizeof path.text, "%s/%s.tensors", g_tensorizer, name);
    if (!CHECK_OK(plaid_deserializer_open(path.text, ro, &d))) {
        return NULL;
    }
    return d;
}

static const plaid_tensor_info *find_info(const plaid_deserializer *d, const char *name)
{
    size_t index = 0;
    if (!CHECK_OK(plaid_deserializer_find(d, name, &index))) {
        return NULL;
    }
    return plaid_deserializer_tensor(d, index);
}

static void test_tensorizer(void)
{
    static const unsigned char embed_first[4] = {0x3f, 0x12, 0xf0, 0xbf};
    static const char path_json[] = "[\"model\",\"layers\",0,\"w\"]";
    plaid_deserializer *d;
    const plaid_tensor_info *info;
    plan p;
    size_t i;

    if (g_tensorizer == NULL) {
        printf("     (no TENSORIZER_DIR given: tensorizer files not tested)\n");
        return;
    }
    if ((d = open_fixture("write_tensor_calls", NULL)) != NULL) {
        CHECK(plaid_deserializer_format(d) == PLAID_FORMAT_TENSORIZER);
        CHECK(plaid_deserializer_tensor_count(d) == 7);
        info = plaid_deserializer_tensor(d, 0);
        CHECK(info != NULL && strcmp(info->name, "embed.weight") == 0 &&
              info->role == PLAID_ROLE_PARAM && info->module_index == 0 &&
              info->dtype == PLAID_DTYPE_F32 && info->ndim == 2 && info->shape[0] == 4 &&
              info->shape[1] == 3 && info->path == NULL && info->zero_fill == 0);
        info = find_info(d, "layer.5.weight");
        CHECK(info != NULL && info->module_index == 5 && info->role == PLAID_ROLE_PARAM);
        info = find_info(d, "max_module_idx");
        CHECK(info != NULL && info->module_index == 65535 && info->role == PLAID_ROLE_BUFFER);
        if (CHECK(plan_init(&p, d))) {
            CHECK_OK(plaid_deserializer_load(d, place, &p));
            CHECK(p.contract_errors == 0 && memcmp(p.buffers[0], embed_first, 4) == 0);
            for (i = 0; i < p.count; i++) {
                CHECK(is_poisoned(p.buffers[i] + p.nbytes[i], GUARD));
            }
            plan_free(&p);
        }
        plaid_deserializer_free(d);
    }
    if ((d = open_fixture("nested_structure", NULL)) != NULL) {
        info = find_info(d, "model.layers.0.w");
        CHECK(info != NULL && info->path != NULL && strcmp(info->path, path_json) == 0 &&
              info->path_len == strlen(path_json) && info->role == PLAID_ROLE_STATE_DICT);
        info = find_info(d, "lm_head");
        CHECK(info != NULL && info->path == NULL && info->path_len == 0);
        plaid_deserializer_free(d);
    }
    if ((d = open_fixture("meta_tensors_v4", NULL)) != NULL) {
        info = find_info(d, "meta_f32");
        if (CHECK(info != NULL && info->zero_fill == 1 && info->nbytes == 80) &&
            CHECK(plan_init(&p, d))) {
            CHECK_OK(plaid_deserializer_load(d, place, &p));
            for (i = 0; i < 80; i++) {
                if (!CHECK(p.buffers[info->index][i] == 0)) {
                    break;
                }
            }
            plan_free(&p);
        }
        plaid_deserializer_free(d);
    }
    if ((d = open_fixture("damaged_bitflip_in_tensor_data", NULL)) != NULL) {
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_CHECKSUM);
            CHECK_MESSAGE("'f16'");
            plan_free(&p);
        }
        plaid_deserializer_free(d);
    }
    /* Encrypted: opens without a key (the index is in the clear), loads with it. */
    if ((d = open_fixture("encrypted_key_v3", NULL)) != NULL) {
        const plaid_tensor_info *w = find_info(d, "w");
        CHECK(w != NULL && w->encrypted != 0);
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_DECRYPT);
            CHECK_MESSAGE("no key");
            plan_free(&p);
        }
        plaid_deserializer_free(d);
    }
    {
        static const uint8_t key[32] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                        0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
                                        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                                        0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
        plaid_read_options *ro = NULL;
        if (CHECK_OK(plaid_read_options_new(&ro))) {
            CHECK_STATUS(plaid_read_options_set_key(ro, key, 31), PLAID_ERR_INVALID_ARGUMENT);
            CHECK_OK(plaid_read_options_set_key(ro, key, sizeof key));
            if ((d = open_fixture("encrypted_key_v3", ro)) != NULL) {
                if (CHECK(plan_init(&p, d))) {
                    CHECK_OK(plaid_deserializer_load(d, place, &p));
                    plan_free(&p);
                }
                plaid_deserializer_free(d);
            }
            plaid_read_options_free(ro);
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* Encrypted plaid files                                                                */
/* ------------------------------------------------------------------------------------ */

static void test_encryption(void)
{
    static const uint8_t key[32] = {0xc0, 0xff, 0xee, 0x01, 0x02, 0x03, 0x04, 0x05,
                                    0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
                                    0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
                                    0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d};
    static const char pw[] = "pass\0word"; /* a NUL inside: the length counts, not the NUL */
    model m;
    path_buf by_key, by_pw, plain, converted;
    plaid_write_options *wo = NULL;
    plaid_read_options *ro = NULL;
    plaid_deserializer *d = NULL;
    plan p;

    if (!CHECK(make_all_dtypes(&m))) {
        return;
    }
    scratch_path(&by_key, "encrypted_key.plaid");
    scratch_path(&by_pw, "encrypted_pw.plaid");
    scratch_path(&plain, "encrypted_plain.plaid");
    scratch_path(&converted, "encrypted_converted.plaid");
    remove(plain.text); /* what an earlier run left */
    remove(converted.text);
    if (!CHECK_OK(plaid_write_options_new(&wo)) || !CHECK_OK(plaid_read_options_new(&ro))) {
        goto out;
    }
    CHECK_OK(plaid_write_options_set_checksum_block_size(wo, 4096));
    /* The setters' rules: 32 bytes, one of the two, NULL with a length refused, NULL 0 clears. */
    CHECK_STATUS(plaid_write_options_set_key(wo, key, 16), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_MESSAGE("32 bytes");
    CHECK_STATUS(plaid_write_options_set_key(wo, NULL, 32), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_key(NULL, key, 32), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_OK(plaid_write_options_set_key(wo, key, sizeof key));
    CHECK_STATUS(plaid_write_options_set_passphrase(wo, pw, sizeof pw - 1),
                 PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_passphrase_limits(wo, 0, 65536),
                 PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_write_options_set_passphrase_limits(wo, 1, 1000),
                 PLAID_ERR_INVALID_ARGUMENT);
    if (!model_write(&m, by_key.text, wo, NULL)) {
        goto out;
    }
    CHECK_OK(plaid_write_options_set_key(wo, NULL, 0));
    /* The passphrase file with the other cipher: readers are not told, the file says. */
    CHECK_STATUS(plaid_write_options_set_cipher(wo, 7), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_OK(plaid_write_options_set_cipher(wo, PLAID_CIPHER_AES_256_GCM));
    CHECK_OK(plaid_write_options_set_passphrase(wo, pw, sizeof pw - 1));
    CHECK_OK(plaid_write_options_set_passphrase_limits(wo, 1, 65536));
    /* A fixed passphrase salt (tensorizer's from_string(salt=)): 16 bytes or nothing. */
    {
        static const uint8_t salt[16] = "0123456789abcde";
        CHECK_STATUS(plaid_write_options_set_passphrase_salt(wo, salt, 15),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_MESSAGE("16 bytes");
        CHECK_STATUS(plaid_write_options_set_passphrase_salt(NULL, salt, 16),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_write_options_set_passphrase_salt(wo, NULL, 16),
                     PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_write_options_set_passphrase_salt(wo, salt, 16));
    }
    if (!model_write(&m, by_pw.text, wo, NULL)) {
        goto out;
    }
    CHECK_OK(plaid_write_options_set_passphrase_salt(wo, NULL, 0));

    /* Without a key: the index opens (names, shapes, dtypes), loading is PLAID_ERR_DECRYPT. */
    if (CHECK_OK(plaid_deserializer_open(by_key.text, NULL, &d))) {
        CHECK(model_info_mismatches(d, &m) == 0);
        CHECK(plaid_deserializer_tensor(d, 0)->encrypted == 1);
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_DECRYPT);
            CHECK_MESSAGE("no key");
            CHECK_MESSAGE(m.tensors[0].name);
            plan_free(&p);
        }
        plaid_deserializer_free(d);
        d = NULL;
    }
    /* The right key and passphrase: bit-exact. */
    CHECK_OK(plaid_read_options_set_key(ro, key, sizeof key));
    check_round_trip(by_key.text, &m, ro);
    CHECK_OK(plaid_read_options_set_key(ro, NULL, 0));
    CHECK_OK(plaid_read_options_set_passphrase(ro, pw, sizeof pw - 1));
    check_round_trip(by_pw.text, &m, ro);
    /* The passphrase cut at its NUL is another passphrase. */
    CHECK_OK(plaid_read_options_set_passphrase(ro, pw, strlen(pw)));
    if (CHECK_OK(plaid_deserializer_open(by_pw.text, ro, &d))) {
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_DECRYPT);
            CHECK_MESSAGE("wrong passphrase");
            plan_free(&p);
        }
        plaid_deserializer_free(d);
        d = NULL;
    }
    /* Zero-copy views of encrypted tensors are refused. */
    CHECK_OK(plaid_read_options_set_passphrase(ro, NULL, 0));
    CHECK_OK(plaid_read_options_set_key(ro, key, sizeof key));
    if (CHECK_OK(plaid_deserializer_open(by_key.text, ro, &d))) {
        const void *view = NULL;
        uint64_t len = 0;
        CHECK_STATUS(plaid_deserializer_map(d), PLAID_ERR_UNSUPPORTED);
        CHECK_MESSAGE("encrypted");
        CHECK_STATUS(plaid_deserializer_tensor_data(d, 0, &view, &len), PLAID_ERR_UNSUPPORTED);
        CHECK_MESSAGE("encrypted");
        plaid_deserializer_free(d);
        d = NULL;
    }
    /* Conversions: encrypted to plain with the read key, plain to encrypted with the write
       key; without the read key nothing is written. */
    CHECK_OK(plaid_write_options_set_passphrase(wo, NULL, 0));
    CHECK_STATUS(plaid_convert_with(by_key.text, plain.text, "plaid", NULL, NULL),
                 PLAID_ERR_DECRYPT);
    CHECK(!file_exists(plain.text));
    CHECK_OK(plaid_convert_with(by_key.text, plain.text, "plaid", ro, NULL));
    check_round_trip(plain.text, &m, NULL);
    CHECK_OK(plaid_write_options_set_key(wo, key, sizeof key));
    CHECK_OK(plaid_convert_with(plain.text, converted.text, NULL, NULL, wo));
    check_round_trip(converted.text, &m, ro);
    CHECK_STATUS(plaid_convert_with(plain.text, converted.text, "safetensors", NULL, wo),
                 PLAID_ERR_INVALID_ARGUMENT);
    /* A key expects an encrypted file: one in the clear is PLAID_ERR_DECRYPT, before
       anything is read, unless plaintext is allowed. */
    if (CHECK_OK(plaid_deserializer_open(plain.text, ro, &d))) {
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_DECRYPT);
            CHECK_MESSAGE("stored in the clear");
            plan_free(&p);
        }
        CHECK_STATUS(plaid_deserializer_verify(d), PLAID_ERR_DECRYPT);
        plaid_deserializer_free(d);
        d = NULL;
    }
    CHECK_STATUS(plaid_read_options_set_allow_plaintext(NULL, 1), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_OK(plaid_read_options_set_allow_plaintext(ro, 1));
    check_round_trip(plain.text, &m, ro);
    CHECK_OK(plaid_read_options_set_allow_plaintext(ro, 0));
    /* The reader's limits on a passphrase's key derivation: the file's 64 KiB is past a
       limit of 32 KiB; limits outside the format's are refused. */
    CHECK_STATUS(plaid_read_options_set_passphrase_limits(ro, 0, 1), PLAID_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(plaid_read_options_set_passphrase_limits(ro, 65536, 65),
                 PLAID_ERR_INVALID_ARGUMENT);
    CHECK_OK(plaid_read_options_set_key(ro, NULL, 0));
    CHECK_OK(plaid_read_options_set_passphrase(ro, pw, sizeof pw - 1));
    CHECK_OK(plaid_read_options_set_passphrase_limits(ro, 32768, 16));
    if (CHECK_OK(plaid_deserializer_open(by_pw.text, ro, &d))) {
        if (CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_DECRYPT);
            CHECK_MESSAGE("limits");
            plan_free(&p);
        }
        plaid_deserializer_free(d);
        d = NULL;
    }
    CHECK_OK(plaid_read_options_set_passphrase_limits(ro, 65536, 1));
    check_round_trip(by_pw.text, &m, ro);
    /* A writer refuses what readers refuse by default, unless told. */
    CHECK_OK(plaid_write_options_set_key(wo, NULL, 0));
    CHECK_OK(plaid_write_options_set_passphrase(wo, pw, sizeof pw - 1));
    CHECK_OK(plaid_write_options_set_passphrase_limits(wo, 3, (uint64_t)2 << 30));
    {
        plaid_serializer *s = NULL;
        CHECK_STATUS(plaid_serializer_new(converted.text, wo, &s), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_MESSAGE("above what readers take");
        CHECK(s == NULL);
        CHECK_OK(plaid_write_options_set_kdf_above_read_limits(wo, 1));
        if (CHECK_OK(plaid_serializer_new(converted.text, wo, &s))) {
            plaid_serializer_free(s);
        }
    }
out:
    plaid_write_options_free(wo);
    plaid_read_options_free(ro);
    model_free(&m);
}

/* ------------------------------------------------------------------------------------ */
/* Sources served by the caller's read callback                                         */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    int fd;
    uint64_t piece;        /* the most one read returns: reads come back short */
    uint64_t fail_from;    /* reads reaching this offset fail (UINT64_MAX: never) */
    pthread_mutex_t lock;  /* guards the counters below */
    unsigned long reads;
    unsigned long in_flight;
    unsigned long most_in_flight;
    unsigned long released;
} file_source;

static int64_t file_read(void *user_data, uint64_t offset, void *buf, uint64_t len)
{
    file_source *f = user_data;
    ssize_t n;
    pthread_mutex_lock(&f->lock);
    f->reads++;
    f->in_flight++;
    if (f->in_flight > f->most_in_flight) {
        f->most_in_flight = f->in_flight;
    }
    pthread_mutex_unlock(&f->lock);
    if (offset + len > f->fail_from) {
        n = -1;
    } else {
        n = pread(f->fd, buf, (size_t)(len < f->piece ? len : f->piece), (off_t)offset);
        /* Give the other reads time to start, so that they overlap. */
        struct timespec pause = {0, 200000};
        nanosleep(&pause, NULL);
    }
    pthread_mutex_lock(&f->lock);
    f->in_flight--;
    pthread_mutex_unlock(&f->lock);
    return n < 0 ? -1 : (int64_t)n;
}

static void file_release(void *user_data)
{
    file_source *f = user_data;
    pthread_mutex_lock(&f->lock);
    f->released++;
    pthread_mutex_unlock(&f->lock);
}

static unsigned long file_released(file_source *f)
{
    unsigned long released;
    pthread_mutex_lock(&f->lock);
    released = f->released;
    pthread_mutex_unlock(&f->lock);
    return released;
}

/* A plaid_source over the file at `path`; NULL (with a failed check) when it cannot be made. */
static plaid_source *file_source_open(file_source *f, const char *path, uint64_t piece)
{
    plaid_source *source = NULL;
    struct stat st;
    memset(f, 0, sizeof *f);
    f->fd = open(path, O_RDONLY);
    f->piece = piece;
    f->fail_from = UINT64_MAX;
    pthread_mutex_init(&f->lock, NULL);
    if (!CHECK(f->fd >= 0 && fstat(f->fd, &st) == 0)) {
        return NULL;
    }
    if (!CHECK_OK(plaid_source_new(path, (uint64_t)st.st_size, file_read, f, file_release,
                                   &source))) {
        return NULL;
    }
    return source;
}

static void file_source_close(file_source *f)
{
    if (f->fd >= 0) {
        close(f->fd);
    }
    pthread_mutex_destroy(&f->lock);
}

static void test_sources(void)
{
    const uint64_t big[1] = {g_quick ? 300000u : 3000000u};
    path_buf model_storage, garbage_storage;
    const char *path = scratch_path(&model_storage, "source.plaid");
    const char *garbage = scratch_path(&garbage_storage, "garbage.bin");
    plaid_write_options *wo = NULL;
    plaid_read_options *ro = NULL;
    plaid_deserializer *d = NULL;
    plaid_source *source = NULL;
    file_source f;
    model m;
    plan p;
    size_t i;
    char name[32];

    memset(&m, 0, sizeof m);
    CHECK(model_add(&m, "big", PLAID_DTYPE_U8, 1, big));
    for (i = 0; i < 40; i++) {
        const uint64_t shape[1] = {1 + (uint64_t)i * 397};
        snprintf(name, sizeof name, "small.%zu", i);
        CHECK(model_add(&m, name, PLAID_DTYPE_U8, 1, shape));
    }
    if (!CHECK_OK(plaid_write_options_new(&wo)) ||
        !CHECK_OK(plaid_write_options_set_checksum_block_size(wo, 4096)) ||
        !CHECK_OK(plaid_write_options_set_sync(wo, 0)) || !model_write(&m, path, wo, NULL)) {
        plaid_write_options_free(wo);
        model_free(&m);
        return;
    }
    plaid_write_options_free(wo);

    /* Short reads (at most 10,000 bytes) from four threads at once, one CPU worker; the
       handle is given up right after opening: the deserializer keeps the source. */
    source = file_source_open(&f, path, 10000);
    if (source != NULL) {
        CHECK_OK(plaid_source_set_hints(source, 64 * 1024, 4096, 4));
        CHECK_STATUS(plaid_source_set_hints(source, 0, 4096, 4), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(plaid_source_set_hints(source, 4096, 0, 0), PLAID_ERR_INVALID_ARGUMENT);
        CHECK_OK(plaid_read_options_new(&ro));
        CHECK_OK(plaid_read_options_set_threads(ro, 1));
        CHECK_OK(plaid_deserializer_open_source(source, ro, &d));
        plaid_read_options_free(ro);
        plaid_source_free(source);
        CHECK(file_released(&f) == 0);
        if (d != NULL && CHECK(plan_init(&p, d))) {
            CHECK(model_info_mismatches(d, &m) == 0);
            CHECK_OK(plaid_deserializer_load(d, place, &p));
            CHECK(p.contract_errors == 0);
            CHECK(plan_mismatches(&p, &m) == 0);
            CHECK(f.most_in_flight == 4);
            plan_free(&p);
        }
        {
            const void *data = NULL;
            uint64_t nbytes = 0;
            CHECK_STATUS(plaid_deserializer_tensor_data(d, 0, &data, &nbytes),
                         PLAID_ERR_UNSUPPORTED);
            CHECK(data == NULL);
        }
        CHECK_OK(plaid_deserializer_verify(d));
        plaid_deserializer_free(d);
        d = NULL;
        CHECK(file_released(&f) == 1);
        file_source_close(&f);
    }

    /* A read callback that fails: PLAID_ERR_IO naming the source; released once, when the
       last of the handle and the deserializer goes. */
    source = file_source_open(&f, path, 1 << 20);
    if (source != NULL) {
        CHECK_OK(plaid_deserializer_open_source(source, NULL, &d));
        f.fail_from = 4096 + 100000;
        if (d != NULL && CHECK(plan_init(&p, d))) {
            CHECK_STATUS(plaid_deserializer_load(d, place, &p), PLAID_ERR_IO);
            CHECK_MESSAGE(path);
            CHECK_MESSAGE("offset");
            CHECK_MESSAGE("tensor 'big'");
            plan_free(&p);
        }
        plaid_deserializer_free(d);
        d = NULL;
        CHECK(file_released(&f) == 0);
        plaid_source_free(source);
        CHECK(file_released(&f) == 1);
        file_source_close(&f);
    }

    /* Not a model: the open fails and keeps nothing; NULL arguments never call release. */
    if (CHECK(write_whole_file(garbage, "definitely not a model", 22))) {
        source = file_source_open(&f, garbage, 5);
        if (source != NULL) {
            CHECK_STATUS(plaid_deserializer_open_source(source, NULL, &d), PLAID_ERR_FORMAT);
            CHECK(d == NULL);
            CHECK_MESSAGE(garbage);
            plaid_source_free(source);
            CHECK(file_released(&f) == 1);
            source = NULL;
            CHECK_STATUS(plaid_source_new(NULL, 1, file_read, &f, file_release, &source),
                         PLAID_ERR_INVALID_ARGUMENT);
            CHECK_STATUS(plaid_source_new("x", 1, NULL, &f, file_release, &source),
                         PLAID_ERR_INVALID_ARGUMENT);
            CHECK_STATUS(plaid_source_new("x", 1, file_read, &f, file_release, NULL),
                         PLAID_ERR_INVALID_ARGUMENT);
            CHECK(source == NULL);
            CHECK_STATUS(plaid_deserializer_open_source(NULL, NULL, &d),
                         PLAID_ERR_INVALID_ARGUMENT);
            plaid_source_free(NULL);
            CHECK(file_released(&f) == 1);
            file_source_close(&f);
        }
        unlink(garbage);
    }
    model_free(&m);
    unlink(path);
}

typedef struct {
    const char *name;
    void (*run)(void);
} area;

int main(int argc, char **argv)
{
    static const area areas[] = {
        {"version", test_version},
        {"status names", test_status_names},
        {"last error message", test_last_error_message},
        {"options", test_options},
        {"dtypes round trip", test_dtypes_round_trip},
        {"odd shapes and metadata", test_odd_shapes},
        {"big tensor", test_big_tensor},
        {"many tensors", test_many_tensors},
        {"mapped copies and zero-copy views", test_mapped},
        {"placement", test_placement},
        {"NULL arguments", test_nulls},
        {"atomic writes", test_atomicity},
        {"damaged files", test_damaged_files},
        {"tensorizer files", test_tensorizer},
        {"encrypted plaid files", test_encryption},
        {"callback sources", test_sources},
    };
    const char *quick = getenv("PLAID_TEST_QUICK");
    size_t i;

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s SCRATCH_DIR [GOLDEN_DIR [TENSORIZER_DIR]]\n", argv[0]);
        return 2;
    }
    g_scratch = argv[1];
    g_tensorizer = argc > 3 ? argv[3] : NULL;
    g_quick = quick != NULL && quick[0] != '\0' && strcmp(quick, "0") != 0;
    if (make_directories(g_scratch) != 0) {
        perror(g_scratch);
        return 2;
    }
    for (i = 0; i < sizeof areas / sizeof areas[0]; i++) {
        unsigned long failed_before = g_failed, passed_before = g_passed;
        areas[i].run();
        printf("%-4s %s (%lu checks)\n", g_failed == failed_before ? "ok" : "FAIL", areas[i].name,
               g_passed + g_failed - passed_before - failed_before);
        fflush(stdout);
    }
    {
        unsigned long failed_before = g_failed, passed_before = g_passed;
        test_golden(argc > 2 ? argv[2] : NULL);
        if (g_passed + g_failed != passed_before + failed_before) {
            printf("%-4s golden (%lu checks)\n", g_failed == failed_before ? "ok" : "FAIL",
                   g_passed + g_failed - passed_before - failed_before);
        }
    }
    printf("%lu passed, %lu failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
