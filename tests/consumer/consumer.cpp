// A program built against an installed plaid (find_package, pkg-config or
// add_subdirectory): loads a checkpoint into its own buffers with a capturing lambda.
#include <plaid.hpp>

#include <cstdint>
#include <cstdio>
#include <vector>

int main(int argc, char **argv) {
    if (argc != 2) {
        return 2;
    }
    try {
        plaid::Deserializer model = plaid::Deserializer::open(argv[1]);
        std::vector<std::vector<std::uint8_t>> mine(model.size());
        std::size_t placed = 0;
        model.load([&mine, &placed](plaid::TensorView t) {
            mine[t.index()].assign(t.nbytes(), 0);
            ++placed;
            return plaid::Destination::host(mine[t.index()].data(), t.nbytes());
        });
        std::uint64_t total = 0;
        for (const auto &buffer : mine) {
            total += buffer.size();
        }
        std::printf("consumer: loaded %zu tensors (%llu bytes) with plaid %s\n", placed,
                    static_cast<unsigned long long>(total), plaid_version());
        return placed == model.size() ? 0 : 1;
    } catch (const plaid::Error &e) {
        std::fprintf(stderr, "consumer: %s\n", e.what());
        return 1;
    }
}
