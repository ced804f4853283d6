"""Dependency check and install plan for Slicer, with fake installers (no slicer needed)."""
from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from SGPSAMSlicerLib.dependencies import (
    REQUIREMENTS,
    UNKNOWN_VERSION,
    DependencyError,
    MissingDependency,
    check_dependencies,
    confirmation_text,
    install_missing,
    installed_version,
    parse_version,
    plan_installation,
    version_at_least,
)

ALL_GOOD = {"torch": "2.4.1+cu121", "monai": "1.4.0", "SimpleITK": "2.4.0", "numpy": "1.26.4",
            "tqdm": "4.66.0"}


class FakeEnvironment:
    """Installed versions plus installers that change them, recording every call."""

    def __init__(self, versions: dict[str, str | None], torch_gives: str | None = "2.5.1+cu124",
                 pip_gives: dict[str, str] | None = None) -> None:
        self.versions = dict(versions)
        self.torch_gives = torch_gives
        self.pip_gives = pip_gives if pip_gives is not None else {"monai": "1.4.0",
                                                                  "tqdm": "4.67.1"}
        self.calls: list[tuple[str, Any]] = []

    def version_of(self, name: str) -> str | None:
        return self.versions.get(name)

    def torch_installer(self, requirement: str) -> Any:
        self.calls.append(("torch", requirement))
        if self.torch_gives is None:
            return None  # the user cancelled PyTorchUtils' dialog
        self.versions["torch"] = self.torch_gives
        return object()  # stands for the torch module

    def pip_install(self, requirements: list[str]) -> None:
        self.calls.append(("pip", list(requirements)))
        for spec in requirements:
            name = spec.split(">=")[0].split("==")[0]
            if name in self.pip_gives:
                self.versions[name] = self.pip_gives[name]


@pytest.mark.parametrize(("found", "minimum", "expected"), [
    ("2.1", "2.1", True), ("2.1.0", "2.1", True), ("2.0.9", "2.1", False),
    ("2.10.0", "2.9", True), ("10.0", "9.99", True), ("2.1.0+cu121", "2.1", True),
    ("2.1.0rc1", "2.1", False), ("2.1.0a0+git1234", "2.1", False), ("2.2.0.dev20240101", "2.1",
                                                                   True),
    ("2.1.dev0", "2.1a1", False), ("2.1a1", "2.1.dev0", True), ("2.1b2", "2.1b10", False),
    ("2.1rc1", "2.1b9", True), ("2.1.post1", "2.1", True), ("2.1", "2.1.post1", False),
    ("1.3.0", "1.3", True), ("1.2.9", "1.3", False), ("1!0.1", "2.1", True),
    ("v2.3", "2.1", True), ("2.1-1", "2.1", True),
])
def test_version_at_least(found: str, minimum: str, expected: bool) -> None:
    assert version_at_least(found, minimum) is expected


def test_parse_version_keys_and_garbage() -> None:
    assert parse_version("2.1") == parse_version("2.1.0") == parse_version("2.1.0+cpu")
    assert parse_version("not a version") is None and parse_version("") is None
    assert version_at_least("weird-build", "2.1") is True  # cannot compare: do not block


def test_nothing_missing() -> None:
    assert check_dependencies(version_of=ALL_GOOD.get) == []
    assert "are installed" in confirmation_text([])


def test_missing_and_too_old_in_installation_order() -> None:
    versions = dict(ALL_GOOD, torch=None, monai="1.2.0", tqdm=None)
    problems = check_dependencies(version_of=versions.get)
    assert problems == [
        MissingDependency("torch", ">=2.1", None, "pytorch", "PyTorch"),
        MissingDependency("monai", ">=1.3", "1.2.0", "pip", "MONAI"),
        MissingDependency("tqdm", "any version", None, "pip", "tqdm"),
    ]
    assert problems[1].message == "MONAI >=1.3: version 1.2.0 is too old (installed with pip)"
    plan = plan_installation(problems)
    assert plan.torch == ">=2.1" and plan.pip == ("monai>=1.3", "tqdm") and plan.manual == ()
    text = confirmation_text(problems)
    assert "PyTorch >=2.1: not installed" in text and "PyTorch extension" in text
    assert "monai>=1.3 tqdm" in text and text.endswith("Install now?")


def test_unknown_version_counts_as_present() -> None:
    versions = dict(ALL_GOOD, SimpleITK=UNKNOWN_VERSION, torch=UNKNOWN_VERSION)
    assert check_dependencies(version_of=versions.get) == []


def test_install_torch_first_then_pip_with_pins() -> None:
    env = FakeEnvironment(dict(ALL_GOOD, torch=None, monai=None, tqdm=None))
    problems = check_dependencies(version_of=env.version_of)
    result = install_missing(problems, env.pip_install, env.torch_installer,
                             version_of=env.version_of)
    assert env.calls == [
        ("torch", ">=2.1"),
        ("pip", ["monai>=1.3", "tqdm", "torch==2.5.1+cu124", "SimpleITK==2.4.0",
                 "numpy==1.26.4"]),
    ]
    assert result.installed == ("torch", "monai", "tqdm") and result.restart_required is False
    assert check_dependencies(version_of=env.version_of) == []


def test_only_pip_packages_missing_keeps_torch() -> None:
    env = FakeEnvironment(dict(ALL_GOOD, tqdm=None))
    install_missing(check_dependencies(version_of=env.version_of), env.pip_install,
                    env.torch_installer, version_of=env.version_of)
    assert env.calls == [("pip", ["tqdm", "torch==2.4.1+cu121", "SimpleITK==2.4.0",
                                  "numpy==1.26.4"])]


def test_upgrading_an_imported_package_needs_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    env = FakeEnvironment(dict(ALL_GOOD, monai="1.2.0"))
    problems = check_dependencies(version_of=env.version_of)
    # As if the old monai were imported already: the new one needs a fresh Slicer.
    monkeypatch.setitem(sys.modules, "monai", sys.modules.get("monai") or types.ModuleType("m"))
    result = install_missing(problems, env.pip_install, env.torch_installer,
                             version_of=env.version_of)
    assert result.installed == ("monai",) and result.restart_required is True
    monkeypatch.delitem(sys.modules, "monai")
    fresh = FakeEnvironment(dict(ALL_GOOD, monai="1.2.0"))
    result = install_missing(problems, fresh.pip_install, fresh.torch_installer,
                             version_of=fresh.version_of)
    assert result.restart_required is False


def test_bundled_package_missing_installs_nothing() -> None:
    env = FakeEnvironment(dict(ALL_GOOD, SimpleITK=None, torch=None))
    problems = check_dependencies(version_of=env.version_of)
    assert plan_installation(problems).manual == (
        MissingDependency("SimpleITK", "any version", None, "slicer", "SimpleITK"),)
    assert "reinstall 3D Slicer" in confirmation_text(problems)
    with pytest.raises(DependencyError, match="SimpleITK any version: not installed"):
        install_missing(problems, env.pip_install, env.torch_installer,
                        version_of=env.version_of)
    assert env.calls == []


def test_torch_installer_problems() -> None:
    env = FakeEnvironment(dict(ALL_GOOD, torch=None, tqdm=None))
    problems = check_dependencies(version_of=env.version_of)
    with pytest.raises(DependencyError, match="install the 'PyTorch' extension"):
        install_missing(problems, env.pip_install, None, version_of=env.version_of)
    cancelled = FakeEnvironment(dict(ALL_GOOD, torch=None), torch_gives=None)
    with pytest.raises(DependencyError, match="PyTorch was not installed"):
        install_missing(check_dependencies(version_of=cancelled.version_of),
                        cancelled.pip_install, cancelled.torch_installer,
                        version_of=cancelled.version_of)
    assert cancelled.calls == [("torch", ">=2.1")]  # pip never ran
    too_old = FakeEnvironment(dict(ALL_GOOD, torch="1.13.1"), torch_gives="2.0.1")
    with pytest.raises(DependencyError, match=r"version 2.0.1 is too old.*restart"):
        install_missing(check_dependencies(version_of=too_old.version_of),
                        too_old.pip_install, too_old.torch_installer,
                        version_of=too_old.version_of)


def test_pip_failure_and_still_missing() -> None:
    env = FakeEnvironment(dict(ALL_GOOD, monai=None))

    def broken(requirements: list[str]) -> None:
        raise RuntimeError("no network")

    with pytest.raises(DependencyError, match="pip install monai>=1.3 .* failed: no network"):
        install_missing(check_dependencies(version_of=env.version_of), broken,
                        env.torch_installer, version_of=env.version_of)
    stale = FakeEnvironment(dict(ALL_GOOD, monai=None), pip_gives={"monai": "1.2.0"})
    with pytest.raises(DependencyError, match="still missing after installing: MONAI >=1.3: "
                                              "version 1.2.0 is too old"):
        install_missing(check_dependencies(version_of=stale.version_of), stale.pip_install,
                        stale.torch_installer, version_of=stale.version_of)


def test_real_metadata_lookup_in_this_environment() -> None:
    # The test environment has every requirement (it runs SGPSAMLib's own tests).
    by_name = {r.name: r for r in REQUIREMENTS}
    import numpy

    assert installed_version(by_name["numpy"]) == numpy.__version__
    assert check_dependencies() == []
    ghost = type(by_name["tqdm"])("sgpsam-no-such-package", None, "pip", "Ghost",
                                  "sgpsam_no_such_module")
    assert installed_version(ghost) is None
    assert check_dependencies([ghost]) == [
        MissingDependency("sgpsam-no-such-package", "any version", None, "pip", "Ghost")]


# ----------------------------------------------------------------------------------------------
# Per action (issue 15, item 13): each action checks what it imports, and only that.

def test_each_action_checks_only_what_it_needs() -> None:
    from SGPSAMSlicerLib.dependencies import ACTIONS, requirements_for

    fresh = {"torch": "2.4.1", "SimpleITK": "2.4.0", "numpy": "1.26.4"}  # no monai, no tqdm
    assert check_dependencies(requirements_for("segment"), fresh.get) == []
    assert check_dependencies(requirements_for("batch"), fresh.get) == []
    assert [p.name for p in check_dependencies(requirements_for("train"), fresh.get)] == [
        "monai"]
    no_torch = {"SimpleITK": "2.4.0", "numpy": "1.26.4"}
    for action in ACTIONS:
        assert [p.name for p in check_dependencies(requirements_for(action),
                                                   no_torch.get)][:1] == ["torch"]
    with pytest.raises(ValueError, match="unknown action 'paint'"):
        requirements_for("paint")


_BLOCKED_RUN = '''
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
action, folder = sys.argv[2], sys.argv[3]
import numpy as np
if action == "segment":
    from SGPSAMLib.build import build_model
    from SGPSAMLib.geometry import Volume
    from SGPSAMLib.session import InteractiveSession
    session = InteractiveSession(build_model("tiny", image_size=64), device="cpu")
    rng = np.random.default_rng(0)
    session.set_volume(Volume(rng.normal(100, 10, (24, 24, 24)).astype(np.float32), np.eye(4)))
    prediction = session.add_point((12.0, 12.0, 12.0))
    print(json.dumps({"voxels": int(prediction.mask.sum())}))
elif action == "batch":
    from SGPSAMLib.cli import main
    sys.exit(main(["batch", folder + "/in", "--model", folder + "/tiny.pt", "--out",
                   folder + "/out", "--device", "cpu", "--json-progress"]))
else:
    import SGPSAMLib.training.trainer  # noqa: F401
'''


def _run_blocked(tmp_path, action: str, blocked: str):
    import subprocess  # noqa: PLC0415

    from SGPSAMSlicerLib.interpreter import child_environment  # noqa: PLC0415

    return subprocess.run([sys.executable, "-c", _BLOCKED_RUN, blocked, action, str(tmp_path)],
                          capture_output=True, text=True, env=child_environment(), timeout=300)


def test_segment_and_batch_run_without_monai_and_tqdm(tmp_path) -> None:
    """The subsets are enough: inference and ``sgpsam batch --json-progress`` never import
    MONAI or tqdm, while training cannot do without MONAI."""
    pytest.importorskip("torch")
    import json  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from SGPSAMLib.build import build_model, save_checkpoint  # noqa: PLC0415
    from SGPSAMLib.geometry import Volume  # noqa: PLC0415
    from SGPSAMLib.io import write_volume  # noqa: PLC0415

    done = _run_blocked(tmp_path, "segment", "monai,tqdm")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["voxels"] >= 0

    (tmp_path / "in").mkdir()
    save_checkpoint(build_model("tiny", image_size=64), tmp_path / "tiny.pt")
    rng = np.random.default_rng(1)
    volume = Volume(rng.normal(100, 10, (24, 24, 24)).astype(np.float32), np.eye(4), "case")
    write_volume(volume, tmp_path / "in" / "case.nii.gz")
    (tmp_path / "in" / "case.mrk.json").write_text(json.dumps({"markups": [{
        "type": "Fiducial", "name": "lesion", "coordinateSystem": "RAS", "controlPoints": [
            {"id": "1", "label": "F-1", "position": [12.0, 12.0, 12.0],
             "positionStatus": "defined"}]}]}), encoding="utf-8")
    done = _run_blocked(tmp_path, "batch", "monai,tqdm")
    assert done.returncode == 0, done.stderr
    cases = [json.loads(line) for line in done.stdout.splitlines() if '"case"' in line]
    assert [(c["case"], c["status"]) for c in cases if c["event"] == "case"] == [("case", "ok")]

    done = _run_blocked(tmp_path, "train", "monai")
    assert done.returncode != 0 and "monai" in done.stderr
