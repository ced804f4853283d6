"""Python dependencies of SGP-SAM inside 3D Slicer: what is missing and how to install it.

Why a plan and injected installers: inside Slicer, PyTorch must come from the PyTorch
extension (``PyTorchUtilsLogic().installTorch``, which uses light-the-torch to pick the CUDA
build that matches the NVIDIA driver, or the CPU build) and never from a plain ``pip install``,
which would fetch the CPU-only or a mismatched CUDA wheel from PyPI (a frequent complaint with
Slicer AI extensions). It is installed first; then MONAI and tqdm go through
``slicer.util.pip_install`` with the already installed torch, numpy and SimpleITK pinned to
their exact versions, so pip cannot replace the packages Slicer or the PyTorch extension own.
SimpleITK and numpy are part of Slicer and are never installed here.

This module is Qt-free and imports nothing heavy (torch is never imported: versions come from
``importlib.metadata``); the Widget shows :func:`confirmation_text` in a dialog and only then
calls :func:`install_missing` with ``slicer.util.pip_install`` and a wrapper around
``installTorch``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from SGPSAMLib.errors import SGPSAMError

__all__ = [
    "Requirement", "REQUIREMENTS", "ACTIONS", "requirements_for", "MissingDependency",
    "InstallPlan", "InstallResult",
    "DependencyError", "check_dependencies", "plan_installation", "install_missing",
    "confirmation_text", "installed_version", "parse_version", "version_at_least",
    "UNKNOWN_VERSION",
]

log = logging.getLogger(__name__)

#: Reported as the found version when a module imports but has no package metadata.
UNKNOWN_VERSION = "unknown"

VersionOf = Callable[[str], Optional[str]]

# How a requirement is satisfied.
_VIA_PYTORCH = "pytorch"  # the PyTorch extension's installer
_VIA_PIP = "pip"          # slicer.util.pip_install
_VIA_SLICER = "slicer"    # bundled with 3D Slicer: cannot be installed from here


@dataclass(frozen=True)
class Requirement:
    """One Python package SGP-SAM needs (``name`` as pip and importlib.metadata spell it)."""

    name: str
    minimum: str | None
    how: str
    title: str
    import_name: str

    @property
    def required(self) -> str:
        return f">={self.minimum}" if self.minimum else "any version"

    @property
    def spec(self) -> str:
        """A pip requirement string, e.g. ``monai>=1.3``."""
        return f"{self.name}>={self.minimum}" if self.minimum else self.name


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "2.1", _VIA_PYTORCH, "PyTorch", "torch"),
    Requirement("monai", "1.3", _VIA_PIP, "MONAI", "monai"),
    Requirement("SimpleITK", None, _VIA_SLICER, "SimpleITK", "SimpleITK"),
    Requirement("numpy", None, _VIA_SLICER, "NumPy", "numpy"),
    Requirement("tqdm", None, _VIA_PIP, "tqdm", "tqdm"),
)


#: What each action imports. Segment runs the model in Slicer's process (torch, numpy); Batch
#: runs ``sgpsam batch`` (+ SimpleITK for the files; with ``--json-progress`` tqdm is never
#: imported); Training runs ``sgpsam train`` (+ MONAI: losses and intensity augmentation).
#: ``Testing/slicer/test_dependencies.py`` runs each action with the other packages blocked.
ACTIONS: dict[str, tuple[str, ...]] = {
    "segment": ("torch", "numpy"),
    "batch": ("torch", "numpy", "SimpleITK"),
    "train": ("torch", "monai", "numpy", "SimpleITK"),
}


def requirements_for(action: str) -> tuple[Requirement, ...]:
    """The requirements of one action ("segment", "batch" or "train"), in install order."""
    try:
        names = ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}; expected one of "
                         f"{', '.join(ACTIONS)}") from None
    return tuple(r for r in REQUIREMENTS if r.name in names)


@dataclass(frozen=True)
class MissingDependency:
    """A requirement that is absent (``found`` None) or too old (``found`` its version)."""

    name: str
    required: str
    found: str | None
    how: str
    title: str = ""

    @property
    def message(self) -> str:
        state = "not installed" if self.found is None else f"version {self.found} is too old"
        via = {_VIA_PYTORCH: "installed through the PyTorch extension",
               _VIA_PIP: "installed with pip",
               _VIA_SLICER: "part of 3D Slicer; reinstall 3D Slicer"}.get(self.how, self.how)
        return f"{self.title or self.name} {self.required}: {state} ({via})"


@dataclass(frozen=True)
class InstallPlan:
    """What :func:`install_missing` will do, in order."""

    torch: str | None                    # version requirement for the torch installer
    pip: tuple[str, ...]                 # requirement strings for one pip call
    manual: tuple[MissingDependency, ...]  # cannot be installed from Slicer


@dataclass(frozen=True)
class InstallResult:
    """What was installed; ``restart_required`` when an already imported package changed."""

    installed: tuple[str, ...]
    restart_required: bool


class DependencyError(SGPSAMError):
    """Dependencies cannot be installed, or are still missing after installing."""


# ------------------------------------------------------------------------------ versions
_VERSION_RE = re.compile(
    r"""^\s*v?
    (?:(?P<epoch>\d+)!)?
    (?P<release>\d+(?:\.\d+)*)
    (?:[-_.]?(?P<pre>a|alpha|b|beta|c|rc|pre|preview)[-_.]?(?P<pre_n>\d*))?
    (?:(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post_n>\d*))|(?:-(?P<post_implicit>\d+)))?
    (?:[-_.]?(?P<dev>dev)[-_.]?(?P<dev_n>\d*))?
    (?:\+[a-z0-9.\-_]*)?
    \s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_INF = float("inf")


def parse_version(text: str) -> tuple | None:
    """A sort key for a PEP 440 version (pre, post, dev and local parts), or None.

    ``2.1.0+cu121`` == ``2.1``; ``2.1.0rc1`` < ``2.1``; ``2.1.dev0`` < ``2.1a1``;
    ``2.1.post1`` > ``2.1``. Local labels (``+cu121``) are ignored.
    """
    match = _VERSION_RE.match(text or "")
    if match is None:
        return None
    release = [int(part) for part in match.group("release").split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    has_post = match.group("post_n") is not None or match.group("post_implicit") is not None
    has_dev = match.group("dev") is not None
    if match.group("pre"):
        pre: tuple = (_PRE_RANK[match.group("pre").lower()], int(match.group("pre_n") or 0))
    elif has_dev and not has_post:
        pre = (-1, 0)  # X.devN sorts before every pre-release of X
    else:
        pre = (3, 0)  # a final release
    if has_post:
        post: float = int(match.group("post_n") or match.group("post_implicit") or 0)
    else:
        post = -1
    dev: float = int(match.group("dev_n") or 0) if has_dev else _INF
    return (int(match.group("epoch") or 0), tuple(release), pre, post, dev)


def version_at_least(found: str, minimum: str) -> bool:
    """``found >= minimum`` in PEP 440 order; True when either cannot be parsed (log only)."""
    have, need = parse_version(found), parse_version(minimum)
    if have is None or need is None:
        log.info("cannot compare version %r with %r; assuming it is recent enough",
                 found, minimum)
        return True
    return have >= need


def installed_version(requirement: Requirement) -> str | None:
    """Installed version from package metadata; :data:`UNKNOWN_VERSION` when the module is
    importable without metadata; None when absent. Never imports the package."""
    try:
        return importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec(requirement.import_name)
    except (ImportError, ValueError):
        spec = None
    return UNKNOWN_VERSION if spec is not None else None


def _version_getter(version_of: VersionOf | None) -> Callable[[Requirement], str | None]:
    if version_of is None:
        return installed_version
    return lambda requirement: version_of(requirement.name)


# ---------------------------------------------------------------------------------- checks
def check_dependencies(requirements: Sequence[Requirement] = REQUIREMENTS,
                       version_of: VersionOf | None = None) -> list[MissingDependency]:
    """The requirements that are absent or too old, in installation order.

    ``version_of(name) -> version or None`` replaces the metadata lookup (tests; a Slicer
    without metadata for a bundled package).
    """
    get = _version_getter(version_of)
    problems = []
    for requirement in requirements:
        found = get(requirement)
        if found is not None and (requirement.minimum is None or found == UNKNOWN_VERSION
                                  or version_at_least(found, requirement.minimum)):
            continue
        problems.append(MissingDependency(requirement.name, requirement.required, found,
                                          requirement.how, requirement.title))
    return problems


def plan_installation(problems: Sequence[MissingDependency]) -> InstallPlan:
    """Split the problems by installer: torch first, then one pip call, the rest is manual."""
    torch = next((p.required for p in problems if p.how == _VIA_PYTORCH), None)
    if torch == "any version":
        torch = ""
    pip = tuple(p.name + (p.required if p.required.startswith(">=") else "")
                for p in problems if p.how == _VIA_PIP)
    manual = tuple(p for p in problems if p.how not in (_VIA_PYTORCH, _VIA_PIP))
    return InstallPlan(torch=torch, pip=pip, manual=manual)


def confirmation_text(problems: Sequence[MissingDependency]) -> str:
    """What the Widget's confirmation dialog says before anything is installed."""
    if not problems:
        return "All Python packages SGP-SAM needs are installed."
    plan = plan_installation(problems)
    lines = ["SGP-SAM needs these Python packages:", *(f"  - {p.message}" for p in problems)]
    if plan.manual:
        lines.append("Some of them are part of 3D Slicer itself and cannot be installed here; "
                     "please reinstall 3D Slicer.")
        return "\n".join(lines)
    if plan.torch is not None:
        lines.append("PyTorch is installed by the PyTorch extension, which picks the build "
                     "that matches your NVIDIA driver (or the CPU build); this downloads up "
                     "to a few GB and can take several minutes.")
    if plan.pip:
        lines.append(f"Then pip installs: {' '.join(plan.pip)}.")
    lines.append("Slicer may be unresponsive while installing. Install now?")
    return "\n".join(lines)


def install_missing(problems: Sequence[MissingDependency], pip_install: Callable[[list], Any],
                    torch_installer: Callable[[str], Any] | None,
                    version_of: VersionOf | None = None,
                    requirements: Sequence[Requirement] = REQUIREMENTS) -> InstallResult:
    """Install what :func:`check_dependencies` reported; call only after the user agreed.

    Args:
        problems: from :func:`check_dependencies`.
        pip_install: called once with a list of requirement strings (``slicer.util.pip_install``
            accepts a list); torch and the Slicer-owned packages already present are pinned
            (``torch==2.4.1+cu121``) so pip keeps them.
        torch_installer: called with a version requirement such as ``">=2.1"``; in Slicer
            ``lambda req: PyTorchUtilsLogic().installTorch(askConfirmation=False,
            torchVersionRequirement=req)``. It returns the torch module, or None when cancelled
            or failed. None when the PyTorch extension is not installed.
        version_of: as in :func:`check_dependencies` (re-checked after each step).

    Raises:
        DependencyError: a Slicer-owned package is missing (nothing is installed then), no
            PyTorch installer, an installer failed or was cancelled, or something is still
            missing afterwards.
    """
    plan = plan_installation(problems)
    if plan.manual:
        raise DependencyError("cannot install " + "; ".join(p.message for p in plan.manual))
    get = _version_getter(version_of)
    by_name = {r.name: r for r in requirements}
    installed: list[str] = []
    restart = any(p.found is not None and p.name in by_name
                  and by_name[p.name].import_name in sys.modules for p in problems)

    if plan.torch is not None:
        if torch_installer is None:
            raise DependencyError(
                f"PyTorch {plan.torch or ''} is needed: install the 'PyTorch' extension from "
                "the Extensions Manager, restart 3D Slicer and try again")
        try:
            result = torch_installer(plan.torch)
        except Exception as exc:
            raise DependencyError(f"installing PyTorch {plan.torch} failed: {exc}") from exc
        if result is None or result is False:
            raise DependencyError("PyTorch was not installed (cancelled or failed); install it "
                                  "in the PyTorch Utils module, then try again")
        importlib.invalidate_caches()
        still = check_dependencies([by_name["torch"]], version_of)
        if still:
            raise DependencyError(f"after installing, {still[0].message}; restart 3D Slicer "
                                  "and check the PyTorch Utils module")
        installed.append("torch")

    if plan.pip:
        pins = []
        for requirement in requirements:
            if requirement.how in (_VIA_PYTORCH, _VIA_SLICER):
                version = get(requirement)
                if version and version != UNKNOWN_VERSION:
                    pins.append(f"{requirement.name}=={version}")
        arguments = [*plan.pip, *pins]
        log.info("pip install %s", " ".join(arguments))
        try:
            pip_install(arguments)
        except Exception as exc:
            raise DependencyError(f"pip install {' '.join(arguments)} failed: {exc}") from exc
        installed.extend(spec.split(">=")[0] for spec in plan.pip)

    importlib.invalidate_caches()
    remaining = check_dependencies(requirements, version_of)
    if remaining:
        raise DependencyError("still missing after installing: "
                              + "; ".join(p.message for p in remaining))
    return InstallResult(installed=tuple(installed), restart_required=restart)
