"""Everything the module's Widget asks for, as Logic methods without Qt.

``SGPSAM.SGPSAMLogic`` is this class plus Slicer's ``ScriptedLoadableModuleLogic``. The Widget
reads its forms and calls one method per action; the methods check, start, stop and report,
so each action can run (and is tested) from scripts and from plain pytest on real MRML:

- Segment tab: :class:`.logic.SegmentLogic` (model, session, lesions, points, undo).
- Model section: ``modelStatusText``, ``updateModelSettings``, ``downloadModel``.
- Dependencies: ``missingDependencies(action)``, ``installDependencies``.
- Batch tab: ``startBatch(form)``, ``stopBatch``, ``openBatchResult``.
- Training tab: ``startTraining(form, scene)``, ``stopTraining``, ``useTrainedModel``.
- Both jobs: ``pollJobs``, ``jobsRunning``, ``shutdownJobs``; ``cleanup`` for reload and exit.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from SGPSAMLib.errors import SGPSAMError

from . import dependencies
from .batch_tab import BatchTabLogic
from .child_job import ChildJob, JobTab
from .forms import batch_params, training_request
from .logic import SegmentLogic
from .settings import LOCAL_MODEL, Settings
from .training_tab import TrainingTabLogic

__all__ = ["ModuleLogic", "MODEL_STATES", "SHUTDOWN_WAIT_S"]

log = logging.getLogger(__name__)

#: What the model section says for each ``SGPSAMLib.models.model_status`` state.
MODEL_STATES = {
    "bundled": "Bundled demo model (works offline).",
    "downloaded": "Downloaded to {path}.",
    "unverified": "Found {path} (checked on first use).",
    "corrupt": "The cached file is damaged: download it again.",
    "missing": "Not downloaded yet: press Download.",
}
#: At application exit: how long a running job may take to save before it is killed.
SHUTDOWN_WAIT_S = 30.0


class ModuleLogic(SegmentLogic):
    """The Segment tab's logic plus the Batch and Training jobs, model status and downloads.

    Args:
        settings: persisted settings (model, device, modality...).
        batch, training: the tab logics (tests pass ones with a scripted runner).
    """

    def __init__(self, settings: Settings | None = None, batch: BatchTabLogic | None = None,
                 training: TrainingTabLogic | None = None) -> None:
        SegmentLogic.__init__(self, settings)
        self.batch = batch if batch is not None else BatchTabLogic()
        self.training = training if training is not None else TrainingTabLogic()

    # -- model section ----------------------------------------------------------------------
    def updateModelSettings(self, model: str, checkpointPath: str, device: str,
                            modality: str) -> None:
        """Store the model section's choices (ValueError names an invalid one)."""
        self.settings.update({"model": model or "demo", "checkpointPath": checkpointPath,
                              "device": device, "modality": modality})

    def modelStatusText(self) -> str:
        """What the model section says about the chosen model (and the loaded one)."""
        from SGPSAMLib import models  # noqa: PLC0415 - stdlib only

        name = self.settings["model"]
        if name == LOCAL_MODEL:
            text = "Checkpoint file: {path}".format(
                path=self.settings["checkpointPath"] or "(none chosen)")
        else:
            try:
                status = models.model_status(name)
                state = status["state"]
                text = MODEL_STATES.get(state, state).format(path=status.get("path") or "")
                if name == "demo" and state == "missing":
                    text = ("The bundled demo model is not installed in this build; choose "
                            "another model or a checkpoint file.")
            except SGPSAMError as exc:
                text = str(exc)
        if self.model is not None:
            text += f"\nLoaded: {self.modelDescription}"
        return text

    def cpuWarning(self) -> bool:
        """Whether the persistent 'runs on the CPU' note is due (known after Initialize for
        device 'auto')."""
        return self.settings["device"] == "cpu" or (self.model is not None and self.isUsingCPU())

    def downloadModel(self, progress: Callable[[int, Any], None] | None = None,
                      stop: Callable[[], bool] | None = None) -> str:
        """Download the default downloadable model (after the user agreed); returns its name.
        The Widget shows ``downloadOffer()`` first."""
        from SGPSAMLib import download, models  # noqa: PLC0415

        name = models.DEFAULT_DOWNLOAD
        download.download_model(name, consent=True, progress=progress, stop=stop)
        self.settings["downloadConsent"] = True
        return name

    def downloadOffer(self) -> tuple[str, str, str]:
        """(title, licence text, cache folder) of the default download, for the dialog."""
        from SGPSAMLib import models  # noqa: PLC0415

        info = models.KNOWN_MODELS[models.DEFAULT_DOWNLOAD]
        return info.title, info.licence_text(), str(models.cache_dir())

    # -- dependencies -----------------------------------------------------------------------
    @staticmethod
    def missingDependencies(action: str) -> list[dependencies.MissingDependency]:
        """What ``action`` ("segment", "batch", "train") needs and is not installed."""
        return dependencies.check_dependencies(dependencies.requirements_for(action))

    @staticmethod
    def installDependencies(problems: Sequence[dependencies.MissingDependency],
                            pip_install: Callable[[list], Any],
                            torch_installer: Callable[[str], Any] | None
                            ) -> dependencies.InstallResult:
        return dependencies.install_missing(problems, pip_install=pip_install,
                                            torch_installer=torch_installer)

    # -- Batch ------------------------------------------------------------------------------
    def startBatch(self, form: Any) -> ChildJob:
        """Start ``sgpsam batch`` for the Batch form with the Segment tab's model, device and
        modality. Raises SGPSAMError naming the field on a bad form."""
        params = batch_params(form, self.settings.model_spec(), self.settings["device"],
                              self.settings["modality"])
        return self.batch.start(params)

    def stopBatch(self) -> None:
        self.batch.stop()

    def openBatchResult(self, row: int, scene: Any) -> tuple[Any, Any]:
        """Load a finished case's volume and segmentation -> (volume, segmentation)."""
        return self.batch.open_result(row, scene)

    # -- Training ---------------------------------------------------------------------------
    def startTraining(self, form: Any, scene: Any = None) -> ChildJob:
        """Start ``sgpsam train`` for the Training form, from the Segment tab's model."""
        request = training_request(form, self.settings.model_spec(), self.settings["device"],
                                   self.settings["modality"])
        return self.training.start_from_form(request, scene)

    def stopTraining(self) -> None:
        self.training.stop()

    def useTrainedModel(self) -> str:
        """Choose the run's best (or last) checkpoint as the Segment tab's model -> its path."""
        path = self.training.best_checkpoint()
        if not path:
            raise SGPSAMError("no checkpoint yet: train first")
        self.settings.update({"model": LOCAL_MODEL, "checkpointPath": str(path)})
        return str(path)

    # -- both jobs --------------------------------------------------------------------------
    def _tabs(self) -> tuple[JobTab, ...]:
        return (self.batch, self.training)

    def pollJobs(self) -> bool:
        """Read the jobs' new output; True while any of them runs."""
        for tab in self._tabs():
            tab.poll()
        return self.jobsRunning()

    def jobsRunning(self) -> bool:
        return any(tab.is_running for tab in self._tabs())

    def shutdownJobs(self, wait_s: float = SHUTDOWN_WAIT_S,
                     pump: Callable[[], None] | None = None) -> bool:
        """Stop running jobs gracefully (they save first), killing what is left after
        ``wait_s``; True when all ended on their own."""
        return all([tab.shutdown(wait_s, pump=pump) for tab in self._tabs()])

    def cleanup(self, wait_s: float = SHUTDOWN_WAIT_S,
                pump: Callable[[], None] | None = None) -> bool:
        """Module reload or application exit: stop the jobs gracefully and free the model."""
        ended = self.shutdownJobs(wait_s, pump)
        self.releaseModel()
        return ended
