"""Which Python runs the Batch and Training children, and with which environment.

Inside Slicer, ``sys.executable`` is ``PythonSlicer`` (``qSlicerCoreApplication`` sets it), a
CTKAppLauncher: it starts ``python-real`` as its own child, forwards no signal and reports any
abnormal end of its child as exit code 1. A job started through it could be neither stopped
nor diagnosed (an out-of-memory kill would read "exit code 1"). So, like Slicer's own CLI
module factory (``qSlicerCLIExecutableModuleFactory.cxx``: ``findExecutable("python-real")``),
children run ``python-real`` directly. Slicer's process environment (set by its launcher:
library paths, ``PYTHONHOME``, ``PYTHONPATH``) is what that interpreter needs, and children
inherit it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

__all__ = ["python_executable", "library_root", "child_environment", "REAL_PYTHON",
           "LAUNCHER"]

logger = logging.getLogger(__name__)

_EXE = ".exe" if os.name == "nt" else ""
#: The interpreter Slicer ships (``bin/python-real``; ``Contents/bin`` on macOS).
REAL_PYTHON = "python-real"
#: Slicer's Python launcher (a CTKAppLauncher); used only when python-real is not found.
LAUNCHER = "PythonSlicer"


def _inside_slicer() -> bool:
    """True inside the Slicer application (``slicer.app`` exists), not with slicer-core."""
    module = sys.modules.get("slicer")
    return module is not None and getattr(module, "app", None) is not None


def _slicer_home() -> str | None:
    module = sys.modules.get("slicer")
    app = getattr(module, "app", None) if module is not None else None
    home = getattr(app, "slicerHome", None) if app is not None else None
    return str(home) if home else None


def python_executable(
    inside_slicer: bool | None = None,
    which: Callable[[str], str | None] = shutil.which,
    executable: str | None = None,
    slicer_home: str | None = None,
) -> str:
    """The interpreter for child processes.

    Inside Slicer: ``python-real`` found on PATH (Slicer's launcher puts its ``bin`` folder
    there), else beside ``sys.executable`` (PythonSlicer), else in ``<slicerHome>/bin``
    (Linux, Windows; ``Slicer.app/Contents/bin`` on macOS, where slicerHome is ``Contents``);
    only if none exists, ``PythonSlicer`` with a warning (Stop still works through the stop
    file and the process group, but crashes read as exit code 1). Anywhere else (tests, a
    plain Python with slicer-core): ``sys.executable``.
    """
    executable = executable or sys.executable
    if inside_slicer is None:
        inside_slicer = _inside_slicer()
    if not inside_slicer:
        return executable
    home = slicer_home if slicer_home is not None else _slicer_home()
    found = which(REAL_PYTHON)
    if found:
        return found
    candidates = [Path(executable).parent / (REAL_PYTHON + _EXE)]
    if home:
        candidates.append(Path(home) / "bin" / (REAL_PYTHON + _EXE))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    launcher = which(LAUNCHER)
    sibling = Path(executable).parent / (LAUNCHER + _EXE)
    fallback = launcher or (str(sibling) if sibling.is_file() else executable)
    logger.warning("%s not found on PATH, beside %s or in %s/bin; using %s: Stop works, but a "
                   "crash of the job is reported only as exit code 1", REAL_PYTHON,
                   executable, home or "?", fallback)
    return fallback


def library_root() -> Path:
    """The folder that holds the ``SGPSAMLib`` package (found without importing it)."""
    spec = importlib.util.find_spec("SGPSAMLib")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve().parent
    # Running from source: the repository root is the parent of SGPSAM/.
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "SGPSAMLib" / "__init__.py").is_file():
        return candidate
    from SGPSAMLib.errors import SGPSAMError  # pragma: no cover - broken install

    raise SGPSAMError("cannot find the SGPSAMLib package; is the SGPSAM module installed "
                      "completely?")


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with SGPSAMLib's folder first on PYTHONPATH and
    unbuffered UTF-8 output, so JSON lines arrive as soon as they are printed."""
    env = dict(os.environ if base is None else base)
    root = str(library_root())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env
