"""Training state files under kills (issue 14, items 8 and 9): a run hard-killed at any file
boundary of its checkpoint sequence (``kill -9`` in a child process, placed exactly by a hook
on ``os.replace`` rather than by timing) can always be continued, the continued run ends
bit-identical to an uninterrupted one, stale temporaries are removed, and a second run on the
same folder is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import _config, _state, data  # noqa: F401 - the fixture is used by name

from SGPSAMLib.errors import CheckpointError, SGPSAMError
from SGPSAMLib.runfiles import FolderInUse, FolderLock
from SGPSAMLib.training import TrainConfig, train

KILLER = """
import json, os, signal, sys
from SGPSAMLib.training import TrainConfig, train

config = TrainConfig(**json.loads(sys.argv[1]))
kill_at, where = int(sys.argv[2]), sys.argv[3]
real_replace, count = os.replace, [0]

def replace(src, dst):  # every atomic write of the run ends with one os.replace
    count[0] += 1
    if where == "before" and count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary is written, not yet renamed
    real_replace(src, dst)
    if where == "after" and count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
train(config)
"""


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _options(data, out, **kw) -> dict:  # noqa: F811 - `data` is the path here
    kw = {"steps": 2, "val_every": 1, "checkpoint_every": 1, "threads": 1, **kw}
    config = _config(data, out, **kw)
    options = config.to_dict()
    options["val_cases"] = list(options["val_cases"])
    return options


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("straight")
    return _state(train(TrainConfig(**_options(data, out))).last)


def _kill_child(options: dict, kill_at: int, where: str, tmp_path: Path) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    result = subprocess.run([sys.executable, str(script), json.dumps(options), str(kill_at),
                             where], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -9, result.stderr[-3000:]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# The first checkpoint's writes: best.pt (validation at step 1), then state.pt, then last.pt.
@pytest.mark.parametrize("kill_at, where, left", [
    (1, "after", {"best.pt"}),
    (2, "before", {"best.pt"}),
    (2, "after", {"best.pt", "state.pt"}),
    (3, "before", {"best.pt", "state.pt"}),
])
def test_a_run_killed_anywhere_continues_to_the_same_result(data, tmp_path, straight,  # noqa: F811
                                                            kill_at, where, left):
    out = tmp_path / "run"
    options = _options(data, out)
    _kill_child(options, kill_at, where, tmp_path)
    names = {p.name for p in out.iterdir()}
    assert {n for n in names if n.endswith(".pt") and not n.startswith(".")} == left
    stale = {n for n in names if ".tmp" in n}
    assert bool(stale) == (where == "before")  # the kill left the write's temporary behind
    # Continue with --resume (what the Training tab's Resume does) ...
    resumed = train(TrainConfig(**dict(options, resume=True)))
    assert resumed.steps == 2 and _same(_state(resumed.last), straight)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # item 9: temporaries gone
    assert not (out / ".sgpsam_train.lock").exists()


def test_a_plain_rerun_is_not_wedged_either(data, tmp_path, straight):  # noqa: F811
    """Killed after best.pt: the plain command again (no --resume) just starts over."""
    out = tmp_path / "run"
    options = _options(data, out)
    _kill_child(options, 1, "after", tmp_path)
    assert _same(_state(train(TrainConfig(**options)).last), straight)


def test_folder_of_the_old_write_order_is_recovered(data, tmp_path, straight):  # noqa: F811
    """Older versions wrote last.pt before state.pt: a kill in between left last.pt alone, and
    both a plain rerun ("add --resume") and --resume ("no state.pt") refused. Now the same
    unfinished run is recognised and started over; another or a finished run is not touched."""
    for resume in (False, True):
        out = tmp_path / f"run{int(resume)}"
        options = _options(data, out)
        _kill_child(options, 3, "after", tmp_path)  # best, state, last of step 1
        (out / "state.pt").unlink()  # what the old order left: last.pt of step 1 of 2
        result = train(TrainConfig(**dict(options, resume=resume)))
        assert _same(_state(result.last), straight)
    # A finished run whose state.pt was deleted is never started over ...
    finished = tmp_path / "finished"
    train(TrainConfig(**_options(data, finished)))
    (finished / "state.pt").unlink()
    with pytest.raises(SGPSAMError, match="another \\(or a finished\\) training run"):
        train(TrainConfig(**_options(data, finished)))
    # ... nor a run with other options.
    with pytest.raises(SGPSAMError, match="another \\(or a finished\\) training run"):
        train(TrainConfig(**_options(data, finished, lr=5e-4)))


def test_resume_rewrites_a_last_checkpoint_older_than_the_state(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    options = _options(data, out, steps=3)
    _kill_child(options, 2, "after", tmp_path)  # state.pt of step 1 written, last.pt not yet
    events = []
    train(TrainConfig(**dict(options, resume=True)), progress=events.append)
    checkpoints = [(e["kind"], e["step"]) for e in events if e["event"] == "checkpoint"]
    assert checkpoints[0] == ("last", 1)  # last.pt caught up with state.pt first


def test_second_run_on_the_same_folder_is_refused(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out, ".sgpsam_train.lock", "training run"):
        with pytest.raises(FolderInUse, match=f"{out} is in use by process {os.getpid()}"):
            train(TrainConfig(**_options(data, out)))
    assert not (out / "last.pt").exists()


def test_foreign_temporaries_are_left_alone(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    ours = [out / ".last.tmp0123abcd.pt", out / ".state.tmpdeadbeef.pt",
            out / ".best.tmp00000000.pt"]
    theirs = [out / ".notes.tmp0123abcd.txt", out / ".last.tmpXYZ.pt", out / "last.tmp.pt"]
    for path in ours + theirs:
        path.write_bytes(b"partial")
    train(TrainConfig(**_options(data, out, steps=1)))
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


def test_a_damaged_state_file_is_one_clear_error(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    options = _options(data, out, steps=1)
    train(TrainConfig(**options))
    state = torch.load(out / "state.pt", weights_only=True)
    state["model_config"] = dict(state["model_config"], embed_dim=96, num_heads=2)
    torch.save(state, out / "state.pt")
    with pytest.raises(CheckpointError, match="(?s)state.pt.*mis-shaped keys"):
        train(TrainConfig(**dict(options, steps=2, resume=True)))
    (out / "state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable training state.*empty"):
        train(TrainConfig(**dict(options, steps=2, resume=True)))
