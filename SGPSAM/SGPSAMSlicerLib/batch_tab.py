"""Logic of the Batch tab: validate the form, run ``sgpsam batch`` as a child, keep the table.

The child is ``python -m SGPSAMLib batch INPUT --model M --out OUT ... --json-progress``
(``SGPSAMLib/cli/batch.py``); its JSON lines drive the progress bar and a per-case status
table (one ``CaseRow`` per case, added as "running" when the child starts a case and
completed by its ``"case"`` record). ``open_result`` loads a finished case's image and
segmentation into a scene. No Qt here: the Widget calls ``poll()`` from a QTimer and reads
the attributes, or registers callbacks.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from SGPSAMLib import options
from SGPSAMLib.errors import CheckpointError, SGPSAMError, VolumeIOError
from SGPSAMLib.options import COORDINATE_SPACES, MODALITIES, look_up_option
from SGPSAMLib.palette import lesion_color

from .child_job import STOP_FILE_OPTION, ChildJob, JobState, JobTab
from .interpreter import child_environment, python_executable
from .processes import ProcessRunner, SubprocessRunner

__all__ = [
    "BatchParams",
    "CaseRow",
    "BatchTabLogic",
    "OUTPUT_FORMATS",
    "SEED_MARKUPS",
    "TABLE_COLUMNS",
    "BATCH_GRACE_S",
    "load_volume_file",
    "load_segmentation_file",
]

logger = logging.getLogger(__name__)

# After Stop, how long the child may take to finish its current lesion before it is killed.
BATCH_GRACE_S = 180.0

# ``sgpsam batch --format`` choices (SGPSAMLib.options.OUTPUT_FORMATS), Slicer's own first.
OUTPUT_FORMATS = ("seg.nrrd", *(f for f in options.OUTPUT_FORMATS if f != "seg.nrrd"))
SEED_MARKUPS = "markups"
# Statuses of a row: the child's (ok, skipped, no_seeds, failed) plus our "running".
RESULT_STATUSES = ("ok", "skipped")
#: The status table's column titles, in the order of ``CaseRow.cells()``.
TABLE_COLUMNS = ("Case", "Status", "Lesions", "Volume (mL)", "Seconds", "Notes")


@dataclass
class BatchParams:
    """The Batch tab's form. ``seeds`` is "markups" (``<case>.mrk.json`` next to each image)
    or the path of one CSV file for the whole folder."""

    input_folder: str
    output_folder: str
    model: str
    seeds: str = SEED_MARKUPS
    output_format: str = "seg.nrrd"
    recursive: bool = False
    device: str = "auto"
    overwrite: bool = False
    csv_space: str = "RAS"
    modality: str = "auto"


@dataclass
class CaseRow:
    """One row of the status table (the child's summary columns plus "running")."""

    case: str
    status: str = "running"
    image: str = ""
    output: str = ""
    lesions: int = 0
    voxels: int = 0
    volume_ml: float = 0.0
    seconds: float = 0.0
    error: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def has_result(self) -> bool:
        """Whether ``open_result`` can load this case (a finished, written output)."""
        return self.status in RESULT_STATUSES and bool(self.output)

    def cells(self) -> tuple[str, str, str, str, str, str]:
        """Text for the table columns: case, status, lesions, volume (mL), seconds, error."""
        done = self.status in RESULT_STATUSES
        return (self.case, self.status,
                str(self.lesions) if done else "",
                f"{self.volume_ml:.2f}" if done else "",
                f"{self.seconds:.1f}" if self.status != "running" else "",
                self.error or "; ".join(self.warnings))


def _field_error(field_name: str, message: str) -> SGPSAMError:
    return SGPSAMError(f"{field_name}: {message}")


def _writable_folder(path: Path, field_name: str) -> None:
    """The folder exists and is writable, or can be created under a writable parent."""
    if path.exists():
        if not path.is_dir():
            raise _field_error(field_name, f"{path} is a file; expected a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise _field_error(field_name, f"{path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise _field_error(field_name, f"{path} does not exist and cannot be created "
                                       f"({parent} is not a writable folder)")


def resolve_model_field(spec: str, field_name: str = "Model") -> Path:
    """A model name or checkpoint path -> an existing file, or SGPSAMError naming the field."""
    text = (spec or "").strip()
    if not text:
        raise _field_error(field_name, "no model chosen; pick a model name or a checkpoint file")
    from SGPSAMLib.models import resolve_model  # noqa: PLC0415 - light, no torch

    try:
        return Path(resolve_model(text))
    except CheckpointError as exc:
        raise _field_error(field_name, str(exc)) from None


class BatchTabLogic(JobTab):
    """Runs one batch job at a time and keeps its table.

    Callbacks (optional, called from ``poll()``): ``on_row(index, row)`` when a row is added
    or changed, ``on_state(state)`` on job state changes, ``on_log(line)`` for log lines.
    """

    def __init__(
        self,
        runner: ProcessRunner | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        grace_s: float = BATCH_GRACE_S,
    ) -> None:
        self.runner = runner if runner is not None else SubprocessRunner(grace_s=grace_s)
        self.python = python
        self.env = env
        self.params: BatchParams | None = None
        self.job: ChildJob | None = None
        self.rows: list[CaseRow] = []
        self._row_index: dict[str, int] = {}
        self.total_cases = 0
        self.current_case = ""
        self.current_stage = ""
        self.on_row: Callable[[int, CaseRow], None] | None = None
        self.on_state: Callable[[JobState], None] | None = None
        self.on_log: Callable[[str], None] | None = None

    # -- form ------------------------------------------------------------------------------
    def validate(self, params: BatchParams) -> BatchParams:
        """Check the form; returns a copy with resolved paths (model as a file path).

        Raises SGPSAMError whose message starts with the field's name.
        """
        text = (params.input_folder or "").strip()
        if not text:
            raise _field_error("Input folder", "not chosen")
        input_dir = Path(text).expanduser()
        if not input_dir.is_dir():
            raise _field_error("Input folder", f"{input_dir} is not an existing folder")
        text = (params.output_folder or "").strip()
        if not text:
            raise _field_error("Output folder", "not chosen")
        output_dir = Path(text).expanduser()
        if output_dir.resolve() == input_dir.resolve():
            raise _field_error("Output folder", "is the input folder; choose another folder so "
                                                "results are never mistaken for inputs")
        _writable_folder(output_dir, "Output folder")
        model = resolve_model_field(params.model)
        seeds = (params.seeds or SEED_MARKUPS).strip()
        if seeds != SEED_MARKUPS:
            seeds_path = Path(seeds).expanduser()
            if not seeds_path.is_file():
                raise _field_error("Seeds", f"{seeds_path}: no such file; expected a CSV file "
                                            "or seeds from markups files")
            seeds = str(seeds_path.resolve())
        look_up_option(params.output_format, OUTPUT_FORMATS, "Output format")
        look_up_option(str(params.csv_space), COORDINATE_SPACES, "CSV space",
                       case_sensitive=False)
        look_up_option(params.modality, MODALITIES, "Modality")
        device = (params.device or "auto").strip()
        return replace(params, input_folder=str(input_dir.resolve()),
                       output_folder=str(output_dir.resolve()), model=str(model), seeds=seeds,
                       csv_space=str(params.csv_space).upper(), device=device)

    def build_argv(self, params: BatchParams) -> list[str]:
        """The child's command line for (validated) ``params``."""
        argv = [self.python or python_executable(), "-m", "SGPSAMLib", "batch",
                params.input_folder, "--model", params.model, "--out", params.output_folder,
                "--seeds", params.seeds, "--format", params.output_format,
                "--device", params.device]
        if params.recursive:
            argv.append("--recursive")
        if params.overwrite:
            argv.append("--overwrite")
        if params.seeds != SEED_MARKUPS and params.csv_space != "RAS":
            argv += ["--csv-space", params.csv_space]
        if params.modality != "auto":
            argv += ["--modality", params.modality]
        argv.append("--json-progress")
        return argv

    # -- running ---------------------------------------------------------------------------
    def start(self, params: BatchParams) -> ChildJob:
        """Validate, clear the table and start the child. Raises SGPSAMError on a bad form or
        while a job is running."""
        if self.is_running:
            raise SGPSAMError("a batch run is already in progress; stop it first")
        valid = self.validate(params)
        self.params = valid
        self.rows = []
        self._row_index = {}
        self.total_cases = 0
        self.current_case = ""
        self.current_stage = ""
        self.job = ChildJob(self.build_argv(valid), runner=self.runner,
                            env=self.env if self.env is not None else child_environment(),
                            title="Batch", on_event=self._on_event, on_log=self.on_log,
                            on_state=self._on_state, stop_file_option=STOP_FILE_OPTION)
        self.job.start()
        return self.job

    # -- what the tab shows ----------------------------------------------------------------
    @property
    def status_text(self) -> str:
        """One line for the label under the progress bar."""
        if self.job is None:
            return ""
        state = self.job.state
        if state == JobState.RUNNING and self.current_case:
            done = sum(1 for row in self.rows if row.status != "running")
            text = f"case {min(done + 1, max(self.total_cases, 1))}/{self.total_cases}: " \
                   f"{self.current_case}"
            if self.current_stage:
                text += f" ({self.current_stage})"
            eta = self.job.eta_text
            return f"{text}, {eta}" if eta else text
        if state.ended and self.job.summary is not None:
            counts = self.job.summary.get("counts") or {}
            parts = [f"{counts.get(k, 0)} {label}" for k, label in (
                ("ok", "ok"), ("skipped", "skipped"), ("no_seeds", "without seeds"),
                ("failed", "failed")) if counts.get(k)]
            return f"{self.job.status_text}: {', '.join(parts) or 'no cases'}"
        return self.job.status_text

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        result: dict[str, int] = {}
        for row in self.rows:
            result[row.status] = result.get(row.status, 0) + 1
        return result

    # -- events ----------------------------------------------------------------------------
    def _on_state(self, state: JobState) -> None:
        if state.ended:
            # A case that was running when the job ended was abandoned.
            for index, row in enumerate(self.rows):
                if row.status == "running":
                    row.status = "stopped" if state == JobState.STOPPED else "failed"
                    row.error = "not finished (run stopped)" if state == JobState.STOPPED \
                        else "not finished (the batch process ended)"
                    self._notify_row(index)
            self.current_case = ""
            self.current_stage = ""
        if self.on_state is not None:
            self.on_state(state)

    def _on_event(self, record: dict) -> None:
        event = record["event"]
        if event == "start":
            self.total_cases = int(record.get("total") or record.get("total_steps") or 0)
        elif event == "progress":
            case = str(record.get("case") or "")
            if case:
                self.current_case = case
                stage = str(record.get("stage") or "")
                if stage == "segment" and record.get("lesions"):
                    stage = f"lesion {record.get('lesion')}/{record.get('lesions')}"
                self.current_stage = stage
                if case not in self._row_index:
                    self._add_row(CaseRow(case=case))
        elif event == "case":
            self._apply_case(record)

    def _add_row(self, row: CaseRow) -> int:
        self.rows.append(row)
        index = len(self.rows) - 1
        self._row_index[row.case] = index
        self._notify_row(index)
        return index

    def _apply_case(self, record: Mapping[str, Any]) -> None:
        case = str(record.get("case") or "")
        index = self._row_index.get(case)
        if index is None:
            index = self._add_row(CaseRow(case=case))
        row = self.rows[index]
        row.status = str(record.get("status") or "failed")
        row.image = str(record.get("image") or "")
        row.output = str(record.get("output") or "")
        row.lesions = int(record.get("lesions") or 0)
        row.voxels = int(record.get("voxels") or 0)
        row.volume_ml = float(record.get("volume_ml") or 0.0)
        row.seconds = float(record.get("seconds") or 0.0)
        row.error = str(record.get("error") or "")
        row.warnings = [str(w) for w in record.get("warnings") or []]
        if self.current_case == case:
            self.current_stage = ""
        self._notify_row(index)

    def _notify_row(self, index: int) -> None:
        if self.on_row is not None:
            self.on_row(index, self.rows[index])

    # -- results ---------------------------------------------------------------------------
    def open_result(self, row: CaseRow | int, scene: Any) -> tuple[Any, Any]:
        """Load a finished case's image and segmentation into ``scene``.

        Returns (volume node, segmentation node); a labelmap output (.nii.gz/.nrrd) becomes a
        segmentation with one segment per label value. Raises SGPSAMError for a case without
        a result, VolumeIOError when a file is gone or unreadable.
        """
        if isinstance(row, int):
            if not 0 <= row < len(self.rows):
                raise SGPSAMError(f"no case in row {row + 1} of the batch table")
            row = self.rows[row]
        if not row.has_result:
            reason = f": {row.error}" if row.error else ""
            raise SGPSAMError(f"case {row.case} has no result to open (status "
                              f"{row.status}{reason})")
        output = Path(row.output)
        image = Path(row.image)
        for what, path in (("segmentation", output), ("image", image)):
            if not path.exists():
                raise VolumeIOError(f"case {row.case}: the {what} {path} no longer exists")
        name = row.case.replace("/", "_")
        volume = load_volume_file(image, scene, name)
        try:
            segmentation = load_segmentation_file(output, scene, f"{name} lesions",
                                                  reference=volume)
        except Exception:
            _remove_node(scene, volume)
            raise
        return volume, segmentation


# ----------------------------------------------------------------------------------------------
# Loading files into a scene (Slicer's storage nodes; no slicer.util.loadVolume, no Qt)
# ----------------------------------------------------------------------------------------------
def _module_logic(name: str, scene: Any) -> Any:
    """``slicer.modules.<name>.logic()`` if it exists and works on ``scene``, else None."""
    try:
        import slicer  # noqa: PLC0415

        logic = getattr(slicer.modules, name).logic()
    except (ImportError, AttributeError):
        return None
    if logic is None or logic.GetMRMLScene() is not scene:
        return None
    return logic


def _remove_node(scene: Any, node: Any) -> None:
    """Remove a node with its display and storage nodes."""
    if node is None:
        return
    for index in range(node.GetNumberOfDisplayNodes() if hasattr(
            node, "GetNumberOfDisplayNodes") else 0):
        display = node.GetNthDisplayNode(index)
        if display is not None:
            scene.RemoveNode(display)
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)


def _read_with_storage_node(scene: Any, node: Any, storage_class: str, path: Path,
                            what: str) -> None:
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        _remove_node(scene, node)
        raise VolumeIOError(f"cannot read {path} as a {what}")


def load_volume_file(path: str | Path, scene: Any, name: str) -> Any:
    """Load an image file (or a DICOM series folder) as a scalar volume node."""
    path = Path(path)
    if path.is_dir():
        return _volume_from_library(path, scene, name)
    logic = _module_logic("volumes", scene)
    if logic is not None:
        node = logic.AddArchetypeVolume(str(path), name)
        if node is None:
            raise VolumeIOError(f"cannot read {path} as a volume")
        return node
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    _read_with_storage_node(scene, node, "vtkMRMLVolumeArchetypeStorageNode", path, "volume")
    node.CreateDefaultDisplayNodes()
    return node


def _volume_from_library(path: Path, scene: Any, name: str) -> Any:
    """A DICOM series folder read by SGPSAMLib (exact geometry), as a volume node."""
    import slicer  # noqa: PLC0415

    from SGPSAMLib.io import read_volume  # noqa: PLC0415

    volume = read_volume(path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, volume.array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def load_segmentation_file(path: str | Path, scene: Any, name: str,
                           reference: Any = None) -> Any:
    """Load a ``.seg.nrrd`` as is, or a labelmap file as a segmentation (one segment per label
    value, named 'Lesion N'); ``reference`` becomes its reference geometry."""
    import slicer  # noqa: PLC0415

    path = Path(path)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if path.name.lower().endswith(".seg.nrrd"):
        _read_with_storage_node(scene, segmentation, "vtkMRMLSegmentationStorageNode", path,
                                "segmentation")
    else:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labelmap")
        try:
            _read_with_storage_node(scene, labelmap, "vtkMRMLVolumeArchetypeStorageNode", path,
                                    "labelmap")
        except VolumeIOError:
            _remove_node(scene, segmentation)
            raise
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                    labelmap, segmentation):
                _remove_node(scene, segmentation)
                raise VolumeIOError(f"cannot import {path} as a segmentation")
        finally:
            _remove_node(scene, labelmap)
        _name_lesion_segments(segmentation)
    segmentation.CreateDefaultDisplayNodes()
    if reference is not None:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return segmentation


def _name_lesion_segments(segmentation_node: Any) -> None:
    """'Lesion N' names and the batch palette colours, by label value (as .seg.nrrd has)."""
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = segment.GetLabelValue()
        segment.SetName(f"Lesion {value}")
        segment.SetColor(*lesion_color(value))
