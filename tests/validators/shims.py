"""Import shims some validators need on Python 3.11 without a GPU (research notes: emitters.md, "Shims"):

- `stub_triton()`: megatron-core, torchtitan and SGLang import ``triton`` at import time (kernels they never
  run while parsing arguments); a permissive stand-in module serves ``triton`` and ``triton.*`` after torch
  has cached that real triton is absent (so torch itself never sees the stand-in).
- `load_megatron(arch)`: megatron-core ≥ 0.17 ships ``megatron/training/arguments.py`` but only as a cp312
  wheel; `install.sh` unpacks it into ``.validators/megatron``. It uses ``typing.override`` (3.12) and asks
  the GPU's architecture and Transformer Engine's version, which are answered here for the target GPU.
- `deepspeed_config(data, dp)`: DeepSpeed's own `DeepSpeedConfig` parse of a ds_config dict for a
  data-parallel size, without a process group (a Megatron-style mpu answers the size).
- `load_verl()`: verl 0.9.1 unpacked by `install.sh` (its wheel pins an older transformers and installs
  top-level ``tests`` and ``scripts`` packages), imported from the end of sys.path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import typing
from pathlib import Path

VALIDATORS = Path(__file__).resolve().parents[2] / ".validators"
"""Where `install.sh` puts what pip cannot install here (unpacked wheels)."""


class _Anything:
    """Any attribute, call, item or base class; a bare decorator returns the function unchanged."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return _Anything()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __getitem__(self, key):
        return _Anything()

    def __mro_entries__(self, bases):
        return (object,)


def _module_getattr(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Anything()


class _TritonFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = _module_getattr
        module.__path__ = []
        module.__version__ = "3.0.0"
        if spec.name == "triton":
            module.jit = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
            module.autotune = lambda *args, **kwargs: (lambda f: f)
            module.heuristics = lambda *args, **kwargs: (lambda f: f)
        return module

    def exec_module(self, module):
        pass


def stub_triton() -> None:
    """Serve a stand-in ``triton`` (idempotent; a real triton, when installed, is left alone)."""
    if any(isinstance(finder, _TritonFinder) for finder in sys.meta_path):
        return
    import torch.utils._triton as torch_triton

    if torch_triton.has_triton_package():
        return
    import torch._dynamo  # noqa: F401  (import the torch modules that probe triton before the stand-in exists)
    import torch._inductor.runtime.triton_heuristics  # noqa: F401
    import torch.utils.flop_counter  # noqa: F401

    torch_triton.has_triton()
    sys.meta_path.insert(0, _TritonFinder())


def load_megatron(compute_capability: str):
    """megatron.training.arguments from the unpacked wheel, answering for a GPU of ``compute_capability``
    (e.g. "9.0") with Transformer Engine present. Raises ImportError when `install.sh` has not run."""
    root = VALIDATORS / "megatron"
    if not (root / "megatron" / "training" / "arguments.py").exists():
        raise ImportError(f"megatron-core is not unpacked under {root} (run tests/validators/install.sh)")
    if not hasattr(typing, "override"):
        import typing_extensions

        typing.override = typing_extensions.override
    stub_triton()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import torch
    from megatron.training import arguments

    major, minor = (int(part) for part in compute_capability.split("."))
    arguments.get_device_arch_version = lambda: major
    arguments.is_te_min_version = lambda *args, **kwargs: True
    torch.cuda.get_device_capability = lambda *args, **kwargs: (major, minor)
    return arguments


def load_verl():
    """The ``verl`` package unpacked by `install.sh` (last on sys.path: its wheel also holds top-level
    ``tests`` and ``scripts`` packages, which must not shadow this repository's). Raises ImportError when
    `install.sh` has not run or what verl imports is missing."""
    root = VALIDATORS / "verl"
    if not (root / "verl" / "utils" / "config.py").exists():
        raise ImportError(f"verl is not unpacked under {root} (run tests/validators/install.sh)")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    import verl

    return verl


class _DataParallelSize:
    """The data-parallel size DeepSpeed's batch rule uses (Megatron-style mpu interface)."""

    def __init__(self, dp: int):
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


def deepspeed_config(data: dict, dp: int):
    """`deepspeed.runtime.config.DeepSpeedConfig` of ``data`` at ``dp`` data-parallel ranks (skips the test
    when DeepSpeed is not installed)."""
    import copy

    import pytest

    dsc = pytest.importorskip("deepspeed.runtime.config")
    original = dsc.dist.get_rank
    dsc.dist.get_rank = lambda *a, **k: 0  # no process group: DeepSpeed asks for the rank first
    try:
        return dsc.DeepSpeedConfig(copy.deepcopy(data), mpu=_DataParallelSize(dp))
    finally:
        dsc.dist.get_rank = original
