"""The C++ engine consumer (examples/libtorch/load_into_libtorch.cpp): a LibTorch program,
built here against the headers and libraries of the installed torch wheel and the
installed plaid package's libplaid, loads a checkpoint written by transformers into
torch::Tensors it allocated; every tensor's bytes must equal the original's."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import plaid  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    from torch.utils import cpp_extension
    compiler = shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the test command installs g++)"
    folder = tmp_path_factory.mktemp("libtorch")
    out = folder / "load_into_libtorch"
    # The package ships libplaid.so; its SONAME, which the program will ask for, is
    # libplaid.so.2 (as an installed library names it).
    plaid_lib = folder / "lib"
    plaid_lib.mkdir()
    (plaid_lib / "libplaid.so.2").symlink_to(Path(plaid._lib.__file__).parent / "libplaid.so")
    torch_lib = cpp_extension.library_paths()[0]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               str(ROOT / "examples" / "libtorch" / "load_into_libtorch.cpp"),
               "-I", str(ROOT / "include"), "-I", str(ROOT / "bindings" / "cpp")]
    for folder in cpp_extension.include_paths():
        command += ["-isystem", folder]
    command += ["-o", str(out), str(plaid_lib / "libplaid.so.2"),
                f"-Wl,-rpath,{plaid_lib}", "-L", torch_lib, f"-Wl,-rpath,{torch_lib}",
                "-ltorch", "-ltorch_cpu", "-lc10"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def read_dump(path):
    out = {}
    with open(path, "rb") as f:
        while True:
            name = f.readline()
            if not name:
                return out
            dtype = f.readline().decode().strip()
            nbytes = int(f.readline())
            out[name.decode().rstrip("\n")] = (dtype, f.read(nbytes))


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "plaid"])
def test_a_libtorch_program_loads_a_transformers_checkpoint_into_its_tensors(
        program, tmp_path, layout):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    original = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path / "model"
    if layout == "sharded":
        model.save_pretrained(folder, max_shard_size="40KB")
        checkpoint = folder / "model.safetensors.index.json"
    else:
        model.save_pretrained(folder)
        checkpoint = folder / "model.safetensors"
    if layout == "plaid":
        import plaid.torch as pt
        pt.save_file(pt.load_file(checkpoint), tmp_path / "model.plaid")
        checkpoint = tmp_path / "model.plaid"
    dump = tmp_path / "dump"
    done = subprocess.run([str(program), str(checkpoint), str(dump)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "into torch::Tensors" in done.stdout
    loaded = read_dump(dump)
    # transformers ties nothing here: every tensor of the state dict is in the checkpoint.
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        dtype, data = loaded[name]
        assert dtype == "bf16", name
        assert data == tensor.view(torch.uint8).numpy().tobytes(), name


def test_the_libtorch_program_reports_a_damaged_checkpoint(program, tmp_path):
    import plaid.torch as pt
    path = tmp_path / "w.plaid"
    pt.save_file({"w": torch.arange(4096, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    with plaid.Reader(str(path)) as reader:
        data[reader.find("w").offset + 8] ^= 1
    path.write_bytes(bytes(data))
    done = subprocess.run([str(program), str(path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "PLAID_ERR_CHECKSUM" in done.stderr and "'w'" in done.stderr and str(path) in \
        done.stderr
