/*
 * Header hygiene: include/plaid.h compiles alone as C99 with -Wall -Wextra -Wpedantic
 * -Werror, twice (the include guard works), and its declarations are usable. Compiled,
 * never run.
 */
#include "plaid.h"
#include "plaid.h"

#if PLAID_ABI_VERSION != 2
#error "unexpected PLAID_ABI_VERSION"
#endif

/* A callback of exactly the type the header declares. */
static int32_t place_nothing(void *user_data, const plaid_tensor_info *info,
                             plaid_destination *dest)
{
    (void)user_data;
    (void)info;
    dest->kind = PLAID_DEST_SKIP;
    return 0;
}

/* Referenced through pointers, so the declarations are checked without linking. */
plaid_status (*header_only_open)(const char *, const plaid_read_options *,
                                 plaid_deserializer **) = plaid_deserializer_open;
plaid_status (*header_only_load)(plaid_deserializer *, plaid_place_fn,
                                 void *) = plaid_deserializer_load;
plaid_status (*header_only_add)(plaid_serializer *, const char *, uint32_t, const uint64_t *,
                                size_t, const void *, uint64_t) = plaid_serializer_add_tensor;
size_t (*header_only_message)(char *, size_t) = plaid_last_error_message;
const char *(*header_only_status_name)(plaid_status) = plaid_status_name;
plaid_place_fn header_only_place = place_nothing;

const char header_only_version[] = PLAID_VERSION;
const plaid_status header_only_statuses[] = {
    PLAID_OK,           PLAID_ERR_INVALID_ARGUMENT, PLAID_ERR_IO,       PLAID_ERR_FORMAT,
    PLAID_ERR_UNSUPPORTED, PLAID_ERR_CHECKSUM,      PLAID_ERR_CAPACITY, PLAID_ERR_CANCELLED,
    PLAID_ERR_NOT_FOUND, PLAID_ERR_NO_CUDA,         PLAID_ERR_CUDA,     PLAID_ERR_PANIC,
};
const uint32_t header_only_kinds[] = {PLAID_DEST_SKIP, PLAID_DEST_HOST, PLAID_DEST_CUDA};
const uint32_t header_only_dtypes[] = {PLAID_DTYPE_BOOL, PLAID_DTYPE_BF16,
                                       PLAID_DTYPE_F4_E2M1FN_X2};
const size_t header_only_info_size = sizeof(plaid_tensor_info);
const size_t header_only_destination_size = sizeof(struct plaid_destination);
