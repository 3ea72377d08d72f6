// The C++ wrapper (bindings/cpp/plaid.hpp) against the real library: RAII handles, errors
// as exceptions with their status, iteration over tensor infos, placement from capturing
// lambdas, and an exception thrown inside a lambda stopping the load and coming back out.

#include "plaid.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

int g_failed = 0, g_passed = 0;

void check(bool ok, const char *what, int line) {
    if (ok) {
        ++g_passed;
    } else {
        ++g_failed;
        std::fprintf(stderr, "FAIL line %d: %s\n", line, what);
    }
}
#define CHECK(cond) check((cond), #cond, __LINE__)

struct Model {
    std::map<std::string, std::vector<std::uint8_t>> data;
    std::map<std::string, std::vector<std::uint64_t>> shapes;
};

Model make_model() {
    Model m;
    std::uint32_t state = 12345;
    auto add = [&](const std::string &name, std::vector<std::uint64_t> shape, std::size_t bytes) {
        std::vector<std::uint8_t> v(bytes);
        for (auto &b : v) {
            state = state * 1103515245u + 12345u;
            b = static_cast<std::uint8_t>(state >> 16);
        }
        m.data[name] = std::move(v);
        m.shapes[name] = std::move(shape);
    };
    add("embed.weight", {1000, 256}, 1000 * 256 * 2);
    add("layers.0.norm", {256}, 256 * 4);
    add("scalar", {}, 4);
    add("empty", {0, 3}, 0);
    for (int i = 0; i < 50; ++i) {
        add("small." + std::to_string(i), {std::uint64_t(i + 1)}, std::size_t(i + 1) * 4);
    }
    return m;
}

std::uint32_t dtype_of(const std::string &name) {
    return name == "embed.weight" ? PLAID_DTYPE_BF16 : PLAID_DTYPE_F32;
}

void write(const Model &m, const std::string &path) {
    plaid::WriteOptions options;
    options.sync(false);
    plaid::Serializer s = plaid::Serializer::create(path, &options);
    for (const auto &[name, bytes] : m.data) {
        s.add_tensor(name, dtype_of(name), m.shapes.at(name), bytes.data(), bytes.size());
    }
    s.set_metadata("origin", "c++");
    s.finish();
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const std::string path = std::string(argv[1]) + "/cpp.plaid";
    const Model model = make_model();
    write(model, path);

    plaid::ReadOptions options;
    options.threads(3).chunk_size(64 << 10);
    plaid::Deserializer d = plaid::Deserializer::open(path, &options);
    CHECK(d.format() == PLAID_FORMAT_PLAID);
    CHECK(d.size() == model.data.size());
    CHECK(d.metadata("origin") == std::optional<std::string_view>("c++"));
    CHECK(!d.metadata("absent"));

    // Iteration: string_view names, span-like shapes.
    std::size_t seen = 0;
    for (plaid::TensorView t : d) {
        const std::string name(t.name());
        CHECK(model.data.count(name) == 1);
        const auto &shape = model.shapes.at(name);
        CHECK(t.shape().size() == shape.size());
        CHECK(std::equal(t.shape().begin(), t.shape().end(), shape.begin()));
        CHECK(t.nbytes() == model.data.at(name).size());
        CHECK(t.index() == seen++);
    }
    CHECK(d.find("scalar").has_value() && !d.find("nope").has_value());

    // A capturing lambda places every tensor into buffers this program owns.
    std::map<std::string, std::vector<std::uint8_t>> buffers;
    d.load([&buffers](plaid::TensorView t) {
        auto &buffer = buffers[std::string(t.name())];
        buffer.assign(t.nbytes(), 0xA5);
        return plaid::Destination::host(buffer.data(), buffer.size());
    });
    CHECK(buffers == model.data);

    // Tensor-parallel views through Destination::slice and ::dtype: rows 100..300 of the
    // bf16 [1000, 256] embedding as stored, and its columns 10..74 converted to f32 (exact:
    // a bf16 is the top half of an f32; the random bytes hold signaling NaNs, which come
    // out quiet), against the same cuts made here.
    {
        const auto &embed = model.data.at("embed.weight");
        std::vector<std::uint8_t> rows(200 * 256 * 2, 0xA5);
        std::vector<float> cols(1000 * 64, -1.0f);
        d.load([&](plaid::TensorView t) {
            if (t.name() != "embed.weight") {
                return plaid::Destination::skip();
            }
            return plaid::Destination::host(rows.data(), rows.size()).slice(0, 100, 300);
        });
        CHECK(std::equal(rows.begin(), rows.end(), embed.begin() + 100 * 256 * 2));
        d.load([&](plaid::TensorView t) {
            if (t.name() != "embed.weight") {
                return plaid::Destination::skip();
            }
            return plaid::Destination::host(cols.data(), cols.size() * sizeof(float))
                .slice(1, 10, 74)
                .dtype(PLAID_DTYPE_F32);
        });
        bool same = true;
        for (std::size_t r = 0; r < 1000; ++r) {
            for (std::size_t c = 0; c < 64; ++c) {
                const std::uint8_t *b = &embed[(r * 256 + 10 + c) * 2];
                std::uint32_t bits = std::uint32_t(b[0]) << 16 | std::uint32_t(b[1]) << 24;
                if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
                    bits |= 0x00400000u;  // a NaN comes out quiet, as IEEE 754 converts
                }
                float want;
                std::memcpy(&want, &bits, sizeof want);
                float got = cols[r * 64 + c];
                same = same && std::memcmp(&got, &want, sizeof got) == 0;
            }
        }
        CHECK(same);
        // A slice past the dimension's end: PLAID_ERR_INVALID_ARGUMENT, named.
        try {
            d.load([&](plaid::TensorView t) {
                if (t.name() != "embed.weight") {
                    return plaid::Destination::skip();
                }
                return plaid::Destination::host(rows.data(), rows.size()).slice(0, 900, 1100);
            });
            CHECK(!"a slice past the end should have thrown");
        } catch (const plaid::Error &e) {
            CHECK(e.status() == PLAID_ERR_INVALID_ARGUMENT);
            CHECK(std::strstr(e.what(), "embed.weight") != nullptr);
        }
    }

    // An exception inside the lambda stops the load before any byte is written and comes
    // back out of load() as itself.
    std::vector<std::uint8_t> untouched(model.data.at("embed.weight").size(), 0);
    std::size_t calls = 0;
    try {
        d.load([&](plaid::TensorView t) -> plaid::Destination {
            ++calls;
            if (t.name() == "layers.0.norm") {
                throw std::out_of_range("no room for layers.0.norm");
            }
            if (t.name() == "embed.weight") {
                return plaid::Destination::host(untouched.data(), untouched.size());
            }
            return plaid::Destination::skip();
        });
        CHECK(!"load should have thrown");
    } catch (const std::out_of_range &e) {
        CHECK(std::string(e.what()) == "no room for layers.0.norm");
    }
    CHECK(calls == 3);  // embed.weight, empty, layers.0.norm (file order)
    CHECK(untouched == std::vector<std::uint8_t>(untouched.size(), 0));

    // Library errors are plaid::Error with their status.
    try {
        d.load([](plaid::TensorView t) {
            static std::uint8_t tiny[1];
            return plaid::Destination::host(tiny, t.nbytes() > 1 ? 1 : t.nbytes());
        });
        CHECK(!"load should have thrown");
    } catch (const plaid::Error &e) {
        CHECK(e.status() == PLAID_ERR_CAPACITY);
        CHECK(std::strstr(e.what(), "embed.weight") != nullptr);
        CHECK(std::string(e.status_name()) == "PLAID_ERR_CAPACITY");
    }
    try {
        plaid::Deserializer::open(std::string(argv[1]) + "/missing.plaid");
        CHECK(!"open should have thrown");
    } catch (const plaid::Error &e) {
        CHECK(e.status() == PLAID_ERR_IO);
    }

    // Move-only handles: the moved-from one frees nothing twice.
    plaid::Deserializer moved = std::move(d);
    CHECK(moved.size() == model.data.size());
    moved.verify();
    d = std::move(moved);
    CHECK(d.size() == model.data.size());

    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    // Encrypted: written with a passphrase, opened without it (the index is readable),
    // loaded with it; without it, PLAID_ERR_DECRYPT naming a tensor.
    {
        const std::string enc = std::string(argv[1]) + "/cpp_encrypted.plaid";
        plaid::WriteOptions wo;
        wo.sync(false).cipher(PLAID_CIPHER_AES_256_GCM).passphrase(std::string("c++ secret\0with a NUL", 21)).passphrase_limits(1, 64 << 10);
        const std::uint8_t salt[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
        try {
            wo.passphrase_salt(salt, 8);
            CHECK(false);
        } catch (const plaid::Error &e) {
            CHECK(e.status() == PLAID_ERR_INVALID_ARGUMENT);
        }
        wo.passphrase_salt(salt, sizeof salt);  // the key is derived once with it
        plaid::Serializer s = plaid::Serializer::create(enc, &wo);
        for (const auto &[name, bytes] : model.data) {
            s.add_tensor(name, dtype_of(name), model.shapes.at(name), bytes.data(), bytes.size());
        }
        s.finish();
        plaid::Deserializer locked = plaid::Deserializer::open(enc);
        CHECK(locked.size() == model.data.size());
        try {
            locked.load([](plaid::TensorView) { return plaid::Destination::skip(); });
            std::vector<std::uint8_t> sink(model.data.at("embed.weight").size());
            locked.load([&sink](plaid::TensorView t) {
                return t.name() == "embed.weight" ? plaid::Destination::host(sink.data(), sink.size())
                                                  : plaid::Destination::skip();
            });
            CHECK(false);
        } catch (const plaid::Error &e) {
            CHECK(e.status() == PLAID_ERR_DECRYPT);
            CHECK(std::strstr(e.what(), "embed.weight") != nullptr);
        }
        plaid::ReadOptions ro;
        ro.passphrase(std::string("c++ secret\0with a NUL", 21));
        plaid::Deserializer open = plaid::Deserializer::open(enc, &ro);
        std::map<std::string, std::vector<std::uint8_t>> got;
        open.load([&got](plaid::TensorView t) {
            auto &buffer = got[std::string(t.name())];
            buffer.assign(t.nbytes(), 0xA5);
            return plaid::Destination::host(buffer.data(), buffer.size());
        });
        CHECK(got == model.data);
        // A passphrase expects an encrypted file: the plain one is refused, unless allowed.
        plaid::Deserializer plain = plaid::Deserializer::open(path, &ro);
        try {
            plain.verify();
            CHECK(false);
        } catch (const plaid::Error &e) {
            CHECK(e.status() == PLAID_ERR_DECRYPT);
            CHECK(std::strstr(e.what(), "stored in the clear") != nullptr);
        }
        ro.allow_plaintext(true).passphrase_limits(64 << 10, 1);
        plaid::Deserializer::open(path, &ro).verify();
        try {
            ro.passphrase_limits(0, 1);
            CHECK(false);
        } catch (const plaid::Error &e) {
            CHECK(e.status() == PLAID_ERR_INVALID_ARGUMENT);
        }
    }

    return g_failed == 0 ? 0 : 1;
}
