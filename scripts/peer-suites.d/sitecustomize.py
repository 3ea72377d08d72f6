"""Loaded at interpreter start-up by scripts/peer-suites (this folder is first on PYTHONPATH).

1. PEER_SUITES_EXTRA_PATH (os.pathsep-separated) is appended to the END of sys.path, so the
   peers' test-only dependencies installed there never shadow a package of the environment.
2. With PLAID_SHIM=1, `import tensorizer` / `import safetensors` (and their submodules) load
   the real peer module and then lay plaid's same-named module over it: every public name of
   `plaid.<name>` (its __all__, else the names not starting with "_"; modules excepted) is set
   on the real module. So `from tensorizer import TensorSerializer` gets plaid's class while
   anything plaid does not provide still comes from the peer. A missing `plaid.<name>`, or one
   that fails to import, leaves the peer module as it is (a failure is printed on stderr).

The peer's own value of each name replaced is kept in the module's `_plaid_shim_originals`
dict, so plaid code importing the peer after the swap can still reach, say, the real
`tensorizer.CryptographyError`.
"""

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
_PEERS = ("tensorizer", "safetensors")


def _peer_of(fullname):
    """The peer module name for `fullname` (a peer module or plaid's counterpart), or None."""
    name = fullname[len("plaid."):] if fullname.startswith("plaid.") else fullname
    return name if name.split(".")[0] in _PEERS else None


def _ready(module, just_done=()):
    """Whether `module` is fully imported (`just_done`: modules whose exec just ended but whose
    import machinery still marks them as initializing)."""
    if module is None:
        return False
    return module in just_done or not getattr(module.__spec__, "_initializing", False)


def _public_names(module):
    """{name: value} of the public names of `module` that are not modules. A name whose
    lookup raises (say, a lazy attribute that fails to import) is left out, and said."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    found = {}
    for name in names:
        try:
            value = getattr(module, name)
        except AttributeError:  # listed in __all__ but not there
            continue
        except Exception as e:
            _warn(f"{module.__name__}.{name}", e, "left out: looking it up raised")
            continue
        if not isinstance(value, types.ModuleType):
            found[name] = value
    return found


def _lay_over(peer_name, just_done=()):
    """Copy plaid's public names onto the peer module, once both are fully imported."""
    peer = sys.modules.get(peer_name)
    ours = sys.modules.get("plaid." + peer_name)
    if not (_ready(peer, just_done) and _ready(ours, just_done)):
        return
    originals = peer.__dict__.setdefault("_plaid_shim_originals", {})
    for name, value in _public_names(ours).items():
        if name not in originals and name in peer.__dict__ and peer.__dict__[name] is not value:
            originals[name] = peer.__dict__[name]
        setattr(peer, name, value)


_swept = set()  # peer modules whose plaid counterpart was looked for
_failed = set()  # plaid modules that failed to import (their submodules are not tried)


def _sweep(top, just_done=()):
    """For every loaded module of peer package `top` not yet seen, import plaid's counterpart
    (if there is one) and lay it over. Waits while either side's package is half imported, so
    that plaid's modules are imported lazily, after the peer's, and see it complete."""
    ours_top = sys.modules.get("plaid." + top)
    if not _ready(sys.modules.get(top), just_done) or (
            ours_top is not None and not _ready(ours_top, just_done)):
        return
    for name in sorted(n for n in list(sys.modules) if n == top or n.startswith(top + ".")):
        if name in _swept or not _ready(sys.modules[name], just_done):
            continue
        _swept.add(name)
        target = "plaid." + name
        if any(target.startswith(f"{bad}.") for bad in _failed):
            continue
        try:
            importlib.import_module(target)
        except ModuleNotFoundError as e:  # plaid has no such module: the peer's stays
            if e.name != target and not target.startswith(f"{e.name}."):
                _warn(target, e)
            continue
        except Exception as e:  # a broken plaid module: the peer's stays as it is
            _failed.add(target)
            _warn(target, e)
            continue
        _lay_over(name, just_done)


def _warn(target, error, what="not used: importing it raised"):
    message = str(error).splitlines()[0] if str(error) else ""
    line = f"plaid shim: {target} {what} {type(error).__name__}: {message}"
    print(line, file=sys.stderr)
    if os.environ.get("PEER_SUITES_SHIM_LOG"):  # pytest hides stderr; scripts/peer-suites
        with open(os.environ["PEER_SUITES_SHIM_LOG"], "a") as f:
            print(line, file=f)


class _Loader(importlib.abc.Loader):
    """Wraps the real loader: runs the module, then lays plaid's names over the peer's."""

    def __init__(self, real, fullname, peer_name):
        self.real, self.fullname, self.peer_name = real, fullname, peer_name

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        self.real.exec_module(module)
        top = self.peer_name.split(".")[0]
        if self.fullname.startswith("plaid."):
            _lay_over(self.peer_name, (module,))
            if self.peer_name != top:
                return
        _sweep(top, (module,))

    def __getattr__(self, name):  # get_resource_reader, is_package, get_code ...
        return getattr(self.real, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        peer_name = _peer_of(fullname)
        if peer_name is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname, peer_name)
        return spec


def _chain_other_sitecustomize():
    """Run a sitecustomize that this one shadows, if the environment has one."""
    path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(types.ModuleType("_shadowed_sitecustomize"))


for _p in filter(None, os.environ.get("PEER_SUITES_EXTRA_PATH", "").split(os.pathsep)):
    if _p not in sys.path:
        sys.path.append(_p)

if os.environ.get("PLAID_SHIM") == "1":
    sys.meta_path.insert(0, _Finder())

_chain_other_sitecustomize()
