"""batch.py and ``sgpsam batch``: discovery, seeds per case, outputs on the input grid, failures,
resume, stop, shards, summaries, and the command line (JSON lines, SIGTERM, errors).

Most runs use an "oracle" model (the session's interface, no weights): its embedding is the
pooled crop and it answers with the bright connected blob under the newest positive click, so
masks are real shapes and Dice against the known blobs is meaningful. One run goes through a
real tiny checkpoint end to end.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from SGPSAMLib import batch as batch_module
from SGPSAMLib import batch_inputs, build
from SGPSAMLib.batch import (
    SUMMARY_COLUMNS,
    BatchConfig,
    CaseInput,
    find_volumes,
    parse_shard,
    run_batch,
    shard_cases,
)
from SGPSAMLib.cli import batch as cli_batch
from SGPSAMLib.cli import main
from SGPSAMLib.errors import SGPSAMError, VolumeIOError
from SGPSAMLib.io import read_volume
from SGPSAMLib.segfile import default_color, read_segmentation

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


class OracleModel(nn.Module):
    """Stand-in model: the bright blob (on the low-res grid) under the newest positive click;
    a prompt of negative clicks only returns the previous logits. Its crop is 64^3 at 1.5 mm
    (the session takes the size from the model) so that tests spend little time sampling."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=64, crop_spacing_mm=1.5)
        self.low_res_size = 16
        self.encode_calls = 0
        self.decode_calls = 0

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return F.avg_pool3d(image.float(), 4)

    def decode(self, embedding, points, labels, mask_logits):
        self.decode_calls += 1
        x = embedding[0, 0]
        padding = x.amin()
        inside = x[x > padding + 1e-3]
        foreground = x > inside.median() + 0.3 * (x.amax() - inside.median())
        positives = [p for p, lab in zip(points[0].tolist(), labels[0].tolist()) if lab == 1]
        if not positives:  # a negative click alone keeps the previous answer
            return mask_logits.clone()
        cell = [min(self.low_res_size - 1, max(0, int(v // 4))) for v in positives[-1]]
        grown = torch.zeros_like(foreground)
        grown[cell[0], cell[1], cell[2]] = True
        grown &= foreground
        for _ in range(3 * self.low_res_size):
            nxt = (F.max_pool3d(grown[None, None].float(), 3, 1, 1)[0, 0] > 0) & foreground
            if torch.equal(nxt, grown):
                break
            grown = nxt
        return torch.where(grown, 5.0, -5.0)[None, None]


# A small synthetic geometry: flipped j axis, anisotropic voxels, two bright spheres.
SIZE = (48, 48, 28)           # x, y, z voxels
SPACING = (1.5, 1.5, 3.0)
ORIGIN_LPS = (10.0, 20.0, -50.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
# Centre to centre 35 mm (within a 64-voxel crop's central half), 11 mm between surfaces.
BLOBS = [((14.0, 14.0, 9.0), 13.0), ((28.0, 28.0, 16.0), 11.0)]  # (centre ijk, radius mm)


def _image(size=SIZE, spacing=SPACING, origin=ORIGIN_LPS, blobs=BLOBS,
           direction=DIRECTION) -> sitk.Image:
    reference = sitk.Image(list(size), sitk.sitkInt16)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    reference.SetDirection(direction)
    kji = np.indices(size[::-1]).reshape(3, -1).T[:, ::-1].astype(float)
    array = np.full(size[::-1], 100, dtype=np.int16)
    for n, (centre, radius) in enumerate(blobs):
        distance = np.linalg.norm((kji - centre) * np.asarray(spacing), axis=1)
        array.reshape(-1)[distance <= radius] = 600 + 50 * n
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _blob_mask(n: int, size=SIZE, spacing=SPACING, blobs=BLOBS) -> np.ndarray:
    kji = np.indices(size[::-1]).reshape(3, -1).T[:, ::-1].astype(float)
    centre, radius = blobs[n]
    inside = np.linalg.norm((kji - centre) * np.asarray(spacing), axis=1) <= radius
    return inside.reshape(size[::-1])


def _ras(image: sitk.Image, ijk) -> list[float]:
    """RAS mm of a voxel through SimpleITK alone (not our geometry code)."""
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return [-x, -y, z]


def _markups(path: Path, lesions: list[tuple[str, list]], system: str | None = "RAS") -> Path:
    """lesions: (node name, [(ras, label)]); positions written in ``system`` (None: LPS)."""
    nodes = []
    for name, points in lesions:
        control = []
        for n, (ras, label) in enumerate(points):
            xyz = ras if system == "RAS" else [-ras[0], -ras[1], ras[2]]
            control.append({"id": str(n), "label": label, "position": xyz,
                            "positionStatus": "defined"})
        node = {"type": "Fiducial", "name": name, "controlPoints": control}
        if system is not None:
            node["coordinateSystem"] = system
        nodes.append(node)
    path.write_text(json.dumps({"markups": nodes}), encoding="utf-8")
    return path


def _write_dicom(image: sitk.Image, folder: Path) -> None:
    folder.mkdir(parents=True)
    uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        direction = image.GetDirection()
        tags = {"0008|0060": "MR", "0020|000d": uid + ".1", "0020|000e": uid + ".2",
                "0008|0018": f"{uid}.3.{k}", "0020|0013": str(k),
                "0020|0037": "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3])),
                "0020|0032": "\\".join(str(v) for v in position),
                "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
                "0018|0050": str(image.GetSpacing()[2])}
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(piece)


def _two_lesion_case(folder: Path, name: str = "a", system: str | None = "RAS",
                     suffix: str = ".nii.gz") -> sitk.Image:
    image = _image()
    sitk.WriteImage(image, str(folder / f"{name}{suffix}"))
    _markups(folder / f"{name}.mrk.json", [
        ("first", [(_ras(image, BLOBS[0][0]), "F-1"), (_ras(image, (40, 4, 3)), "bg-")]),
        ("second", [(_ras(image, BLOBS[1][0]), "F-1")]),
    ], system=system)
    return image


def _one_lesion_case(folder: Path, name: str, system: str | None = None,
                     suffix: str = ".nii.gz") -> sitk.Image:
    image = _image()
    sitk.WriteImage(image, str(folder / f"{name}{suffix}"))
    _markups(folder / f"{name}.mrk.json", [("lesion", [(_ras(image, BLOBS[1][0]), "F-1")])],
             system=system)
    return image


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice, after checking the centroids agree to half a voxel (no shift, flip or swap)."""
    np.testing.assert_allclose(np.argwhere(a).mean(axis=0), np.argwhere(b).mean(axis=0),
                               atol=0.5)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _same_grid(path: Path, image: sitk.Image) -> None:
    out = sitk.ReadImage(str(path))
    assert out.GetSize() == image.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-6)


def _config(tmp_path: Path, model, **kw) -> BatchConfig:
    kw.setdefault("input", tmp_path / "in")
    kw.setdefault("output", tmp_path / "out")
    return BatchConfig(model=model, device="cpu", **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*tmp*"))


# ------------------------------------------------------------------------------------------------
# Discovery and shards.

def test_find_volumes_files_dicom_and_exclusions(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    small = _image(size=(6, 5, 4), blobs=[])
    for name in ("b.nii.gz", "a.nrrd", "c.mha", ".hidden.nii.gz", "x.seg.nrrd",
                 "sub/d.nii", "sub/deeper/e.nii.gz", "out/old.nii.gz"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(small, str(root / name))
    (root / "notes.txt").write_text("not an image")
    (root / "a.mrk.json").write_text("{}")
    _write_dicom(small, root / "series1")
    # A DICOM folder whose files have no suffix: found by the DICM marker.
    (root / "series2").mkdir()
    for f in sorted((root / "series1").iterdir()):
        shutil.copy(f, root / "series2" / f.stem)
    (root / "empty_dir").mkdir()

    cases = find_volumes(root, exclude=[root / "out"])
    assert [c.case_id for c in cases] == ["a", "b", "c", "series1", "series2"]
    assert [c.dicom for c in cases] == [False, False, False, True, True]
    deep = find_volumes(root, recursive=True, exclude=[root / "out"])
    assert [c.case_id for c in deep] == ["a", "b", "c", "series1", "series2", "sub/d",
                                         "sub/deeper/e"]
    assert "out/old" in [c.case_id for c in find_volumes(root, recursive=True)]
    assert read_volume(cases[4].path).array.shape == (4, 5, 6)
    # The input folder itself can be one DICOM series.
    assert [(c.case_id, c.dicom) for c in find_volumes(root / "series1")] == [("series1", True)]

    sitk.WriteImage(small, str(root / "a.nii.gz"))
    with pytest.raises(VolumeIOError, match="both give case id 'a'"):
        find_volumes(root)
    with pytest.raises(VolumeIOError, match="not a folder"):
        find_volumes(root / "a.nrrd")


def test_shards_partition_the_cohort() -> None:
    cases = [CaseInput(f"c{n:02d}", Path(f"c{n:02d}.nii.gz")) for n in range(11)]
    for count in (1, 2, 3, 4, 11, 15):
        shards = [shard_cases(cases, i, count) for i in range(count)]
        ids = [c.case_id for shard in shards for c in shard]
        assert sorted(ids) == [c.case_id for c in cases]  # every case exactly once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    assert [c.case_id for c in shard_cases(cases, 1, 4)] == ["c01", "c05", "c09"]
    assert parse_shard("2/5") == (2, 5) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("5/5", "-1/3", "1", "a/b", "1/0"):
        with pytest.raises(SGPSAMError, match="shard"):
            parse_shard(bad)


# ------------------------------------------------------------------------------------------------
# Runs with the oracle model.

def test_mixed_folder_outputs_failures_and_summary(tmp_path: Path) -> None:
    """RAS and LPS markups, NRRD and DICOM inputs, a corrupt file in the middle, a case
    without seeds: right statuses, outputs on each input's exact grid, lesions as label
    values, one encoder pass per case (lesions share the region), summary files."""
    folder = tmp_path / "in"
    folder.mkdir()
    image_a = _two_lesion_case(folder, "a", system="RAS")
    _one_lesion_case(folder, "b_corrupt")  # seeds, but the image cannot be read
    (folder / "b_corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file" * 10)
    image_c = _one_lesion_case(folder, "c", system=None, suffix=".nrrd")  # LPS by default
    sitk.WriteImage(_image(), str(folder / "d.nii.gz"))                   # no seed file
    # DICOM readers order slices along row x column; identity axes keep the written order.
    image_e = _image(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    _write_dicom(image_e, folder / "e")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "e")))
    image_e = reader.Execute()  # the grid an independent DICOM reader sees
    _markups(folder / "e.mrk.json", [("lesion", [(_ras(image_e, BLOBS[0][0]), "F-1")])],
             system="LPS")

    model = OracleModel()
    events: list[dict] = []
    summary = run_batch(_config(tmp_path, model), progress=events.append)

    out = tmp_path / "out"
    rows = {r.case: r for r in summary.results}
    assert [r.case for r in summary.results] == ["a", "b_corrupt", "c", "d", "e"]
    assert [r.status for r in summary.results] == ["ok", "failed", "ok", "no_seeds", "ok"]
    assert "cannot read" in rows["b_corrupt"].error
    assert "b_corrupt.nii.gz" in rows["b_corrupt"].error
    assert "d.mrk.json" in rows["d"].error
    assert summary.counts == {"ok": 3, "skipped": 0, "no_seeds": 1, "failed": 1}
    assert not summary.stopped
    assert model.encode_calls == 3  # one region per case, shared by both lesions of "a"
    assert sorted(p.name for p in out.iterdir()) == [
        "a.nii.gz", "c.nii.gz", "e.nii.gz", "sgpsam_batch.jsonl", "summary.csv", "summary.json"]

    # Outputs sit on the inputs' exact grids; lesion n has label value n; Dice vs the blobs.
    for name, image in (("a", image_a), ("c", image_c), ("e", image_e)):
        _same_grid(out / f"{name}.nii.gz", image)
    labels_a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "a.nii.gz")))
    assert set(np.unique(labels_a)) == {0, 1, 2}
    assert _dice(labels_a == 1, _blob_mask(0)) > 0.75
    assert _dice(labels_a == 2, _blob_mask(1)) > 0.75
    labels_c = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c.nii.gz")))
    assert _dice(labels_c == 1, _blob_mask(1)) > 0.75 and set(np.unique(labels_c)) == {0, 1}
    labels_e = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "e.nii.gz")))
    assert _dice(labels_e == 1, _blob_mask(0)) > 0.75

    # Summary rows: voxels and volumes from the written labelmaps.
    voxel_ml = np.prod(SPACING) / 1000.0
    assert rows["a"].lesions == 2 and rows["a"].voxels == np.count_nonzero(labels_a)
    assert rows["a"].volume_ml == pytest.approx(rows["a"].voxels * voxel_ml)
    assert [d["name"] for d in rows["a"].lesion_details] == ["first", "second"]
    assert [d["voxels"] for d in rows["a"].lesion_details] == [
        np.count_nonzero(labels_a == 1), np.count_nonzero(labels_a == 2)]
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == SUMMARY_COLUMNS
    assert [(r["case"], r["status"]) for r in table] == [
        ("a", "ok"), ("b_corrupt", "failed"), ("c", "ok"), ("d", "no_seeds"), ("e", "ok")]
    assert int(table[0]["voxels"]) == rows["a"].voxels
    assert table[0]["output"] == str((out / "a.nii.gz").resolve())
    assert table[3]["output"] == "" and table[1]["error"] == rows["b_corrupt"].error
    document = json.loads((out / "summary.json").read_text())
    assert document["counts"] == summary.counts and document["stopped"] is False
    assert [c["case"] for c in document["cases"]] == ["a", "b_corrupt", "c", "d", "e"]
    assert document["cases"][0]["lesion_details"][1]["label_value"] == 2

    # Events: start, per-stage progress, one case record per case, done.
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("case") == 5
    assert events[0]["total"] == 5 and events[0]["found"] == 5
    case_events = [e for e in events if e["event"] == "case"]
    assert all(set(SUMMARY_COLUMNS) <= set(e) for e in case_events)
    assert events[-1]["counts"] == summary.counts and events[-1]["stopped"] is False
    assert {"segment", "read", "write"} <= {e.get("stage") for e in events}
    assert _leftovers(out) == []


def test_seg_nrrd_output_named_coloured_segments(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    image = _two_lesion_case(tmp_path / "in", "a", system="LPS")
    summary = run_batch(_config(tmp_path, OracleModel(), output_format="seg.nrrd"))
    volume, segments = read_segmentation(tmp_path / "out" / "a.seg.nrrd")
    assert [(s.label_value, s.name) for s in segments] == [(1, "first"), (2, "second")]
    assert [s.color_rgb for s in segments] == [default_color(1), default_color(2)]
    assert _dice(volume.array == 1, _blob_mask(0)) > 0.75
    assert _dice(volume.array == 2, _blob_mask(1)) > 0.75
    details = summary.results[0].lesion_details
    assert [d["voxels"] for d in details] == [np.count_nonzero(volume.array == v) for v in (1, 2)]
    _same_grid(tmp_path / "out" / "a.seg.nrrd", image)
    np.testing.assert_allclose(volume.ijk_to_ras, read_volume(tmp_path / "in" / "a.nii.gz")
                               .ijk_to_ras, atol=1e-9)


def test_csv_seeds_lps_recursive_and_unmatched(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "site1").mkdir(parents=True)
    image = _image()
    sitk.WriteImage(image, str(folder / "site1" / "p01.nrrd"))
    sitk.WriteImage(image, str(folder / "p02.nii.gz"))

    def lps(ijk):
        r, a, s = _ras(image, ijk)
        return f"{-r},{-a},{s}"

    seeds = tmp_path / "seeds.csv"
    seeds.write_text(
        "case,x,y,z,label,lesion\n"
        f"p01,{lps(BLOBS[1][0])},+,big\n"          # matched by its file stem
        f"site1/p01,{lps(BLOBS[0][0])},1,small\n"  # matched by its case id
        f"p02.nii.gz,{lps((36, 4, 3))},-,\n"       # negative only -> no_seeds
        f"ghost,{lps((1, 1, 1))},+,\n", encoding="utf-8")
    events: list[dict] = []
    summary = run_batch(_config(tmp_path, OracleModel(), seeds=str(seeds), csv_space="LPS",
                                recursive=True), progress=events.append)
    assert [(r.case, r.status) for r in summary.results] == [("p02", "no_seeds"),
                                                            ("site1/p01", "ok")]
    assert "negative" in summary.results[0].error
    assert summary.unmatched_seed_cases == ["ghost"]
    assert events[-1]["unmatched_seed_cases"] == ["ghost"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out/site1/p01.nii.gz")))
    assert _dice(labels == 1, _blob_mask(1)) > 0.75  # lesion "big" came first
    assert _dice(labels == 2, _blob_mask(0)) > 0.75


def test_resume_after_stop_skips_finished_cases(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        _one_lesion_case(folder, name)
    out = tmp_path / "out"

    # Interrupted: the stop flag goes up once the first case is reported.
    flag = {"stop": False}

    def progress(event: dict) -> None:
        if event["event"] == "case":
            flag["stop"] = True

    model = OracleModel()
    first = run_batch(_config(tmp_path, model), progress=progress, stop=lambda: flag["stop"])
    assert first.stopped and [r.case for r in first.results] == ["a"]
    assert json.loads((out / "summary.json").read_text())["stopped"] is True
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz"]
    assert len((out / "sgpsam_batch.jsonl").read_text().splitlines()) == 1
    mtime = (out / "a.nii.gz").stat().st_mtime_ns

    # Resumed: "a" is skipped (no model call), its numbers are kept; "b" is done.
    model2 = OracleModel()
    second = run_batch(_config(tmp_path, model2))
    assert [(r.case, r.status) for r in second.results] == [("a", "skipped"), ("b", "ok")]
    assert model2.encode_calls == 1 and model2.decode_calls == 1
    assert (out / "a.nii.gz").stat().st_mtime_ns == mtime
    assert second.results[0].voxels == first.results[0].voxels > 0

    # Changed seeds redo that case only; --overwrite redoes everything.
    _markups(folder / "b.mrk.json", [("lesion", [(_ras(_image(), BLOBS[0][0]), "F-1")])])
    model3 = OracleModel()
    third = run_batch(_config(tmp_path, model3))
    assert [r.status for r in third.results] == ["skipped", "ok"]
    assert model3.encode_calls == 1
    model4 = OracleModel()
    fourth = run_batch(_config(tmp_path, model4, overwrite=True))
    assert [r.status for r in fourth.results] == ["ok", "ok"] and model4.encode_calls == 2
    assert (out / "a.nii.gz").stat().st_mtime_ns != mtime


def test_stop_inside_a_case_leaves_no_partial_output(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _two_lesion_case(tmp_path / "in", "a")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.tmp0123abcd.nii.gz"  # what a hard-killed earlier write leaves behind
    stale.write_bytes(b"partial")
    flag = {"stop": False}

    def progress(event: dict) -> None:
        if event["event"] == "progress" and event.get("lesion") == 2:
            flag["stop"] = True  # raised while lesion 1 is done and lesion 2 is next

    stopped = run_batch(_config(tmp_path, OracleModel()), progress=progress,
                        stop=lambda: flag["stop"])
    assert stopped.stopped and stopped.results == []
    assert not (out / "a.nii.gz").exists()
    assert json.loads((out / "summary.json").read_text())["cases"] == []
    # The rerun finishes the case and clears the stale temporary of that output.
    again = run_batch(_config(tmp_path, OracleModel()))
    assert [r.status for r in again.results] == ["ok"]
    assert (out / "a.nii.gz").is_file() and not stale.exists()
    assert _leftovers(out) == []


def test_shard_runs_cover_every_case_once_then_merge(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["c1", "c2", "c3"]
    small = _image(size=(24, 24, 12), blobs=[((12.0, 12.0, 6.0), 8.0)])
    for name in names:
        sitk.WriteImage(small, str(folder / f"{name}.nii.gz"))
        _markups(folder / f"{name}.mrk.json", [("l", [(_ras(small, (12, 12, 6)), "F-1")])])
    out = tmp_path / "out"
    seen: list[str] = []
    calls = 0
    for index in range(2):
        model = OracleModel()
        summary = run_batch(_config(tmp_path, model, shard=(index, 2)))
        calls += model.encode_calls
        seen += [r.case for r in summary.results]
        assert all(r.status == "ok" for r in summary.results)
        assert (out / f"summary_shard{index}of2.csv").is_file()
        assert (out / f"sgpsam_batch_shard{index}of2.jsonl").is_file()
    assert sorted(seen) == names and calls == len(names)  # each case exactly once
    assert not (out / "summary.csv").exists()
    # A final run without shards skips everything and writes the whole summary.
    model = OracleModel()
    merged = run_batch(_config(tmp_path, model))
    assert [r.status for r in merged.results] == ["skipped"] * 3 and model.encode_calls == 0
    with open(out / "summary.csv", newline="") as f:
        assert [r["case"] for r in csv.DictReader(f)] == names


def test_run_rejects_bad_configuration(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(VolumeIOError, match="is the input folder"):
        run_batch(_config(tmp_path, OracleModel(), output=tmp_path / "in"))
    with pytest.raises(VolumeIOError, match="not a folder"):
        run_batch(_config(tmp_path, OracleModel(), input=tmp_path / "missing"))
    with pytest.raises(SGPSAMError, match="output format"):
        run_batch(_config(tmp_path, OracleModel(), output_format="png"))
    with pytest.raises(SGPSAMError, match="shard"):
        run_batch(_config(tmp_path, OracleModel(), shard=(2, 2)))
    with pytest.raises(SGPSAMError, match="checkpoint|model"):
        run_batch(_config(tmp_path, str(tmp_path / "nothing.pt")))
    (tmp_path / "bad.csv").write_text("case,x,y,z\nc,1,2,oops\n")
    with pytest.raises(SGPSAMError, match="bad.csv:2"):
        run_batch(_config(tmp_path, OracleModel(), seeds=str(tmp_path / "bad.csv")))


def test_seed_outside_the_image_fails_that_case_only(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    image = _one_lesion_case(folder, "a")
    _one_lesion_case(folder, "b")
    _markups(folder / "a.mrk.json", [("far", [(_ras(image, (400, 10, 10)), "F-9")])])
    summary = run_batch(_config(tmp_path, OracleModel()))
    assert [r.status for r in summary.results] == ["failed", "ok"]
    assert "a.mrk.json point 'F-9'" in summary.results[0].error
    assert "outside the image" in summary.results[0].error


def test_real_shared_volumes(tmp_path: Path) -> None:
    """Real NIfTI (BraTS FLAIR) and NRRD (pyradiomics brain1) files, seeds at the lesion centre."""
    manifest_path = SHARED / "data" / "manifest.json"
    if not manifest_path.is_file():
        pytest.skip(f"shared data not found at {manifest_path}")
    manifest = {c["id"]: c for c in json.loads(manifest_path.read_text())["cases"]}
    folder = tmp_path / "in"
    folder.mkdir()
    rows = ["case,x,y,z,label,lesion"]
    expected = {}
    for case_id in ("brats2021_01646_flair", "pyradiomics_brain1"):
        entry = manifest[case_id]
        source = SHARED / "data" / entry["image"]
        suffix = ".nii.gz" if source.name.endswith(".nii.gz") else source.suffix
        target = folder / f"{case_id}{suffix}"
        shutil.copy(source, target)
        volume = read_volume(target)
        low, high = (np.asarray(v, dtype=float) for v in entry["target_bbox_ijk"])
        r, a, s = volume.ijk_to_ras_points((low + high) / 2.0)
        rows.append(f"{case_id},{r},{a},{s},+,{entry['default_target']}")
        expected[case_id] = (target, entry)
    (tmp_path / "seeds.csv").write_text("\n".join(rows) + "\n")
    summary = run_batch(_config(tmp_path, OracleModel(), seeds=str(tmp_path / "seeds.csv")))
    assert [r.status for r in summary.results] == ["ok", "ok"], [r.error for r in summary.results]
    for result in summary.results:
        target, entry = expected[result.case]
        source = sitk.ReadImage(str(target))
        _same_grid(Path(result.output), source)
        assert list(sitk.ReadImage(result.output).GetSize()) == entry["size_xyz"]
        labels = sitk.GetArrayFromImage(sitk.ReadImage(result.output))
        assert set(np.unique(labels)) <= {0, 1} and result.voxels == np.count_nonzero(labels)
        assert result.lesion_details[0]["name"] == entry["default_target"]


# ------------------------------------------------------------------------------------------------
# The command line.

@pytest.fixture
def oracle_loader(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make ``load_model`` hand out oracle models, recording each call."""
    calls: list = []

    def fake_load_model(path, device="cpu", preset=None):
        calls.append(Path(path))
        return OracleModel()

    monkeypatch.setattr(build, "load_model", fake_load_model)
    return calls


def _checkpoint_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"not read: load_model is replaced in this test")
    return path


def test_cli_json_progress_loads_the_model_once(tmp_path: Path, oracle_loader: list,
                                                capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        _one_lesion_case(folder, name)
    sitk.WriteImage(_image(size=(6, 6, 4), blobs=[]), str(folder / "c.nii.gz"))
    model = _checkpoint_file(tmp_path)
    code = main(["batch", str(folder), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--format", "seg.nrrd", "--device", "cpu", "--json-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert all("event" in r for r in records)
    assert records[0]["event"] == "start" and records[-1]["event"] == "done"
    cases = [r for r in records if r["event"] == "case"]
    assert [(r["case"], r["status"]) for r in cases] == [("a", "ok"), ("b", "ok"),
                                                         ("c", "no_seeds")]
    assert set(SUMMARY_COLUMNS) <= set(cases[0])
    progress = [r for r in records if r["event"] == "progress"]
    assert progress and {"step", "total_steps", "case", "stage", "eta_s"} <= set(progress[0])
    assert records[-1]["counts"] == {"ok": 2, "skipped": 0, "no_seeds": 1, "failed": 0}
    assert oracle_loader == [model]  # once for the whole run
    assert (tmp_path / "out" / "a.seg.nrrd").is_file()

    # Text mode: resumed run, a bar on stderr and one summary line on stdout.
    code = main(["batch", str(folder), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--format", "seg.nrrd", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.startswith("done: 0 ok, 2 skipped, 1 without seeds, 0 failed")
    assert "c: no seeds" in captured.err
    assert oracle_loader == [model]  # nothing left to segment: the model is not even loaded


def test_cli_sigterm_stops_cleanly(tmp_path: Path, oracle_loader: list,
                                   capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        _one_lesion_case(folder, name)
    printed = []
    original = cli_batch.print_record

    def print_and_terminate(record: dict) -> None:
        original(record)
        printed.append(record)
        if record["event"] == "case" and len([r for r in printed if r["event"] == "case"]) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what Slicer's Stop button sends

    monkeypatch.setattr(cli_batch, "print_record", print_and_terminate)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["batch", str(folder), "--model", str(_checkpoint_file(tmp_path)), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--json-progress"])
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["event"] == "done" and records[-1]["stopped"] is True
    assert [r["case"] for r in records if r["event"] == "case"] == ["a"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["a.nii.gz"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["stopped"] is True


def test_cli_stop_file_stops_like_sigterm(tmp_path: Path, oracle_loader: list,
                                          capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--stop-file: what Slicer's Stop uses on every platform (no signal needed)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        _one_lesion_case(folder, name)
    stop_file = tmp_path / "stop"
    original = cli_batch.print_record

    def print_and_request_stop(record: dict) -> None:
        original(record)
        if record["event"] == "case":
            stop_file.touch()

    monkeypatch.setattr(cli_batch, "print_record", print_and_request_stop)
    code = main(["batch", str(folder), "--model", str(_checkpoint_file(tmp_path)), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--json-progress",
                 "--stop-file", str(stop_file)])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["event"] == "done" and records[-1]["stopped"] is True
    assert [r["case"] for r in records if r["event"] == "case"] == ["a"]


@pytest.mark.parametrize("extra, message", [
    (["--shard", "3/3"], "shard index must satisfy"),
    (["--seeds", "absent.csv"], "--seeds absent.csv: no such file"),
    (["--max-windows", "0"], "--max-windows 0"),
])
def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list,
                          message: str) -> None:
    (tmp_path / "in").mkdir()
    code = main(["batch", str(tmp_path / "in"), "--model", "m.pt", "--out",
                 str(tmp_path / "out"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_input_error_is_reported_as_json(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "seeds.csv"
    bad.write_text("case,x,y,z,label\nc,1,2,3,sometimes\n")
    (tmp_path / "in").mkdir()
    code = main(["batch", str(tmp_path / "in"), "--model", str(_checkpoint_file(tmp_path)),
                 "--out", str(tmp_path / "out"), "--seeds", str(bad), "--device", "cpu",
                 "--json-progress"])
    captured = capsys.readouterr()
    assert code == 2
    (record,) = [json.loads(line) for line in captured.out.splitlines()]
    assert record["event"] == "error" and "seeds.csv:2" in record["message"]
    assert captured.err.startswith("sgpsam: error:") and "seeds.csv:2" in captured.err
    code = main(["batch", str(tmp_path / "in"), "--model", str(tmp_path / "none.pt"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 2 and "none.pt" in capsys.readouterr().err


def test_cli_real_tiny_checkpoint_end_to_end(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """No stand-ins: a saved tiny checkpoint, loaded by the CLI, one case, one lesion."""
    torch.manual_seed(0)
    checkpoint = build.save_checkpoint(build.build_model("tiny"), tmp_path / "tiny.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    image = _one_lesion_case(folder, "a")
    code = main(["batch", str(folder), "--model", str(checkpoint), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--max-windows", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    done = json.loads(captured.out)
    assert done["counts"]["ok"] == 1, done
    _same_grid(tmp_path / "out" / "a.nii.gz", image)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "a.nii.gz")))
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["cases"][0]
    assert row["voxels"] == np.count_nonzero(labels) and set(np.unique(labels)) <= {0, 1}
    assert row["model"] == str(checkpoint.resolve())


def test_batch_module_has_no_import_of_torch_at_module_level() -> None:
    """``sgpsam --help`` stays fast: the batch modules import torch only when they run."""
    source = "".join(Path(module.__file__).read_text()
                     for module in (batch_module, batch_inputs, cli_batch))
    top_level = [line for line in source.splitlines()
                 if line.startswith(("import torch", "from torch", "from .session",
                                     "from .build"))]
    assert top_level == []


def test_a_failing_progress_callback_ends_the_run_with_its_error(tmp_path: Path) -> None:
    """The caller's bug is not a case failure: it propagates, and the summary is written."""
    (tmp_path / "in").mkdir()
    _one_lesion_case(tmp_path / "in", "a")

    def progress(event: dict) -> None:
        if event["event"] == "progress":
            raise BrokenPipeError("parent went away")

    with pytest.raises(BrokenPipeError, match="parent went away"):
        run_batch(_config(tmp_path, OracleModel()), progress=progress)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["cases"] == []


def test_nearby_lesions_of_a_case_share_one_encoder_pass(tmp_path: Path) -> None:
    """The second lesion's first seed lies in the central half of the first lesion's region:
    with reuse_regions the session reuses that embedding (``reuse_encoded_region``)."""
    (tmp_path / "in").mkdir()
    _two_lesion_case(tmp_path / "in")
    seen = {}
    for reuse in (True, False):
        model = OracleModel()
        summary = run_batch(_config(tmp_path, model, output=tmp_path / f"out_{reuse}",
                                    reuse_regions=reuse, max_windows=1,
                                    extend_at_border=False))
        result = summary.results[0]
        assert result.status == "ok" and result.lesions == 2
        seen[reuse] = ([d["encoded_regions"] for d in result.lesion_details],
                       model.encode_calls, [d["voxels"] for d in result.lesion_details])
    assert seen[True][:2] == ([1, 0], 1)
    assert seen[False][:2] == ([1, 1], 2)
    assert all(v > 0 for v in seen[True][2])
