/* A C99 program built with `pkg-config --cflags --libs plaid` against an installed plaid. */
#include <plaid.h>

#include <stdio.h>

int main(int argc, char **argv)
{
    plaid_deserializer *d = NULL;
    if (argc != 2 || plaid_deserializer_open(argv[1], NULL, &d) != PLAID_OK) {
        return 1;
    }
    printf("pkg-config consumer: %zu tensors, ABI %u\n", plaid_deserializer_tensor_count(d),
           plaid_abi_version());
    plaid_deserializer_free(d);
    return 0;
}
