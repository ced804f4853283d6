"""SGPSAMLib must run outside Slicer: it never imports slicer, qt, vtk, ctk or PythonQt."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import SGPSAMLib

FORBIDDEN = ("slicer", "qt", "vtk", "ctk", "PythonQt")
PACKAGE_DIR = Path(SGPSAMLib.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import SGPSAMLib
names = [m.name for m in pkgutil.walk_packages(SGPSAMLib.__path__, "SGPSAMLib.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def _forbidden(name: str) -> bool:
    top = name.split(".")[0].lower()
    return any(top.startswith(bad.lower()) for bad in FORBIDDEN)


def test_forbidden_predicate() -> None:
    assert _forbidden("slicer.util") and _forbidden("qt") and _forbidden("vtkmodules.all")
    assert _forbidden("PythonQt.QtGui") and _forbidden("ctk") and _forbidden("qtpy")
    assert not _forbidden("SGPSAMLib.session") and not _forbidden("torch")


def _fresh_python(code: str) -> dict:
    """Run ``code`` in a new interpreter (this checkout first on the path) -> its last line,
    parsed as JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_submodule_loads_no_slicer_module() -> None:
    report = _fresh_python(_IMPORT_ALL)
    assert "SGPSAMLib.cli" in report["modules"] and "SGPSAMLib.losses" in report["modules"]
    assert [name for name in report["loaded"] if _forbidden(name)] == []


def test_no_source_file_imports_slicer_modules() -> None:
    offenders = []
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {n}"
                          for n in names if _forbidden(n)]
    assert offenders == []


_LAYERS = """
import json, sys
import SGPSAMLib.boxes, SGPSAMLib.job, SGPSAMLib.options, SGPSAMLib.presets
light = sorted(n for n in ("torch", "numpy", "SimpleITK", "monai") if n in sys.modules)
import SGPSAMLib.cases, SGPSAMLib.evaluation
training = sorted(n for n in sys.modules if n.startswith(("SGPSAMLib.training", "monai")))
print(json.dumps({"light": light, "training": training}))
"""


def test_vocabulary_boxes_job_and_presets_are_light_and_evaluation_needs_no_training() -> None:
    """The modules the parser and the Slicer module import first pull in no torch, numpy or
    SimpleITK; the case reader shared by evaluation and training imports neither training nor
    MONAI (evaluation used to import training.data, and with it the trainer)."""
    assert _fresh_python(_LAYERS) == {"light": [], "training": []}
