"""Check that the code Slicer loads runs on an older Python (Slicer 5.4-5.8 ship Python 3.9).

Run it with the interpreter to check, from the repository root:
    /path/to/python3.9 .ci/check_python_compat.py

It needs only the standard library (no torch, numpy or Slicer for that Python), so it checks
what can be checked without them:
1. every ``.py`` file of ``SGPSAMLib/`` and ``SGPSAM/`` byte-compiles;
2. no call that only newer Pythons accept (``zip(strict=)``, ``dataclass(slots=/kw_only=)``,
   ``int.bit_count``, ``itertools.pairwise``, ``aiter``/``anext``) and no ``X | Y`` type union
   evaluated at run time (module-level aliases, ``isinstance``);
3. the torch-free modules import and run: the package, the model registry, the job protocol
   and the whole command-line parser (``--help`` of every command, ``sgpsam models --json``).
Prints one line per check and exits 1 on the first failure.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import py_compile
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("SGPSAMLib", "SGPSAM")
NEWER_KEYWORDS = {"zip": {"strict"}, "dataclass": {"slots", "kw_only"},
                  "field": {"kw_only"}}
NEWER_NAMES = {"pairwise", "aiter", "anext"}
NEWER_ATTRIBUTES = {"bit_count"}
BUILTIN_TYPES = {"int", "float", "complex", "str", "bytes", "bool", "list", "dict", "tuple",
                 "set", "frozenset", "type", "object"}


def _files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _is_type_union(node: ast.AST) -> bool:
    """``A | B`` that reads as a type union: an operand is None, a builtin type, a subscripted
    generic or a CamelCase class name (``os.O_RDONLY | os.O_CREAT`` is not one)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
        return False
    return any(_typeish(side) for side in (node.left, node.right))


def _typeish(node: ast.AST) -> bool:
    if _is_type_union(node) or isinstance(node, ast.Subscript):
        return True
    if isinstance(node, ast.Constant):
        return node.value is None
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name in BUILTIN_TYPES or bool(re.match(r"[A-Z][a-z]", name))


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for node in tree.body:  # module-level aliases such as `X = int | None` run at import
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                and _is_type_union(node.value):
            found.append(f"{where}:{node.lineno}: a '|' type union evaluated at import time")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _call_name(node)
            bad = NEWER_KEYWORDS.get(name, set()) & {k.arg for k in node.keywords if k.arg}
            if bad:
                found.append(f"{where}:{node.lineno}: {name}({', '.join(sorted(bad))}=...) "
                             "needs Python >= 3.10")
            if name in ("isinstance", "issubclass") and len(node.args) == 2 \
                    and _is_type_union(node.args[1]):
                found.append(f"{where}:{node.lineno}: {name} with an 'A | B' union")
        elif isinstance(node, ast.Name) and node.id in NEWER_NAMES:
            found.append(f"{where}:{node.lineno}: {node.id} needs Python >= 3.10")
        elif isinstance(node, ast.Attribute) and node.attr in NEWER_ATTRIBUTES:
            found.append(f"{where}:{node.lineno}: .{node.attr} needs Python >= 3.10")
    return found


def _run_cli(argv: list[str]) -> tuple[int, str]:
    from SGPSAMLib.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    return code, out.getvalue()


def main() -> int:
    version = ".".join(map(str, sys.version_info[:3]))
    files = _files()
    with tempfile.TemporaryDirectory() as tmp:
        for index, path in enumerate(files):
            try:
                py_compile.compile(str(path), cfile=str(Path(tmp) / f"{index}.pyc"), doraise=True)
            except py_compile.PyCompileError as exc:
                print(f"FAIL Python {version}: {exc.msg}")
                return 1
    print(f"ok   Python {version}: {len(files)} files of {', '.join(FOLDERS)} compile")
    problems = [problem for path in files for problem in _problems(path)]
    if problems:
        print(f"FAIL Python {version}: newer-Python constructs:\n  " + "\n  ".join(problems))
        return 1
    print(f"ok   Python {version}: no call or type union that needs a newer Python")

    sys.path.insert(0, str(ROOT))
    import SGPSAMLib
    from SGPSAMLib import errors, job, models  # noqa: F401 - importing is the check
    from SGPSAMLib.cli import COMMAND_MODULES, build_parser

    build_parser()
    for argv in (["--help"], *([name, "--help"] for name in COMMAND_MODULES)):
        code, text = _run_cli(list(argv))
        if code != 0 or not text.startswith("usage: sgpsam"):
            print(f"FAIL Python {version}: sgpsam {' '.join(argv)} -> exit {code}")
            return 1
    code, text = _run_cli(["models", "--json"])
    listed = [m["name"] for m in json.loads(text)["models"]] if code == 0 else []
    if listed != list(models.KNOWN_MODELS):
        print(f"FAIL Python {version}: sgpsam models --json -> exit {code}, {listed}")
        return 1
    heavy = sorted(m for m in ("torch", "numpy", "SimpleITK", "monai") if m in sys.modules)
    if heavy:
        print(f"FAIL Python {version}: the torch-free parts imported {heavy}")
        return 1
    print(f"ok   Python {version}: SGPSAMLib {SGPSAMLib.__version__}: package, models, job and "
          f"the parser of {len(COMMAND_MODULES)} commands import and run (--help, models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
