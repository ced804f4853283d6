"""Batch tab logic: form validation, argv accepted by ``sgpsam batch``, the status table from a
scripted child, stop/crash handling, and ``open_result`` against real MRML (slicer-core)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
from replay import ReplayRunner
from SGPSAMSlicerLib.batch_tab import OUTPUT_FORMATS, BatchParams, BatchTabLogic, CaseRow
from SGPSAMSlicerLib.child_job import JobState

from SGPSAMLib.cli import batch as cli_batch
from SGPSAMLib.errors import SGPSAMError, VolumeIOError
from SGPSAMLib.options import OUTPUT_FORMATS as LIBRARY_FORMATS

PYTHON = "/opt/Slicer/bin/PythonSlicer"


@pytest.fixture
def form(tmp_path: Path) -> BatchParams:
    (tmp_path / "scans").mkdir()
    (tmp_path / "model.pt").write_bytes(b"not really a checkpoint")
    (tmp_path / "seeds.csv").write_text("case,x,y,z\n")
    return BatchParams(input_folder=str(tmp_path / "scans"),
                       output_folder=str(tmp_path / "results" / "run1"),
                       model=str(tmp_path / "model.pt"))


def _parse_like_the_cli(argv: list[str]) -> argparse.Namespace:
    """Parse argv[3:] with the real ``sgpsam batch`` sub-parser (cli_batch.register)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    common.add_argument("--verbose", action="store_true")
    parser = argparse.ArgumentParser(prog="sgpsam")
    cli_batch.register(parser.add_subparsers(dest="command"), common)
    return parser.parse_args(argv[3:])


def test_argv_is_accepted_by_the_batch_command(form: BatchParams, tmp_path: Path) -> None:
    logic = BatchTabLogic(python=PYTHON)
    valid = logic.validate(form)
    argv = logic.build_argv(valid)
    assert argv[:4] == [PYTHON, "-m", "SGPSAMLib", "batch"] and argv[-1] == "--json-progress"
    args = _parse_like_the_cli(argv)
    assert args.command == "batch" and args.json_progress
    assert args.input == str((tmp_path / "scans").resolve())
    assert args.out == str((tmp_path / "results" / "run1").resolve())
    assert args.model == str((tmp_path / "model.pt").resolve())
    assert (args.seeds, args.format, args.device, args.recursive, args.overwrite,
            args.csv_space, args.modality) == ("markups", "seg.nrrd", "auto", False, False,
                                               "RAS", "auto")

    form.seeds = str(tmp_path / "seeds.csv")
    form.csv_space = "lps"
    form.output_format = "nii.gz"
    form.recursive = form.overwrite = True
    form.device, form.modality = "cuda:1", "MR"
    args = _parse_like_the_cli(logic.build_argv(logic.validate(form)))
    assert (args.seeds, args.format, args.device, args.recursive, args.overwrite,
            args.csv_space, args.modality) == (str((tmp_path / "seeds.csv").resolve()),
                                               "nii.gz", "cuda:1", True, True, "LPS", "MR")
    assert set(OUTPUT_FORMATS) == set(LIBRARY_FORMATS)  # sgpsam batch --format's choices


def test_validation_names_the_field(form: BatchParams, tmp_path: Path) -> None:
    logic = BatchTabLogic()
    cases = [
        (dict(input_folder=""), "Input folder: not chosen"),
        (dict(input_folder=str(tmp_path / "nope")), "Input folder: .*nope is not an existing"),
        (dict(output_folder=" "), "Output folder: not chosen"),
        (dict(output_folder=form.input_folder), "Output folder: is the input folder"),
        (dict(output_folder=str(tmp_path / "model.pt")), "Output folder: .* is a file"),
        (dict(model=""), "Model: no model chosen"),
        (dict(model=str(tmp_path / "missing.pt")), "Model: .*missing.pt"),
        (dict(seeds=str(tmp_path / "none.csv")), "Seeds: .*none.csv: no such file"),
        (dict(output_format="png"), "Output format: 'png'"),
        (dict(csv_space="XYZ"), "CSV space: 'XYZ'"),
        (dict(modality="PET"), "Modality: 'PET'"),
    ]
    for changes, message in cases:
        bad = BatchParams(**{**form.__dict__, **changes})
        with pytest.raises(SGPSAMError, match=message):
            logic.validate(bad)
    if os.name != "nt" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SGPSAMError, match="Output folder: .*locked/out does not exist and "
                                              "cannot be created"):
            logic.validate(BatchParams(**{**form.__dict__, "output_folder": str(locked / "out")}))


def _case(case: str, status: str, **extra) -> dict:
    record = {"event": "case", "case": case, "image": f"/in/{case}.nii.gz", "output": "",
              "lesions": 0, "voxels": 0, "volume_ml": 0.0, "seconds": 1.5, "status": status,
              "error": "", "index": 1, "total": 3, "warnings": []}
    record.update(extra)
    return record


def _progress(step: int, case: str, stage: str, **extra) -> dict:
    return {"event": "progress", "step": step, "total_steps": 3, "case": case,
            "case_index": step, "stage": stage, "lesion": 0, "lesions": 0, "eta_s": None,
            **extra}


SCRIPT = [
    {"event": "start", "total": 3, "total_steps": 3, "found": 3, "output": "/out"},
    [_progress(0, "a", "seeds"), _progress(0, "a", "read"),
     _progress(0, "a", "segment", lesion=1, lesions=2, eta_s=None)],
    [_case("a", "ok", output="/out/a.seg.nrrd", lesions=2, voxels=1234, volume_ml=1.2345,
           seconds=4.25),
     _progress(1, "b", "seeds", eta_s=9.0)],
    [_case("b", "no_seeds", error="no <case>.mrk.json next to the image", index=2),
     _progress(2, "c", "read", eta_s=3.0)],
    [_case("c", "failed", error="out of memory", index=3),
     {"event": "done", "stopped": False, "total": 3, "processed": 3,
      "counts": {"ok": 1, "skipped": 0, "no_seeds": 1, "failed": 1}}],
]


def test_table_follows_the_child(form: BatchParams) -> None:
    runner = ReplayRunner(chunks=SCRIPT)
    logic = BatchTabLogic(runner=runner, python="py")
    changes, states = [], []
    logic.on_row = lambda index, row: changes.append((index, row.case, row.status))
    logic.on_state = states.append
    job = logic.start(form)
    assert runner.calls[0][0][:4] == ["py", "-m", "SGPSAMLib", "batch"]
    env = runner.calls[0][1]
    assert env["PYTHONUNBUFFERED"] == "1" and "PYTHONPATH" in env
    assert logic.is_running and logic.state is JobState.RUNNING

    assert logic.poll() and logic.total_cases == 3 and logic.fraction == 0.0
    assert logic.poll()
    assert [r.case for r in logic.rows] == ["a"] and logic.rows[0].status == "running"
    assert logic.status_text == "case 1/3: a (lesion 1/2)"
    logic.poll()
    row = logic.rows[0]
    assert (row.status, row.output, row.lesions, row.voxels, row.volume_ml, row.seconds) == (
        "ok", "/out/a.seg.nrrd", 2, 1234, 1.2345, 4.25)
    assert row.has_result and row.cells() == ("a", "ok", "2", "1.23", "4.2", "")
    assert logic.fraction == pytest.approx(1 / 3)
    assert logic.status_text == "case 2/3: b (seeds), 9 s left"
    assert logic.percent == 33 and logic.display_text == logic.status_text  # what the panel shows
    logic.poll()
    assert logic.rows[1].cells() == ("b", "no_seeds", "", "", "1.5",
                                     "no <case>.mrk.json next to the image")
    assert not logic.rows[1].has_result
    logic.poll()
    assert logic.state is JobState.FINISHED and not logic.is_running
    assert [(r.case, r.status) for r in logic.rows] == [("a", "ok"), ("b", "no_seeds"),
                                                        ("c", "failed")]
    assert logic.counts() == {"ok": 1, "no_seeds": 1, "failed": 1}
    assert logic.fraction == 1.0 and logic.summary["processed"] == 3
    assert logic.status_text.endswith(": 1 ok, 1 without seeds, 1 failed")
    assert changes == [(0, "a", "running"), (0, "a", "ok"), (1, "b", "running"),
                       (1, "b", "no_seeds"), (2, "c", "running"), (2, "c", "failed")]
    assert states == [JobState.RUNNING, JobState.FINISHED]
    assert not logic.poll() and job is logic.job
    with pytest.raises(SGPSAMError, match="case b has no result to open \\(status no_seeds: "
                                          "no <case>.mrk.json"):
        logic.open_result(1, scene=None)
    with pytest.raises(SGPSAMError, match="no case in row 9"):
        logic.open_result(8, scene=None)


def test_stop_marks_the_abandoned_case(form: BatchParams) -> None:
    runner = ReplayRunner(chunks=SCRIPT[:3], hang=True, stop_chunks=[
        {"event": "done", "stopped": True, "counts": {"ok": 1}}])
    logic = BatchTabLogic(runner=runner, python="py")
    logic.start(form)
    for _ in range(4):
        logic.poll()
    assert logic.rows[-1].status == "running"
    with pytest.raises(SGPSAMError, match="already in progress"):
        logic.start(form)
    logic.stop()
    assert runner.handles[0].terminated and logic.state is JobState.STOPPING
    logic.poll()
    assert logic.state is JobState.STOPPED
    assert [(r.case, r.status) for r in logic.rows] == [("a", "ok"), ("b", "stopped")]
    assert logic.rows[1].error == "not finished (run stopped)"
    assert logic.status_text.startswith("Batch stopped after") and "1 ok" in logic.status_text


def test_crash_fails_the_run_with_the_error_output(form: BatchParams) -> None:
    runner = ReplayRunner(chunks=SCRIPT[:2], exit_code=-9, stderr=["loading model..."])
    logic = BatchTabLogic(runner=runner, python="py")
    logic.start(form)
    for _ in range(3):
        logic.poll()
    assert logic.state is JobState.FAILED
    assert logic.error_message.startswith("Batch ran out of memory")
    assert logic.display_text == f"{logic.status_text}\n{logic.error_message}"
    assert logic.error_message.endswith("loading model...")
    assert logic.rows[0].status == "failed"
    assert logic.rows[0].error == "not finished (the batch process ended)"


# ----------------------------------------------------------------------------------------------
# open_result with real MRML
# ----------------------------------------------------------------------------------------------
SHAPE = (6, 9, 11)


def _write_case(tmp_path: Path):
    """An oblique image file and the masks of two lesions on its grid."""
    from SGPSAMLib.geometry import Volume
    from SGPSAMLib.io import write_volume

    matrix = np.array([[0.0, -1.2, 0.0, 14.0], [0.9, 0.0, 0.0, -7.0],
                       [0.0, 0.0, 2.5, 33.0], [0.0, 0.0, 0.0, 1.0]])
    array = (np.arange(np.prod(SHAPE)) % 500).astype(np.int16).reshape(SHAPE)
    image = write_volume(Volume(array, matrix), tmp_path / "case 1.nrrd")
    first = np.zeros(SHAPE, np.uint8)
    first[1:3, 2:5, 3:6] = 1
    second = np.zeros(SHAPE, np.uint8)
    second[4:6, 6:8, 7:10] = 1
    return Volume(array, matrix), image, first, second


def _logic_with_row(image: Path, output: Path) -> BatchTabLogic:
    logic = BatchTabLogic()
    logic._apply_case(_case("sub/case 1", "ok", image=str(image), output=str(output),
                            lesions=2))
    return logic


def _ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_open_result_loads_a_slicer_seg_nrrd(mrml, tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer")
    volume, image, first, second = _write_case(tmp_path)
    # A .seg.nrrd written by Slicer itself, from a scratch scene.
    scratch = slicer.vtkMRMLScene()
    reference = scratch.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ref")
    slicer.util.updateVolumeFromArray(reference, volume.array)
    reference.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    lm = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")
    slicer.util.updateVolumeFromArray(lm, (first + 2 * second).astype(np.uint8))
    lm.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    written = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode", "written")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, written)
    seg_file = tmp_path / "case 1.seg.nrrd"
    storage = written.CreateDefaultStorageNode()
    storage.SetFileName(str(seg_file))
    assert storage.WriteData(written)
    names = [written.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]

    logic = _logic_with_row(image, seg_file)
    vol_node, seg_node = logic.open_result(logic.rows[0], mrml.scene)

    assert vol_node.GetName() == "sub_case 1" and seg_node.GetName() == "sub_case 1 lesions"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(vol_node), volume.array)
    np.testing.assert_allclose(_ijk_to_ras(vol_node), volume.ijk_to_ras, atol=1e-6)
    assert vol_node.GetDisplayNode() is not None and vol_node.GetStorageNode() is not None
    segmentation = seg_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [segmentation.GetSegment(s).GetName() for s in ids] == names
    for sid, mask in zip(ids, (first, second)):
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, sid, vol_node)
        np.testing.assert_array_equal(got, mask)
    assert seg_node.GetDisplayNode() is not None
    assert seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()) \
        is vol_node


def test_open_result_imports_labelmaps_and_batch_seg_files(mrml, tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer")
    from SGPSAMLib.io import write_labelmap
    from SGPSAMLib.segfile import SegmentInfo, default_color, write_segmentation

    volume, image, first, second = _write_case(tmp_path)
    labels = (first + 2 * second).astype(np.uint8)
    label_file = write_labelmap(labels, volume, tmp_path / "case 1.nii.gz")
    nodes_before = mrml.scene.GetNumberOfNodes()
    logic = _logic_with_row(image, label_file)
    vol_node, seg_node = logic.open_result(0, mrml.scene)
    segmentation = seg_node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == ["Lesion 1", "Lesion 2"]
    assert segments[1].GetColor() == pytest.approx(default_color(2))
    for index, mask in enumerate((first, second)):
        got = slicer.util.arrayFromSegmentBinaryLabelmap(
            seg_node, segmentation.GetNthSegmentID(index), vol_node)
        np.testing.assert_array_equal(got, mask)
    assert not mrml.scene.GetNodesByName("sub_case 1 lesions labelmap").GetNumberOfItems()
    assert mrml.scene.GetNumberOfNodes() > nodes_before

    batch_file = write_segmentation(labels, volume, tmp_path / "batch.seg.nrrd", [
        SegmentInfo(1, "liver lesion", (0.1, 0.2, 0.3)), SegmentInfo(2, "node", (1.0, 0.5, 0))])
    logic = _logic_with_row(image, batch_file)
    _, seg_node = logic.open_result(0, mrml.scene)
    segmentation = seg_node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == ["liver lesion", "node"]
    assert segments[0].GetColor() == pytest.approx((0.1, 0.2, 0.3))


def test_open_result_without_module_logics_and_with_missing_files(tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer")
    volume, image, first, second = _write_case(tmp_path)
    from SGPSAMLib.io import write_labelmap

    label_file = write_labelmap(first, volume, tmp_path / "lab.nrrd")
    scene = slicer.vtkMRMLScene()  # bare: storage nodes only
    logic = _logic_with_row(image, label_file)
    vol_node, seg_node = logic.open_result(0, scene)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(vol_node), volume.array)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1

    label_file.unlink()
    count = scene.GetNumberOfNodes()
    with pytest.raises(VolumeIOError, match="the segmentation .*lab.nrrd no longer exists"):
        logic.open_result(0, scene)
    broken = tmp_path / "broken.seg.nrrd"
    broken.write_text("not a nrrd")
    logic = _logic_with_row(image, broken)
    with pytest.raises(VolumeIOError, match="cannot read .*broken.seg.nrrd as a segmentation"):
        logic.open_result(0, scene)
    assert scene.GetNumberOfNodes() == count  # nothing left behind
    assert isinstance(logic.rows[0], CaseRow)
