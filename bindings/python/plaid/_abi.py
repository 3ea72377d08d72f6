"""The C ABI of `plaid.h` in ctypes, declared once: its structs, callback types, status
codes and function signatures. Nothing here loads a library: `bind` applies the signatures
to one that is loaded. The package (`plaid._lib`), the C API tests, the benchmarks and the
GPU check all take their declarations from here; this file imports nothing of the package,
so a script may load it by path without installing plaid."""

import ctypes

ABI_VERSION = 2

_vp = ctypes.c_void_p
_u32, _u64, _i32, _size = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32, ctypes.c_size_t


class TensorInfo(ctypes.Structure):
    """`plaid_tensor_info`, lent by the library."""

    _fields_ = [("name", ctypes.c_char_p), ("name_len", _size), ("dtype", _u32),
                ("ndim", _u32), ("shape", ctypes.POINTER(_u64)), ("nbytes", _u64),
                ("index", _size), ("role", _u32), ("module_index", _u32),
                ("path", ctypes.c_char_p), ("path_len", _size), ("zero_fill", _u32),
                ("encrypted", _u32), ("offset", _u64)]


class Destination(ctypes.Structure):
    """`plaid_destination`, filled in by the placement callback."""

    _fields_ = [("kind", _u32), ("device", _i32), ("address", _u64), ("capacity", _u64),
                ("slice_dim", _u32), ("slice_start", _u64), ("slice_stop", _u64),
                ("dtype", _u32)]


PLACE_FN = ctypes.CFUNCTYPE(_i32, _vp, ctypes.POINTER(TensorInfo), ctypes.POINTER(Destination))
FILTER_FN = ctypes.CFUNCTYPE(_i32, _vp, ctypes.POINTER(TensorInfo))
READ_FN = ctypes.CFUNCTYPE(ctypes.c_int64, _vp, _u64, _vp, _u64)
RELEASE_FN = ctypes.CFUNCTYPE(None, _vp)


DEST_SKIP, DEST_HOST, DEST_CUDA = 0, 1, 2
STATUS = {"PLAID_OK": 0, "PLAID_ERR_INVALID_ARGUMENT": 1, "PLAID_ERR_IO": 2,
          "PLAID_ERR_FORMAT": 3, "PLAID_ERR_UNSUPPORTED": 4, "PLAID_ERR_CHECKSUM": 5,
          "PLAID_ERR_CAPACITY": 6, "PLAID_ERR_CANCELLED": 7, "PLAID_ERR_NOT_FOUND": 8,
          "PLAID_ERR_NO_CUDA": 9, "PLAID_ERR_CUDA": 10, "PLAID_ERR_PANIC": 11,
          "PLAID_ERR_DECRYPT": 12}
FORMATS = {1: "plaid", 2: "safetensors", 3: "tensorizer"}
ROLES = {0: None, 1: "param", 2: "buffer", 3: "state_dict"}
ROLE_IDS = {v: k for k, v in ROLES.items() if v}

SIGNATURES = [
    ("plaid_abi_version", [], _u32),
    ("plaid_version", [], ctypes.c_char_p),
    ("plaid_last_error_message", [ctypes.c_char_p, _size], _size),
    ("plaid_status_name", [_i32], ctypes.c_char_p),
    ("plaid_read_options_new", [ctypes.POINTER(_vp)], _i32),
    ("plaid_read_options_free", [_vp], None),
    ("plaid_read_options_set_verify", [_vp, _i32], _i32),
    ("plaid_read_options_set_verify_sha256", [_vp, _i32], _i32),
    ("plaid_read_options_set_threads", [_vp, _u32], _i32),
    ("plaid_read_options_set_chunk_size", [_vp, _u64], _i32),
    ("plaid_read_options_set_mmap", [_vp, _i32], _i32),
    ("plaid_read_options_set_huge_pages", [_vp, _i32], _i32),
    ("plaid_read_options_set_staging_lanes", [_vp, _u32], _i32),
    ("plaid_read_options_set_cuda_stream", [_vp, _vp], _i32),
    ("plaid_read_options_set_requests_in_flight", [_vp, _u32], _i32),
    ("plaid_read_options_set_storage", [_vp, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_read_options_set_key", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_read_options_set_passphrase", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_read_options_set_allow_plaintext", [_vp, _i32], _i32),
    ("plaid_read_options_set_passphrase_limits", [_vp, _u64, _u64], _i32),
    ("plaid_deserializer_open", [ctypes.c_char_p, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_source_new", [ctypes.c_char_p, _u64, READ_FN, _vp, RELEASE_FN, ctypes.POINTER(_vp)],
     _i32),
    ("plaid_source_set_hints", [_vp, _u64, _u64, _u32], _i32),
    ("plaid_source_free", [_vp], None),
    ("plaid_deserializer_open_source", [_vp, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_deserializer_format", [_vp], _u32),
    ("plaid_deserializer_tensor_count", [_vp], _size),
    ("plaid_deserializer_tensors", [_vp], ctypes.POINTER(TensorInfo)),
    ("plaid_deserializer_tensor", [_vp, _size], ctypes.POINTER(TensorInfo)),
    ("plaid_deserializer_metadata_get", [_vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)],
     _i32),
    ("plaid_deserializer_load_cuda", [_vp, _i32, FILTER_FN, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_cuda_arena_tensor", [_vp, _size, ctypes.POINTER(_u64), ctypes.POINTER(_u64)], _i32),
    ("plaid_cuda_arena_free", [_vp], None),
    ("plaid_deserializer_load", [_vp, PLACE_FN, _vp], _i32),
    ("plaid_deserializer_bytes_read", [_vp], _u64),
    ("plaid_deserializer_load_host", [_vp, FILTER_FN, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_deserializer_load_host_views", [_vp, PLACE_FN, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_deserializer_metadata_count", [_vp], _size),
    ("plaid_glob_match", [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_i32)], _i32),
    ("plaid_deserializer_metadata_entry",
     [_vp, _size, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)], _i32),
    ("plaid_deserializer_verify", [_vp], _i32),
    ("plaid_deserializer_free", [_vp], None),
    ("plaid_host_arena_tensor", [_vp, _size, ctypes.POINTER(_vp), ctypes.POINTER(_u64)], _i32),
    ("plaid_host_arena_free", [_vp], None),
    ("plaid_write_options_new", [ctypes.POINTER(_vp)], _i32),
    ("plaid_write_options_set_sync", [_vp, _i32], _i32),
    ("plaid_write_options_set_storage", [_vp, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_convert", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_convert_with", [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, _vp, _vp], _i32),
    ("plaid_write_options_set_key", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_write_options_set_passphrase", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_write_options_set_passphrase_limits", [_vp, _u64, _u64], _i32),
    ("plaid_write_options_set_passphrase_salt", [_vp, ctypes.c_char_p, _size], _i32),
    ("plaid_write_options_set_kdf_above_read_limits", [_vp, _i32], _i32),
    ("plaid_write_options_set_cipher", [_vp, _u32], _i32),
    ("plaid_write_options_free", [_vp], None),
    ("plaid_serializer_new", [ctypes.c_char_p, _vp, ctypes.POINTER(_vp)], _i32),
    ("plaid_serializer_add_tensor",
     [_vp, ctypes.c_char_p, _u32, ctypes.POINTER(_u64), _size, _vp, _u64], _i32),
    ("plaid_serializer_add_tensor_cuda",
     [_vp, ctypes.c_char_p, _u32, ctypes.POINTER(_u64), _size, _i32, _u64, _u64], _i32),
    ("plaid_serializer_set_tensor_origin", [_vp, ctypes.c_char_p, _u32, _u32, ctypes.c_char_p],
     _i32),
    ("plaid_serializer_set_metadata", [_vp, ctypes.c_char_p, ctypes.c_char_p], _i32),
    ("plaid_serializer_finish", [_vp], _i32),
    ("plaid_serializer_free", [_vp], None),
]


def bind(lib, names=None):
    """Give the functions of ``lib`` (a ``ctypes.CDLL``) their argument and result types:
    every function of `SIGNATURES`, or those of ``names``. Returns ``lib``."""
    wanted = None if names is None else set(names)
    for name, args, result in SIGNATURES:
        if wanted is None or name in wanted:
            function = getattr(lib, name)
            function.argtypes = args
            function.restype = result
    return lib

