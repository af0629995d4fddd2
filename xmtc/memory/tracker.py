"""Live tensor bytes, op by op, on any device: the CPU twin of the CUDA allocator's counters.

`LiveTensorTracker` is a TorchDispatchMode: every storage an op returns is counted until it is
freed, so its peak is the largest sum of live tensor storages (what `torch.cuda.max_memory_allocated`
reports on CUDA, without allocator rounding). Each storage gets a component: the ones `classify`
finds on the engine (weights, gradients, optimizer state, DeepSpeed buckets) by what they are, the
rest by the innermost frame that created them: the model's code and autograd make activations,
DeepSpeed and torch.optim make temporaries, ZeRO-3's parameter gathering makes weights.
"""

from __future__ import annotations

import sys

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

COMPONENTS = ("weights", "grads", "optimizer", "activations", "temporaries")

def _package_dir(name: str) -> str | None:
    """The real directory of package `name` (found without importing it), with a trailing separator."""
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(os.path.realpath(list(spec.submodule_search_locations)[0]), "")


def _origins() -> tuple[tuple[str, str], ...]:
    """Directory -> component of a storage nothing else identifies (first match wins, most specific first).
    Real package directories, not path fragments: a checkout named xmtc/ with its .venv inside would
    otherwise make every frame of torch and DeepSpeed look like the model's."""
    import os

    deepspeed, torch_dir, xmtc_dir, kernels = (_package_dir(n) for n in ("deepspeed", "torch", "xmtc", "kernels"))
    pairs = []
    if deepspeed:
        pairs += [(os.path.join(deepspeed, "runtime", "zero", "partition_parameters.py"), "weights"), (deepspeed, "temporaries")]
    if torch_dir:
        pairs += [(os.path.join(torch_dir, "optim", ""), "temporaries"), (os.path.join(torch_dir, "autograd", ""), "activations")]
    pairs += [(d, "activations") for d in (xmtc_dir, kernels) if d]
    return tuple(pairs)


_ORIGINS: tuple[tuple[str, str], ...] | None = None
_MEMORY_DIR = None
_FILE_COMPONENT: dict[str, str | None] = {}
"""co_filename -> component (None: no marker; the frame is skipped), resolved once per file."""


def _file_component(filename: str) -> str | None:
    try:
        return _FILE_COMPONENT[filename]
    except KeyError:
        pass
    import os

    global _ORIGINS, _MEMORY_DIR
    if _ORIGINS is None:
        _ORIGINS = _origins()
        _MEMORY_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "")
    real = os.path.realpath(filename)
    component = None
    if not real.startswith(_MEMORY_DIR):  # the tracker's own frames decide nothing
        component = next((c for prefix, c in _ORIGINS if real == prefix or real.startswith(prefix)), None)
    _FILE_COMPONENT[filename] = component
    return component


def _origin() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        component = _file_component(frame.f_code.co_filename)
        if component is not None:
            return component
        frame = frame.f_back
    return "activations"


def _storage(t: torch.Tensor):
    if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.is_sparse:
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


class LiveTensorTracker(TorchDispatchMode):
    """Counts live storages; remembers per phase the peak and which storages made it.

    A storage's component is settled late: the gradient that the fused loss allocates in the
    forward is only known as a gradient when autograd hands it over in the backward, so each
    phase's peak is attributed with everything learnt by the time `peak_parts` is asked.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int, int]] = {}
        """storage address -> (weak reference, bytes, serial); serials outlive reused addresses."""
        self.origin: dict[int, str] = {}
        self.known: dict[int, str] = {}
        """serial -> component, for storages identified by `identify` (overrides the origin)."""
        self.serials = 0
        self.current = 0
        self.phase = "idle"
        self.peaks: dict[str, int] = {}
        self._peak_live: dict[str, list[tuple[int, int]]] = {}

    def add(self, t: torch.Tensor, component: str | None = None) -> int | None:
        s = _storage(t)
        if s is None:
            return None
        key = s._cdata
        if key not in self.live:
            self.serials += 1
            self.live[key] = (StorageWeakRef(s), s.nbytes(), self.serials)
            self.origin[self.serials] = component or _origin()
            self.current += s.nbytes()
        return self.live[key][2]

    def purge(self) -> None:
        for key in [k for k, (ref, _, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def identify(self, t: torch.Tensor, component: str) -> None:
        """Mark the storage of `t` as `component` (and count it if it was not yet)."""
        serial = self.add(t, component)
        if serial is not None:
            self.known[serial] = component

    def peak_parts(self, phase: str) -> dict[str, int]:
        """Bytes per component at the peak of `phase`."""
        out = dict.fromkeys(COMPONENTS, 0)
        for serial, nbytes in self._peak_live.get(phase, []):
            out[self.known.get(serial, self.origin[serial])] += nbytes
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.purge()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        if self.current > self.peaks.get(self.phase, -1):
            self.peaks[self.phase] = self.current
            self._peak_live[self.phase] = [(serial, nbytes) for _, nbytes, serial in self.live.values()]
        return out


def _walk(obj, path: str, found: dict[int, tuple[torch.Tensor, str]], depth: int, seen: set[int]) -> None:
    """Tensors reachable from a DeepSpeed/torch optimizer object, with their attribute path."""
    if isinstance(obj, torch.Tensor):
        found.setdefault(id(obj), (obj, path))
        if obj.grad is not None:
            found.setdefault(id(obj.grad), (obj.grad, path + ".grad"))
        return
    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            _walk(v, f"{path}[{k if isinstance(k, (str, int)) else 'state'}]", found, depth + 1, seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]", found, depth + 1, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("deepspeed", "torch.optim")):
        for k, v in list(vars(obj).items()):
            _walk(v, f"{path}.{k}", found, depth + 1, seen)


def optimizer_component(path: str) -> str:
    """Component of a tensor found at `path` on the optimizer (DeepSpeed's own attribute names)."""
    p = path.lower()
    if "grad" in p:
        return "grads"
    if "ipg" in p or "bucket" in p:
        return "temporaries"
    if "fp32" in p or "master" in p or ".state[" in p or "optimizer.param_groups" in p:
        return "optimizer"
    if "bit16" in p or "fp16" in p or "lp_param" in p:
        return "weights"
    return "temporaries"


def classify(tracker: LiveTensorTracker, model: torch.nn.Module, optimizer) -> None:
    """Identify the storages of weights, gradients, optimizer state and buckets that are live now."""
    found: dict[int, tuple[torch.Tensor, str]] = {}
    _walk(optimizer, "optimizer", found, 0, set())
    for t, path in found.values():
        tracker.identify(t, optimizer_component(path))
    for p in model.parameters():
        tracker.identify(p, "weights")
        if getattr(p, "ds_tensor", None) is not None:
            tracker.identify(p.ds_tensor, "weights")
        if p.grad is not None:
            tracker.identify(p.grad, "grads")


def watch_gradients(tracker: LiveTensorTracker, model: torch.nn.Module) -> list:
    """Hooks that mark every gradient autograd hands a parameter (before DeepSpeed moves it)."""

    def hook(grad):
        tracker.identify(grad, "grads")
        return grad

    return [p.register_hook(hook) for p in model.parameters() if p.requires_grad]
