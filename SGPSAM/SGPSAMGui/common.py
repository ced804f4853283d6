"""What the three panels share: calling the Logic with a clear error dialog, and the
dependency check of an action (ask, then install)."""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

import slicer

from SGPSAMLib.errors import SGPSAMError

__all__ = ["LogicCalls", "TITLE", "tr"]

log = logging.getLogger(__name__)
TITLE = "SGP-SAM"

try:  # Slicer >= 5.2: translatable strings
    from slicer.i18n import tr
except ImportError:  # older Slicer
    def tr(text: str) -> str:
        return text


class LogicCalls:
    """Runs Logic methods for the panels: one at a time, with a wait cursor, and a plain
    message instead of a traceback when one fails.

    Args:
        status: shows one line (the Segment tab's status label).
        after: called after every call (the panels refresh their buttons).
    """

    def __init__(self, status: Callable[[str], None],
                 after: Callable[[], None] | None = None) -> None:
        self.status = status
        self.after = after
        self.busy = False

    def run(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, or None after showing why it failed."""
        if self.busy:
            return None
        self.busy = True
        try:
            with slicer.util.WaitCursor():
                return function(*args)
        except (SGPSAMError, ValueError, OSError) as exc:
            self.status(f"{what} failed: {exc}")
            slicer.util.errorDisplay(f"{what} failed:\n\n{exc}", windowTitle=TITLE)
        except Exception as exc:  # noqa: BLE001 - anything else: message + details
            log.exception("%s failed", what)
            self.status(f"{what} failed: {exc}")
            slicer.util.errorDisplay(f"{what} failed because of an unexpected error:\n\n{exc}",
                                     detailedText=traceback.format_exc(), windowTitle=TITLE)
        finally:
            self.busy = False
            if self.after is not None:
                self.after()
        return None

    def ensureDependencies(self, logic: Any, action: str) -> bool:
        """Ask once and install what ``action`` needs; False when it is not available (yet)."""
        from SGPSAMSlicerLib import dependencies  # noqa: PLC0415

        problems = logic.missingDependencies(action)
        if not problems:
            return True
        text = dependencies.confirmation_text(problems)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=tr("SGP-SAM: install")):
            self.status(tr("Python packages are missing; nothing was installed."))
            return False

        def torchInstaller(requirement: str):
            import PyTorchUtils  # noqa: PLC0415 - the PyTorch extension

            return PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=requirement)

        hasTorchExtension = hasattr(slicer.modules, "pytorchutils")
        self.status(tr("Installing Python packages (this can take several minutes)..."))
        result = logic.installDependencies(
            problems, pip_install=slicer.util.pip_install,
            torch_installer=torchInstaller if hasTorchExtension else None)
        if result.restart_required:
            if slicer.util.confirmOkCancelDisplay(
                    tr("Packages were updated; 3D Slicer must restart to use them. Restart now?"),
                    windowTitle=TITLE):
                slicer.util.restart()
            return False
        return True
