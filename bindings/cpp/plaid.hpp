// plaid.hpp: a header-only C++17 wrapper over plaid's C API (plaid.h).
//
//   plaid::Deserializer model = plaid::Deserializer::open("model.plaid");
//   for (plaid::TensorView t : model) { ... t.name(), t.shape(), t.nbytes() ... }
//   model.load([&](plaid::TensorView t) {          // any callable; captures are fine
//       return plaid::Destination::host(buffers[t.index()].data(), t.nbytes());
//   });
//
// RAII handles (move-only; destructors free), errors as plaid::Error (status + message).
// An exception thrown by a placement callable stops the load and is rethrown by load().

#ifndef PLAID_HPP
#define PLAID_HPP

#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "plaid.h"

namespace plaid {

/// An error reported by libplaid: the status (`PLAID_ERR_*`) and the library's message,
/// which names the file, the tensor and the offset where it knows them.
class Error : public std::runtime_error {
public:
    Error(plaid_status status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    plaid_status status() const noexcept { return status_; }
    /// The status's name, e.g. "PLAID_ERR_CHECKSUM".
    const char *status_name() const noexcept { return plaid_status_name(status_); }

private:
    plaid_status status_;
};

namespace detail {
inline std::string last_message() {
    std::size_t len = plaid_last_error_message(nullptr, 0);
    std::string text(len + 1, '\0');
    plaid_last_error_message(&text[0], text.size());
    text.resize(len);
    return text;
}
}  // namespace detail

/// Throw `Error` for a non-OK status.
inline void check(plaid_status status) {
    if (status != PLAID_OK) {
        throw Error(status, detail::last_message());
    }
}

/// The dimensions of a tensor: a read-only, span-like view lent by the deserializer.
class Shape {
public:
    Shape(const std::uint64_t *data, std::size_t size) noexcept : data_(data), size_(size) {}
    const std::uint64_t *begin() const noexcept { return data_; }
    const std::uint64_t *end() const noexcept { return data_ + size_; }
    const std::uint64_t *data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    std::uint64_t operator[](std::size_t i) const noexcept { return data_[i]; }
    /// Number of elements (1 for a 0-d tensor).
    std::uint64_t elements() const noexcept {
        std::uint64_t n = 1;
        for (std::uint64_t d : *this) {
            n *= d;
        }
        return n;
    }

private:
    const std::uint64_t *data_;
    std::size_t size_;
};

/// One tensor's description, lent by a `Deserializer` and valid while it lives.
class TensorView {
public:
    explicit TensorView(const plaid_tensor_info *info) noexcept : info_(info) {}
    std::string_view name() const noexcept { return {info_->name, info_->name_len}; }
    /// A `PLAID_DTYPE_*` value; `dtype_name()` gives its name ("bf16").
    std::uint32_t dtype() const noexcept { return info_->dtype; }
    const char *dtype_name() const noexcept { return plaid_dtype_name(info_->dtype); }
    Shape shape() const noexcept { return {info_->shape, info_->ndim}; }
    std::uint64_t nbytes() const noexcept { return info_->nbytes; }
    std::size_t index() const noexcept { return info_->index; }
    /// A `PLAID_ROLE_*` value (tensorizer's tensor type).
    std::uint32_t role() const noexcept { return info_->role; }
    std::uint32_t module_index() const noexcept { return info_->module_index; }
    /// The JSON path of a tensor of a nested structure; empty for a plain name.
    std::string_view path() const noexcept {
        return info_->path ? std::string_view(info_->path, info_->path_len) : std::string_view();
    }
    bool zero_fill() const noexcept { return info_->zero_fill != 0; }
    const plaid_tensor_info &raw() const noexcept { return *info_; }

private:
    const plaid_tensor_info *info_;
};

/// Where a tensor goes: returned by placement callables.
struct Destination {
    plaid_destination raw{};

    /// Do not load the tensor.
    static Destination skip() noexcept { return {}; }
    /// Host memory: `capacity` bytes at `address`.
    static Destination host(void *address, std::uint64_t capacity) noexcept {
        Destination d;
        d.raw.kind = PLAID_DEST_HOST;
        d.raw.address = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(address));
        d.raw.capacity = capacity;
        return d;
    }
    /// CUDA device memory: a `CUdeviceptr` on device `device`.
    static Destination cuda(int device, std::uint64_t address, std::uint64_t capacity) noexcept {
        Destination d;
        d.raw.kind = PLAID_DEST_CUDA;
        d.raw.device = device;
        d.raw.address = address;
        d.raw.capacity = capacity;
        return d;
    }
    /// Only indices `start..stop` of dimension `dim`, written densely (row-major);
    /// `capacity` must hold the slice.
    Destination &slice(std::uint32_t dim, std::uint64_t start, std::uint64_t stop) noexcept {
        raw.slice_dim = dim;
        raw.slice_start = start;
        raw.slice_stop = stop;
        return *this;
    }
    /// Converted on load to `dtype` (a `PLAID_DTYPE_*`: f16, bf16, f32 or f64, from one of
    /// them); `capacity` must hold the converted bytes.
    Destination &dtype(std::uint32_t dtype) noexcept {
        raw.dtype = dtype;
        return *this;
    }
};

/// Read options (verification, threads, chunk size, ...), as `plaid_read_options_*`.
class ReadOptions {
public:
    ReadOptions() { check(plaid_read_options_new(&raw_)); }
    ~ReadOptions() { plaid_read_options_free(raw_); }
    ReadOptions(ReadOptions &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    ReadOptions &operator=(ReadOptions &&other) noexcept {
        std::swap(raw_, other.raw_);
        return *this;
    }
    ReadOptions(const ReadOptions &) = delete;
    ReadOptions &operator=(const ReadOptions &) = delete;

    ReadOptions &verify(bool on) { check(plaid_read_options_set_verify(raw_, on)); return *this; }
    ReadOptions &threads(std::uint32_t n) { check(plaid_read_options_set_threads(raw_, n)); return *this; }
    ReadOptions &chunk_size(std::uint64_t bytes) {
        check(plaid_read_options_set_chunk_size(raw_, bytes));
        return *this;
    }
    ReadOptions &mmap(bool on) { check(plaid_read_options_set_mmap(raw_, on)); return *this; }
    ReadOptions &cuda_stream(void *stream) {
        check(plaid_read_options_set_cuda_stream(raw_, stream));
        return *this;
    }
    /// Decrypt with a raw 32-byte key (plaid's and tensorizer's encrypted files); plaid
    /// keeps a copy, zeroed when the options are freed. With a key, a tensor stored in the
    /// clear is `PLAID_ERR_DECRYPT` unless `allow_plaintext(true)`.
    ReadOptions &key(const void *bytes, std::size_t len) {
        check(plaid_read_options_set_key(raw_, static_cast<const std::uint8_t *>(bytes), len));
        return *this;
    }
    /// Decrypt with a key derived from `passphrase` (its bytes, as given).
    ReadOptions &passphrase(const std::string &passphrase) {
        check(plaid_read_options_set_passphrase(raw_, passphrase.data(), passphrase.size()));
        return *this;
    }
    /// With a key or passphrase, read tensors stored in the clear too instead of refusing them.
    ReadOptions &allow_plaintext(bool on) {
        check(plaid_read_options_set_allow_plaintext(raw_, on));
        return *this;
    }
    /// The most a file's passphrase key derivation may cost: bytes and passes (by default
    /// 1 GiB and 16).
    ReadOptions &passphrase_limits(std::uint64_t max_memory, std::uint64_t max_passes) {
        check(plaid_read_options_set_passphrase_limits(raw_, max_memory, max_passes));
        return *this;
    }
    const plaid_read_options *get() const noexcept { return raw_; }

private:
    plaid_read_options *raw_ = nullptr;
};

/// An open model file (plaid, safetensors or tensorizer). Move-only; freed on destruction.
class Deserializer {
public:
    /// Open `path` and read its header; throws `Error` (e.g. `PLAID_ERR_IO`, `_FORMAT`).
    static Deserializer open(const std::string &path, const ReadOptions *options = nullptr) {
        plaid_deserializer *raw = nullptr;
        check(plaid_deserializer_open(path.c_str(), options ? options->get() : nullptr, &raw));
        return Deserializer(raw);
    }

    Deserializer(Deserializer &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    Deserializer &operator=(Deserializer &&other) noexcept {
        std::swap(raw_, other.raw_);
        return *this;
    }
    Deserializer(const Deserializer &) = delete;
    Deserializer &operator=(const Deserializer &) = delete;
    ~Deserializer() { plaid_deserializer_free(raw_); }

    /// `PLAID_FORMAT_PLAID`, `_SAFETENSORS` or `_TENSORIZER`.
    std::uint32_t format() const noexcept { return plaid_deserializer_format(raw_); }
    std::size_t size() const noexcept { return plaid_deserializer_tensor_count(raw_); }
    TensorView operator[](std::size_t i) const noexcept {
        return TensorView(plaid_deserializer_tensor(raw_, i));
    }

    /// Iteration over every tensor, in file order.
    class iterator {
    public:
        using value_type = TensorView;
        using difference_type = std::ptrdiff_t;
        using iterator_category = std::forward_iterator_tag;
        iterator(const Deserializer *d, std::size_t i) noexcept : d_(d), i_(i) {}
        TensorView operator*() const noexcept { return (*d_)[i_]; }
        iterator &operator++() noexcept { ++i_; return *this; }
        iterator operator++(int) noexcept { iterator old = *this; ++i_; return old; }
        bool operator==(const iterator &o) const noexcept { return i_ == o.i_; }
        bool operator!=(const iterator &o) const noexcept { return i_ != o.i_; }

    private:
        const Deserializer *d_;
        std::size_t i_;
    };
    iterator begin() const noexcept { return {this, 0}; }
    iterator end() const noexcept { return {this, size()}; }

    /// The tensor called `name`, if any.
    std::optional<TensorView> find(const std::string &name) const {
        std::size_t index = 0;
        if (plaid_deserializer_find(raw_, name.c_str(), &index) != PLAID_OK) {
            return std::nullopt;
        }
        return (*this)[index];
    }

    /// The metadata value of `key`, if any.
    std::optional<std::string_view> metadata(const std::string &key) const {
        const char *value = nullptr;
        if (plaid_deserializer_metadata_get(raw_, key.c_str(), &value) != PLAID_OK) {
            return std::nullopt;
        }
        return std::string_view(value);
    }

    /// Load tensors: `place` (any callable taking a `TensorView` and returning a
    /// `Destination`) is called once per tensor, in file order, on this thread, before any
    /// data is read; then the bytes stream into the destinations, verified. An exception
    /// thrown by `place` stops the load before any byte is written and is rethrown here.
    template <class Place>
    void load(Place &&place) {
        struct Context {
            std::remove_reference_t<Place> *place;
            std::exception_ptr error;
        } context{&place, nullptr};
        auto trampoline = [](void *user, const plaid_tensor_info *info,
                             plaid_destination *dest) noexcept -> std::int32_t {
            auto *ctx = static_cast<Context *>(user);
            try {
                *dest = (*ctx->place)(TensorView(info)).raw;
                return 0;
            } catch (...) {
                ctx->error = std::current_exception();
                return 1;
            }
        };
        plaid_status status = plaid_deserializer_load(raw_, trampoline, &context);
        if (context.error) {
            std::rethrow_exception(context.error);
        }
        check(status);
    }

    /// Read and verify every checksum of the file.
    void verify() const { check(plaid_deserializer_verify(raw_)); }

    plaid_deserializer *get() const noexcept { return raw_; }

private:
    explicit Deserializer(plaid_deserializer *raw) noexcept : raw_(raw) {}
    plaid_deserializer *raw_ = nullptr;
};

/// Write options (alignment, checksum block size, threads, fsync).
class WriteOptions {
public:
    WriteOptions() { check(plaid_write_options_new(&raw_)); }
    ~WriteOptions() { plaid_write_options_free(raw_); }
    WriteOptions(WriteOptions &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    WriteOptions &operator=(WriteOptions &&other) noexcept {
        std::swap(raw_, other.raw_);
        return *this;
    }
    WriteOptions(const WriteOptions &) = delete;
    WriteOptions &operator=(const WriteOptions &) = delete;

    WriteOptions &sync(bool on) { check(plaid_write_options_set_sync(raw_, on)); return *this; }
    WriteOptions &threads(std::uint32_t n) { check(plaid_write_options_set_threads(raw_, n)); return *this; }
    /// Encrypt the tensor data (AES-256-GCM) with a raw 32-byte key.
    WriteOptions &key(const void *bytes, std::size_t len) {
        check(plaid_write_options_set_key(raw_, static_cast<const std::uint8_t *>(bytes), len));
        return *this;
    }
    /// Encrypt with a key derived from `passphrase` by Argon2id (recorded in the file).
    WriteOptions &passphrase(const std::string &passphrase) {
        check(plaid_write_options_set_passphrase(raw_, passphrase.data(), passphrase.size()));
        return *this;
    }
    /// The cipher: `PLAID_CIPHER_AEGIS_256X4` (the default) or `PLAID_CIPHER_AES_256_GCM`.
    WriteOptions &cipher(std::uint32_t cipher) {
        check(plaid_write_options_set_cipher(raw_, cipher));
        return *this;
    }
    /// Argon2id cost for the passphrase (default 3 passes over 256 MiB).
    WriteOptions &passphrase_limits(std::uint64_t passes, std::uint64_t memory) {
        check(plaid_write_options_set_passphrase_limits(raw_, passes, memory));
        return *this;
    }
    /// Derive the passphrase's key with this 16-byte salt instead of a fresh one per file.
    WriteOptions &passphrase_salt(const std::uint8_t *salt, std::size_t len) {
        check(plaid_write_options_set_passphrase_salt(raw_, salt, len));
        return *this;
    }
    /// Allow passphrase limits above what readers take by default (1 GiB, 16 passes).
    WriteOptions &kdf_above_read_limits(bool on) {
        check(plaid_write_options_set_kdf_above_read_limits(raw_, on));
        return *this;
    }
    const plaid_write_options *get() const noexcept { return raw_; }

private:
    plaid_write_options *raw_ = nullptr;
};

/// Writes a plaid file atomically: nothing appears at the path until `finish()`.
/// Tensor data is borrowed until then. Move-only; an unfinished serializer writes nothing.
class Serializer {
public:
    static Serializer create(const std::string &path, const WriteOptions *options = nullptr) {
        plaid_serializer *raw = nullptr;
        check(plaid_serializer_new(path.c_str(), options ? options->get() : nullptr, &raw));
        return Serializer(raw);
    }
    Serializer(Serializer &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    Serializer &operator=(Serializer &&other) noexcept {
        std::swap(raw_, other.raw_);
        return *this;
    }
    Serializer(const Serializer &) = delete;
    Serializer &operator=(const Serializer &) = delete;
    ~Serializer() { plaid_serializer_free(raw_); }

    /// Add a tensor of `dtype` (`PLAID_DTYPE_*`) and `shape`; `data` holds `nbytes` bytes
    /// and must stay valid until `finish()`.
    Serializer &add_tensor(const std::string &name, std::uint32_t dtype,
                           const std::vector<std::uint64_t> &shape, const void *data,
                           std::uint64_t nbytes) {
        check(plaid_serializer_add_tensor(raw_, name.c_str(), dtype, shape.data(), shape.size(),
                                          data, nbytes));
        return *this;
    }
    Serializer &set_metadata(const std::string &key, const std::string &value) {
        check(plaid_serializer_set_metadata(raw_, key.c_str(), value.c_str()));
        return *this;
    }
    /// Write everything and move the file into place.
    void finish() { check(plaid_serializer_finish(raw_)); }

private:
    explicit Serializer(plaid_serializer *raw) noexcept : raw_(raw) {}
    plaid_serializer *raw_ = nullptr;
};

/// The library's version string.
inline std::string_view version() noexcept { return plaid_version(); }

}  // namespace plaid

#endif  // PLAID_HPP
