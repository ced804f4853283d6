"""Qt-free parts of the SGPSAM Slicer module: MRML <-> SGPSAMLib, settings, tab logics.

Nothing in this package imports qt or ctk, so it runs in Slicer, in scripts and in pytest with
``slicer-core``. Running from source (``SGPSAM/`` added to Slicer's module paths) the library
is the repository root's ``SGPSAMLib``; installed, CMake puts it next to ``SGPSAM.py``.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("SGPSAMLib") is None:
    _here = Path(__file__).resolve()
    for _root in (_here.parents[1], _here.parents[2]):
        if (_root / "SGPSAMLib").is_dir():
            sys.path.insert(0, str(_root))
            break
