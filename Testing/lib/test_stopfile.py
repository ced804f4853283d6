"""``--stop-file`` (job.py): the platform-independent stop request of ``batch``, ``evaluate``
and ``train``."""
from __future__ import annotations

import argparse
from pathlib import Path

from SGPSAMLib.job import add_stop_file_option, stop_file_flag


def test_flag_is_true_once_the_file_exists_or_the_other_flag_is(tmp_path: Path) -> None:
    path = tmp_path / "stop"
    other = []
    flag = stop_file_flag(str(path), lambda: bool(other))
    assert flag() is False
    path.touch()
    assert flag() is True
    path.unlink()
    other.append(1)
    assert flag() is True
    assert stop_file_flag(None, None) is None
    signal_only = other.__len__
    assert stop_file_flag("", signal_only) is signal_only


def test_option_is_parsed(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_stop_file_option(parser)
    assert parser.parse_args([]).stop_file is None
    assert parser.parse_args(["--stop-file", str(tmp_path / "s")]).stop_file == \
        str(tmp_path / "s")
