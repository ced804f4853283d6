"""Make the bundled demo model from nothing: data, training, export. One command, seeded.

    python scripts/train_demo_model.py --work demo_run            # ~55 min on 2 CPU cores
    python scripts/train_demo_model.py --work demo_run --install  # ... and replace the bundled file

Steps (every one skipped when its output is already there, so a stopped run continues):

1. Synthetic training sets (``SGPSAMLib.synthetic``, seeds below 10000, which the demo and the
   held-out benchmarks never use): plain lesions as in the held-out sets; "varied" lesions
   (rim-enhancing with a necrotic core, mottled, subtle); large varied lesions (15-90 mm) on
   larger volumes. A small plain validation set (seeds 9000-9019).
2. Real training cases from ``../shared/data`` (the fixed list :data:`REAL_TRAIN`: a brain
   glioma in FLAIR and one thigh sarcoma in CT and MR); every other shared case stays held
   out for the benchmark. Images are linked, labels written as the manifest's default target
   (its largest connected component, the lesion the benchmark clicks). Nothing is copied into
   the repository.
3. ``sgpsam train --recipe demo`` on all of them with per-folder sampling weights, validated
   on the synthetic validation set; ``best.pt`` is the result.
4. Export: ``best.pt`` with its provenance kept but local paths replaced by folder names,
   written to ``--export`` (default ``<work>/sgpsam_demo.pt``); ``--install`` also copies it
   over ``SGPSAMLib/resources/sgpsam_demo.pt``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Shared cases trained on (by manifest id); all others are held out.
REAL_TRAIN = ("brats2015_pat0005", "sts_001_ct", "sts_001_mr_t1")

#: (folder, sgpsam synth options, sampling weight).
SYNTHETIC_SETS = (
    ("synth_plain", ["--cases", "300", "--seed", "0"], 0.45),
    ("synth_varied", ["--cases", "150", "--seed", "2000", "--appearance", "varied"], 0.2),
    ("synth_large", ["--cases", "100", "--seed", "5000", "--appearance", "varied",
                     "--shape", "144,144,64", "--diameter", "15,90"], 0.15),
)
REAL_WEIGHT = 0.2
VALIDATION_SET = ("synth_val", ["--cases", "20", "--seed", "9000"])


def _run(command: list[str]) -> None:
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True)


def _sgpsam() -> list[str]:
    return [sys.executable, "-m", "SGPSAMLib"]


def make_synthetic(work: Path) -> None:
    for name, options in [*((n, o) for n, o, _ in SYNTHETIC_SETS), VALIDATION_SET]:
        folder = work / name
        if (folder / "dataset.json").is_file():
            continue
        _run([*_sgpsam(), "synth", "--out", str(folder), *options])


def export_real_cases(work: Path, shared: Path) -> Path:
    """imagesTr/<id> links and labelsTr/<id> largest-component labels for :data:`REAL_TRAIN`."""
    from SGPSAMLib.cli.demo import load_shared_case
    from SGPSAMLib.io import write_labelmap

    folder = work / "real_train"
    images, labels = folder / "imagesTr", folder / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((shared / "manifest.json").read_text(encoding="utf-8"))
    by_id = {case["id"]: case for case in manifest["cases"]}
    for case_id in REAL_TRAIN:
        image_src = shared / by_id[case_id]["image"]
        suffix = ".nii.gz" if image_src.name.endswith(".nii.gz") else image_src.suffix
        image = images / f"{case_id}{suffix}"
        label = labels / f"{case_id}.nii.gz"
        if not image.exists():
            os.symlink(image_src.resolve(), image)
        if not label.exists():
            volume, lesion, _ = load_shared_case(case_id, root=shared, max_lesions=1)
            write_labelmap(lesion, volume, label)
    return folder


def train(work: Path, real: Path, steps: int | None, threads: int | None) -> Path:
    run = work / "run"
    data = [str(work / name) for name, _, _ in SYNTHETIC_SETS] + [str(real)]
    weights = [str(w) for _, _, w in SYNTHETIC_SETS] + [str(REAL_WEIGHT)]
    command = [*_sgpsam(), "train", "--recipe", "demo", "--data", *data,
               "--data-weights", *weights, "--val-data", str(work / VALIDATION_SET[0]),
               "--out", str(run), "--seed", "0"]
    if steps:
        command += ["--steps", str(steps)]
    if threads:
        command += ["--threads", str(threads)]
    if (run / "state.pt").is_file():
        command.append("--resume")
    _run(command)
    return run / "best.pt"


def export(best: Path, work: Path, target: Path) -> Path:
    """``best`` with local paths in its provenance reduced to folder names."""
    import torch

    from SGPSAMLib.io import atomic_write

    payload = torch.load(best, map_location="cpu", weights_only=True)
    prefix = str(work.resolve())

    def clean(value):
        if isinstance(value, str):
            value = value.replace(prefix + os.sep, "").replace(prefix, ".")
            return value.replace(str(Path.home()), "~")
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    payload["metadata"] = clean(payload["metadata"])
    payload["metadata"]["made_by"] = "scripts/train_demo_model.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        torch.save(payload, tmp)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path, help="working folder")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder with the shared cases' manifest.json")
    parser.add_argument("--steps", type=int, help="override the recipe's steps")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--export", type=Path, help="where to write the exported model")
    parser.add_argument("--install", action="store_true",
                        help="also replace SGPSAMLib/resources/sgpsam_demo.pt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    make_synthetic(work)
    real = export_real_cases(work, args.shared)
    best = train(work, real, args.steps, args.threads)
    target = export(best, work, args.export or work / "sgpsam_demo.pt")
    if args.install:
        shutil.copyfile(target, ROOT / "SGPSAMLib" / "resources" / "sgpsam_demo.pt")
    print(f"exported {target} ({target.stat().st_size / 1e6:.1f} MB) in "
          f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
