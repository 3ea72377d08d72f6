// A C++ engine's load with LibTorch: the engine allocates a torch::Tensor for every tensor of
// the checkpoint (its "empty model"), and plaid reads each tensor's bytes straight into that
// tensor's storage, verified, through plaid.hpp's placement callback.
//
//   load_into_libtorch CHECKPOINT [DUMP]
//
// CHECKPOINT is a plaid, safetensors (a file, or a sharded checkpoint's
// model.safetensors.index.json) or tensorizer file. With DUMP, every loaded tensor is written
// there as "name\n" "dtype\n" "nbytes\n" followed by its bytes, for a test to compare with the
// tensors the checkpoint was written from.

#include <plaid.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

// The torch dtype of a PLAID_DTYPE_*, or none for one LibTorch lacks.
std::optional<torch::Dtype> torch_dtype(std::uint32_t dtype) {
    switch (dtype) {
        case PLAID_DTYPE_BOOL: return torch::kBool;
        case PLAID_DTYPE_U8: return torch::kUInt8;
        case PLAID_DTYPE_I8: return torch::kInt8;
        case PLAID_DTYPE_I16: return torch::kInt16;
        case PLAID_DTYPE_I32: return torch::kInt32;
        case PLAID_DTYPE_I64: return torch::kInt64;
        case PLAID_DTYPE_F16: return torch::kFloat16;
        case PLAID_DTYPE_BF16: return torch::kBFloat16;
        case PLAID_DTYPE_F32: return torch::kFloat32;
        case PLAID_DTYPE_F64: return torch::kFloat64;
        case PLAID_DTYPE_C64: return torch::kComplexFloat;
        case PLAID_DTYPE_C128: return torch::kComplexDouble;
        case PLAID_DTYPE_F8_E4M3FN: return torch::kFloat8_e4m3fn;
        case PLAID_DTYPE_F8_E5M2: return torch::kFloat8_e5m2;
        default: return std::nullopt;
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        std::fprintf(stderr, "usage: %s CHECKPOINT [DUMP]\n", argv[0]);
        return 2;
    }
    try {
        plaid::Deserializer checkpoint = plaid::Deserializer::open(argv[1]);

        // The engine's empty model: one tensor per checkpoint tensor, allocated by LibTorch.
        std::map<std::string, torch::Tensor> weights;
        for (plaid::TensorView t : checkpoint) {
            std::optional<torch::Dtype> dtype = torch_dtype(t.dtype());
            if (!dtype) {
                std::fprintf(stderr, "tensor %.*s: dtype %s has no LibTorch equivalent\n",
                             static_cast<int>(t.name().size()), t.name().data(), t.dtype_name());
                return 1;
            }
            std::vector<std::int64_t> shape;
            for (std::uint64_t n : t.shape()) {
                shape.push_back(static_cast<std::int64_t>(n));
            }
            weights.emplace(std::string(t.name()), torch::empty(shape, torch::dtype(*dtype)));
        }

        // One call: plaid asks where each tensor goes and reads it there, in parallel.
        checkpoint.load([&weights](plaid::TensorView t) {
            torch::Tensor &w = weights.at(std::string(t.name()));
            return plaid::Destination::host(w.data_ptr(), w.nbytes());
        });

        std::uint64_t total = 0;
        for (const auto &entry : weights) {
            total += entry.second.nbytes();
        }
        std::printf("loaded %zu tensors, %llu bytes, into torch::Tensors\n", weights.size(),
                    static_cast<unsigned long long>(total));

        if (argc == 3) {
            std::ofstream out(argv[2], std::ios::binary);
            for (plaid::TensorView t : checkpoint) {
                const torch::Tensor &w = weights.at(std::string(t.name()));
                out << t.name() << '\n' << t.dtype_name() << '\n' << w.nbytes() << '\n';
                out.write(static_cast<const char *>(w.data_ptr()),
                          static_cast<std::streamsize>(w.nbytes()));
            }
            if (!out) {
                std::fprintf(stderr, "could not write %s\n", argv[2]);
                return 1;
            }
        }
        return 0;
    } catch (const plaid::Error &e) {
        std::fprintf(stderr, "%s: %s\n", e.status_name(), e.what());
        return 1;
    }
}
