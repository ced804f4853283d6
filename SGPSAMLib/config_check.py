"""What a model config builds, found without allocating it (a file's stored config is untrusted).

:func:`declared_shapes` builds ``SGPSAMModel(config)`` on PyTorch's meta device, which holds
shapes but no memory, for any config the model class accepts (no list of expected keys to keep
up to date when the architecture grows). Construction is watched by torch's global
registration hooks and stopped as soon as it declares more than the parameter limit
(``SGPSAM_MAX_MODEL_PARAMETERS``, default 1e9) or far more tensors than the file holds, so a
2 kB file declaring a 16384-wide or million-block model costs nothing.

Should the meta build fail for a reason that is not the config's (a meta kernel missing, an
optional import torch makes lazily), the model is built on the CPU instead under the same
limits, with every tensor factory call (``torch.empty``, ``zeros``, ``randn`` ...) checked
*before* it allocates.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import torch
from torch.nn.modules import module as torch_module
from torch.overrides import TorchFunctionMode

from .config import ModelConfig
from .errors import CheckpointError
from .modeling import SGPSAMModel

__all__ = ["declared_shapes", "max_model_parameters", "MAX_PARAMETERS_ENV",
           "DEFAULT_MAX_PARAMETERS"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# SAM-Med3D ViT-B has 1.0e8 parameters; a stored config may declare up to this many.
MAX_PARAMETERS_ENV = "SGPSAM_MAX_MODEL_PARAMETERS"
DEFAULT_MAX_PARAMETERS = 1_000_000_000


def max_model_parameters() -> int:
    """Most parameters a checkpoint's config may declare: ``SGPSAM_MAX_MODEL_PARAMETERS``."""
    text = os.environ.get(MAX_PARAMETERS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PARAMETERS
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise CheckpointError(f"{MAX_PARAMETERS_ENV}={text!r}: expected a positive number of "
                              f"parameters (default {DEFAULT_MAX_PARAMETERS:,})")
    return value


class _Exceeded(Exception):
    """Raised inside model construction: the config declares more than the limits allow."""


class _Budget:
    """Counts what a construction registers (this thread only) and stops it at the limits."""

    def __init__(self, max_values: int, max_tensors: int) -> None:
        self.max_values, self.max_tensors = max_values, max_tensors
        self.owner = threading.get_ident()
        self.values = self.tensors = self.modules = self.requested = 0

    def tensor(self, tensor: Any) -> None:
        if threading.get_ident() != self.owner or tensor is None:
            return
        self.values += int(tensor.numel())
        self.tensors += 1
        if self.values > self.max_values:
            raise _Exceeded("values")
        if self.tensors > self.max_tensors:
            raise _Exceeded("tensors")

    def module(self) -> None:
        if threading.get_ident() == self.owner:
            self.modules += 1
            if self.modules > 4 * self.max_tensors:
                raise _Exceeded("tensors")

    def request(self, numel: int) -> None:
        """A factory call about to allocate ``numel`` values (CPU fallback only)."""
        self.requested += numel
        if numel > self.max_values or self.requested > 4 * self.max_values:
            raise _Exceeded("values")

    @contextmanager
    def watching(self) -> Iterator[None]:
        handles = [
            torch_module.register_module_parameter_registration_hook(
                lambda m, n, t: self.tensor(t)),
            torch_module.register_module_buffer_registration_hook(
                lambda m, n, t: self.tensor(t)),
            torch_module.register_module_module_registration_hook(
                lambda m, n, s: self.module()),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class _ShapesOnly(TorchFunctionMode):
    """On the meta device random initialisation is skipped: only shapes matter, and torch's
    Python meta kernels for samplers such as ``normal_`` are not needed."""

    _SAMPLERS = frozenset({"normal_", "uniform_", "random_", "bernoulli_", "exponential_",
                           "log_normal_", "cauchy_", "geometric_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self._SAMPLERS and args and \
                isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
              torch.randint, torch.empty_strided, torch.eye, torch.normal}


def _size_numel(size: Any) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list, torch.Size)) and all(isinstance(s, int) for s in size):
        return math.prod(size)
    return None


def _requested_numel(func: Any, args: tuple, kwargs: dict) -> int | None:
    """How many values a factory call is about to allocate (None: cannot tell)."""
    if "size" in kwargs:
        return _size_numel(kwargs["size"])
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n")
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
        return n * m if isinstance(n, int) and isinstance(m, int) else None
    if func in (torch.full, torch.empty_strided):
        return _size_numel(args[0]) if args else None
    if func is torch.randint:
        return _size_numel(args[-1]) if args else None
    if func is torch.normal:
        return _size_numel(args[2]) if len(args) > 2 else None
    if len(args) == 1:
        return _size_numel(args[0])
    return _size_numel(tuple(args)) if args else None


class _GuardFactories(TorchFunctionMode):
    """CPU fallback: every tensor factory call is checked against the budget first."""

    def __init__(self, budget: _Budget) -> None:
        super().__init__()
        self.budget = budget

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES:
            numel = _requested_numel(func, args, kwargs)
            if numel is not None:
                self.budget.request(int(numel))
        return func(*args, **kwargs)


def declared_shapes(config: ModelConfig, path: PathLike, file_tensors: int
                    ) -> dict[str, torch.Size]:
    """State-dict shapes of ``SGPSAMModel(config)``, found within the limits (module docstring).

    Raises:
        CheckpointError (naming ``path``): more than :func:`max_model_parameters` values, more
            than ``4 * file_tensors + 1024`` tensors, or a config the model cannot build.
    """
    path = Path(path)
    max_values = max_model_parameters()
    max_tensors = 4 * file_tensors + 1024
    try:
        budget = _Budget(max_values, max_tensors)
        with budget.watching():
            try:
                with torch.device("meta"), _ShapesOnly():
                    model = SGPSAMModel(config)
            except _Exceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - maybe the meta device, not the config
                log.debug("meta build of %s failed (%s: %s); checking on the CPU", path,
                          type(exc).__name__, exc)
                model = None
        if model is None:
            budget = _Budget(max_values, max_tensors)
            with budget.watching(), _GuardFactories(budget), torch.device("cpu"):
                model = SGPSAMModel(config)
        return {k: v.shape for k, v in model.state_dict().items()}
    except _Exceeded as exc:
        if str(exc) == "values":
            raise CheckpointError(
                f"{path}: the stored model config ('{config.preset}') declares more than "
                f"{max_values:,} parameters; refusing to build it (if this is a genuine "
                f"model, raise {MAX_PARAMETERS_ENV})") from None
        raise CheckpointError(
            f"{path}: the stored model config ('{config.preset}') builds more than "
            f"{max_tensors:,} tensors, far more than the file holds; it does not describe "
            "these weights") from None
    except Exception as exc:  # noqa: BLE001 - a config the model class cannot build
        raise CheckpointError(f"{path}: the stored model config ('{config.preset}') cannot be "
                              f"built: {type(exc).__name__}: {exc}") from None

