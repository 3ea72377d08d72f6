// Load a checkpoint into buffers this program allocated, with the C++ wrapper: the
// placement is a lambda capturing the engine's own storage.
//
//   load_model_cpp MODEL_FILE      (plaid, safetensors or tensorizer)

#include <plaid.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL_FILE\n", argv[0]);
        return 2;
    }
    try {
        plaid::Deserializer model = plaid::Deserializer::open(argv[1]);

        // The engine's weights: allocated from the tensor list, before any data is read.
        std::unordered_map<std::string, std::vector<std::uint8_t>> weights;
        for (plaid::TensorView t : model) {
            weights[std::string(t.name())].resize(t.nbytes());
        }

        model.load([&weights](plaid::TensorView t) {
            auto &buffer = weights.at(std::string(t.name()));
            return plaid::Destination::host(buffer.data(), buffer.size());
        });

        std::uint64_t total = 0;
        for (plaid::TensorView t : model) {
            total += t.nbytes();
        }
        std::printf("loaded %zu tensors, %llu bytes, verified\n", model.size(),
                    static_cast<unsigned long long>(total));
        for (plaid::TensorView t : model) {
            std::printf("  %.*s  %s  [", static_cast<int>(t.name().size()), t.name().data(),
                        t.dtype_name());
            for (std::size_t i = 0; i < t.shape().size(); ++i) {
                std::printf(i ? ", %llu" : "%llu", static_cast<unsigned long long>(t.shape()[i]));
            }
            std::printf("]\n");
            if (t.index() == 4) {
                break;
            }
        }
        return 0;
    } catch (const plaid::Error &e) {
        std::fprintf(stderr, "%s: %s\n", e.status_name(), e.what());
        return 1;
    }
}
