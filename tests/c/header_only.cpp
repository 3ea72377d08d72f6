// Header hygiene: include/plaid.h compiles alone as C++11 with -Wall -Wextra -Wpedantic
// -Werror, twice (the include guard works), with C linkage for every declaration.
// Compiled, never run.
#include "plaid.h"
#include "plaid.h"

#include <type_traits>

static_assert(PLAID_ABI_VERSION == 2, "unexpected PLAID_ABI_VERSION");
static_assert(std::is_same<plaid_status, int32_t>::value, "plaid_status is int32_t");
static_assert(std::is_standard_layout<plaid_tensor_info>::value, "plain C struct");
static_assert(std::is_standard_layout<plaid_destination>::value, "plain C struct");
static_assert(std::is_trivially_copyable<plaid_destination>::value, "plain C struct");

namespace {

extern "C" int32_t place_nothing(void *, const plaid_tensor_info *, plaid_destination *dest)
{
    dest->kind = PLAID_DEST_SKIP;
    return 0;
}

}  // namespace

// Referenced through pointers, so the declarations are checked without linking.
extern const plaid_place_fn header_only_place;
const plaid_place_fn header_only_place = place_nothing;
extern decltype(&plaid_deserializer_open) const header_only_open;
decltype(&plaid_deserializer_open) const header_only_open = plaid_deserializer_open;
extern decltype(&plaid_serializer_add_tensor) const header_only_add;
decltype(&plaid_serializer_add_tensor) const header_only_add = plaid_serializer_add_tensor;
extern decltype(&plaid_last_error_message) const header_only_message;
decltype(&plaid_last_error_message) const header_only_message = plaid_last_error_message;
extern const char header_only_version[];
const char header_only_version[] = PLAID_VERSION;
