"""Builds libplaid with cargo (from the repository this folder lives in) and ships it inside
the package, so that `pip install ./bindings/python` gives a working `import plaid`."""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class BuildWithCargo(build_py):
    """Run `cargo build --release --lib` and copy libplaid.so into the package."""

    def run(self):
        super().run()
        target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
        library = os.environ.get("PLAID_PREBUILT_LIB")
        if library is None:
            cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
            subprocess.check_call([cargo, "build", "--release", "--lib", "--locked"], cwd=ROOT)
            library = target / "release" / "libplaid.so"
        destination = Path(self.build_lib) / "plaid" / "libplaid.so"
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, destination)


class BinaryDistribution(Distribution):
    """The wheel holds a native library: it is platform-specific."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithCargo}, distclass=BinaryDistribution)
