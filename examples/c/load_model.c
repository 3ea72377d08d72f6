/*
 * Load a checkpoint the way an inference engine does: read the tensor list, allocate
 * every destination yourself (here one aligned host buffer per tensor), then let plaid
 * stream the bytes into them in one verified call.
 *
 *   load_model MODEL_FILE      (plaid, safetensors or tensorizer)
 */
#include <plaid.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    void **buffers;
    size_t count;
} engine;

/* The placement callback: tensor `info` goes into the buffer the engine allocated. */
static int32_t place(void *user, const plaid_tensor_info *info, plaid_destination *dest)
{
    engine *e = user;
    if (info->index >= e->count) {
        return 1; /* stops the load */
    }
    dest->kind = PLAID_DEST_HOST;
    dest->address = (uint64_t)(uintptr_t)e->buffers[info->index];
    dest->capacity = info->nbytes;
    return 0;
}

static int fail(const char *what, plaid_status status)
{
    char message[1024];
    plaid_last_error_message(message, sizeof message);
    fprintf(stderr, "%s: %s: %s\n", what, plaid_status_name(status), message);
    return 1;
}

int main(int argc, char **argv)
{
    plaid_deserializer *d = NULL;
    plaid_status status;
    engine e = {NULL, 0};
    uint64_t total = 0;
    size_t i;
    int rc = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_FILE\n", argv[0]);
        return 2;
    }
    status = plaid_deserializer_open(argv[1], NULL, &d);
    if (status != PLAID_OK) {
        return fail("open", status);
    }
    e.count = plaid_deserializer_tensor_count(d);
    e.buffers = calloc(e.count + 1, sizeof *e.buffers);
    for (i = 0; e.buffers != NULL && i < e.count; i++) {
        const plaid_tensor_info *info = plaid_deserializer_tensor(d, i);
        /* 64-byte aligned, at least one byte: the engine's own allocation. */
        e.buffers[i] = aligned_alloc(64, ((size_t)info->nbytes + 64) / 64 * 64);
        if (e.buffers[i] == NULL) {
            rc = 1;
            break;
        }
        total += info->nbytes;
    }
    if (e.buffers == NULL || rc != 0) {
        fprintf(stderr, "out of memory\n");
        rc = 1;
    } else if ((status = plaid_deserializer_load(d, place, &e)) != PLAID_OK) {
        rc = fail("load", status);
    } else {
        printf("loaded %zu tensors, %llu bytes, verified\n", e.count,
               (unsigned long long)total);
        for (i = 0; i < e.count && i < 5; i++) {
            const plaid_tensor_info *info = plaid_deserializer_tensor(d, i);
            printf("  %s  %s  %llu bytes\n", info->name, plaid_dtype_name(info->dtype),
                   (unsigned long long)info->nbytes);
        }
    }
    for (i = 0; e.buffers != NULL && i < e.count; i++) {
        free(e.buffers[i]);
    }
    free(e.buffers);
    plaid_deserializer_free(d);
    return rc;
}
