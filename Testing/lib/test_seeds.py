"""seeds.py: Slicer markups (RAS and LPS files, signs, lesions) and the cohort CSV."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SGPSAMLib.geometry import Volume, ijk_to_ras_matrix
from SGPSAMLib.seeds import (
    Seed,
    SeedFileError,
    group_lesions,
    parse_sign,
    read_markups,
    read_seed_csv,
    seeds_fingerprint,
)

# An oblique-ish geometry: permuted and flipped axes, anisotropic voxels (LPS, as ITK stores it).
SIZE = (30, 20, 12)  # x, y, z voxels
SPACING = (0.8, 1.1, 3.0)
ORIGIN_LPS = (12.5, -40.0, 7.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _reference() -> sitk.Image:
    image = sitk.Image(list(SIZE), sitk.sitkInt16)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(DIRECTION)
    return image


def _volume() -> Volume:
    matrix = ijk_to_ras_matrix(SPACING, ORIGIN_LPS, DIRECTION, space="LPS")
    return Volume(np.zeros(SIZE[::-1], dtype=np.int16), matrix, "ref")


def _markups(path: Path, nodes: list[dict]) -> Path:
    document = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/"
                           "Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
                "markups": nodes}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _node(points: list[dict], name: str | None = None, system: str | None = "LPS",
          units: object = "mm") -> dict:
    node: dict = {"type": "Fiducial", "controlPoints": points}
    if name is not None:
        node["name"] = name
    if system is not None:
        node["coordinateSystem"] = system
    if units is not None:
        node["coordinateUnits"] = units
    return node


def _point(position, label="F-1", description="", status="defined") -> dict:
    return {"id": label, "label": label, "description": description,
            "position": [float(v) for v in position], "positionStatus": status}


def test_markups_ras_lps_and_default_system_give_the_same_voxel(tmp_path: Path) -> None:
    ijk = (17.0, 6.0, 9.0)
    # The physical point from SimpleITK (LPS), independently of our geometry code.
    lps = np.array(_reference().TransformContinuousIndexToPhysicalPoint(ijk))
    ras = lps * np.array([-1.0, -1.0, 1.0])
    files = [
        _markups(tmp_path / "ras.mrk.json", [_node([_point(ras)], system="RAS")]),
        _markups(tmp_path / "lps.mrk.json", [_node([_point(lps)], system="LPS")]),
        # Slicer reads a node without "coordinateSystem" as LPS.
        _markups(tmp_path / "none.mrk.json", [_node([_point(lps)], system=None, units=None)]),
        _markups(tmp_path / "coded.mrk.json", [_node([_point(lps)], units={
            "codeValue": "mm", "codingSchemeDesignator": "UCUM", "codeMeaning": "millimeter"})]),
    ]
    volume = _volume()
    for path in files:
        (seed,) = read_markups(path)
        np.testing.assert_allclose(seed.ras, ras, atol=1e-9, err_msg=path.name)
        np.testing.assert_allclose(volume.ras_to_ijk_points(seed.ras), ijk, atol=1e-9)
        assert seed.positive is True


def test_markups_signs_lesions_and_shared_background(tmp_path: Path) -> None:
    p = [(float(n), 0.0, 0.0) for n in range(12)]
    path = _markups(tmp_path / "case.mrk.json", [
        _node([
            _point(p[0], "F-1"),                                   # Slicer default: positive
            _point(p[1], "F-2", "negative"),                       # a word in the description
            _point(p[2], "-"),                                     # a bare minus
            _point(p[3], "edge-"),                                 # trailing minus
            _point(p[4], "F-5", "lesion=second"),                  # moved to another lesion
            _point(p[5], "bg", "lesion:second"),                   # negative of that lesion
            _point(p[6], "F-7", status="undefined"),               # placement not finished
            _point(p[7], "F-8", status="preview"),
            _point(p[8], "+", "foreground"),
        ], name="tumour"),
        _node([_point(p[9], "B-1")], name="background"),           # shared negatives
        _node([_point(p[10], "F-1")], name="tumour"),              # same name, new lesion
        _node([_point(p[11], "F-1")]),                             # nameless
    ])
    seeds = read_markups(path)
    got = [(int(s.ras[0]), s.positive, s.lesion) for s in seeds]
    # ras = lps with x, y negated: the first coordinate of p[n] = n becomes -n.
    assert got == [(0, True, "tumour"), (-1, False, "tumour"), (-2, False, "tumour"),
                   (-3, False, "tumour"), (-4, True, "second"), (-5, False, "second"),
                   (-8, True, "tumour"), (-9, False, ""), (-10, True, "tumour_2"),
                   (-11, True, "lesion_4")]
    lesions = group_lesions(seeds)
    assert [(les.name, les.label_value) for les in lesions] == [
        ("tumour", 1), ("second", 2), ("tumour_2", 3), ("lesion_4", 4)]
    # The shared negative is appended to every lesion, after its own points.
    assert [int(s.ras[0]) for s in lesions[1].seeds] == [-4, -5, -9]
    assert all(les.seeds[-1].lesion == "" for les in lesions)
    assert "case.mrk.json point 'F-2'" in seeds[1].source


def test_markups_lesion_name_and_taken_names(tmp_path: Path) -> None:
    a = _markups(tmp_path / "c.liver.mrk.json", [_node([_point((1, 2, 3))], name="F")])
    b = _markups(tmp_path / "c.lung.mrk.json", [_node([_point((4, 5, 6))], name="F")])
    taken: set[str] = set()
    assert read_markups(a, lesion_name="liver", taken=taken)[0].lesion == "liver"
    assert read_markups(b, lesion_name="lung", taken=taken)[0].lesion == "lung"
    taken = set()
    assert read_markups(a, taken=taken)[0].lesion == "F"
    assert read_markups(b, taken=taken)[0].lesion == "F_2"
    assert taken == {"F", "F_2"}


@pytest.mark.parametrize("nodes, message", [
    ("{not json", "not valid JSON"),
    ({"points": []}, "no 'markups' list"),
    ([_node([_point((0, 0, 0))], system="XYZ")], "coordinateSystem 'XYZ'"),
    ([_node([_point((0, 0, 0))], units="um")], "coordinateUnits 'um'"),
    ([_node([{"label": "F-1", "position": [1, 2]}])], "expected 3 finite numbers"),
    ([_node([_point((0, 0, 0), "+", "negative")])], "both positive and negative"),
])
def test_markups_errors_name_the_file(tmp_path: Path, nodes, message: str) -> None:
    path = tmp_path / "bad.mrk.json"
    if isinstance(nodes, str):
        path.write_text(nodes)
    elif isinstance(nodes, dict):
        path.write_text(json.dumps(nodes))
    else:
        _markups(path, nodes)
    with pytest.raises(SeedFileError, match=message) as info:
        read_markups(path)
    assert str(path) in str(info.value)


def test_markups_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SeedFileError, match="cannot read markups file"):
        read_markups(tmp_path / "absent.mrk.json")


def test_parse_sign_conventions() -> None:
    for text in ("-", "neg", "Negative", "background", "bg", "-edge", "edge-", "exclude",
                 "outside the tumour"):
        assert parse_sign(text) is False, text
    for text in ("+", "pos", "positive", "foreground", "fg", "tumour+"):
        assert parse_sign(text) is True, text
    for text in ("F-1", "F-12", "", "tumour", "post-contrast", "lesion=a-b"):
        assert parse_sign(text) is None, text
    assert parse_sign("F-1", "background") is False
    with pytest.raises(ValueError):
        parse_sign("+", "background")


def test_seed_csv_rows_spaces_and_lesions(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    path.write_text(
        "# cohort seeds\n"
        "lesion,case,x,y,z,label,space,comment\n"
        "a,case01,10,20,30,+,,first\n"
        "\n"
        "a,case01,11,21,31,-,,\n"
        ",case01,1.5,2.5,3.5,,LPS,\n"
        "b,sub/case02,-5,-6,-7,negative,ras,\n"
        "b,sub/case02,-5,-6,-8,1,,\n"
        "c,case01,0,0,0,0\n", encoding="utf-8")
    seeds = read_seed_csv(path)
    assert list(seeds) == ["case01", "sub/case02"]
    one = seeds["case01"]
    assert [(s.positive, s.lesion) for s in one] == [(True, "a"), (False, "a"), (True, "1"),
                                                     (False, "c")]
    np.testing.assert_allclose(one[0].ras, (10, 20, 30))
    np.testing.assert_allclose(one[2].ras, (-1.5, -2.5, 3.5))  # LPS row -> RAS
    assert one[0].source == "seeds.csv:3"
    assert [s.positive for s in seeds["sub/case02"]] == [False, True]
    # The default space for rows without one.
    lps = read_seed_csv(path, space="lps")
    np.testing.assert_allclose(lps["case01"][0].ras, (-10, -20, 30))
    np.testing.assert_allclose(lps["sub/case02"][0].ras, (-5, -6, -7))  # its row says ras


@pytest.mark.parametrize("body, message", [
    ("case,x,y\nc,1,2\n", "lacks column\\(s\\) z"),
    ("case,x,y,z,label\nc,1,2,3,+\nc,1,two,3,+\n", "seeds.csv:3: column 'y' = 'two'"),
    ("case,x,y,z,label\nc,1,2,3,maybe\n", "seeds.csv:2: label 'maybe'"),
    ("case,x,y,z,label\nc,1,2,nan,+\n", "seeds.csv:2: column 'z' = 'nan' is not finite"),
    ("case,x,y,z,label\n,1,2,3,+\n", "seeds.csv:2: empty 'case'"),
    ("case,x,y,z,space\nc,1,2,3,IJK\n", "seeds.csv:2: space 'IJK'"),
    ("\n# nothing\n", "empty"),
])
def test_seed_csv_bad_rows_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "seeds.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(SeedFileError, match=message):
        read_seed_csv(path)


def test_seed_csv_bad_space_argument_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SeedFileError, match="expected 'RAS' or 'LPS'"):
        read_seed_csv(tmp_path / "x.csv", space="IJK")
    with pytest.raises(SeedFileError, match="cannot read seed CSV"):
        read_seed_csv(tmp_path / "x.csv")


def test_seed_validation_and_fingerprint() -> None:
    with pytest.raises(ValueError, match="3 finite numbers"):
        Seed([1.0, np.nan, 2.0])
    a = [Seed([1, 2, 3], True, "a"), Seed([4, 5, 6], False, "a")]
    b = [Seed([1, 2, 3], True, "a"), Seed([4, 5, 6], True, "a")]
    assert seeds_fingerprint(a) == seeds_fingerprint(list(a))
    assert seeds_fingerprint(a) != seeds_fingerprint(b)
    assert seeds_fingerprint([]) != seeds_fingerprint(a)


def test_markups_written_by_slicer(tmp_path: Path) -> None:
    """A point list saved by Slicer's own markups storage node (LPS on disk) reads back RAS."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "tumour")
    node.AddControlPoint([5.0, -25.0, 40.0], "F-1")
    node.AddControlPoint([8.0, -30.0, 50.0], "F-2")
    node.SetNthControlPointDescription(1, "background")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    path = tmp_path / "case.mrk.json"
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1
    assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == "LPS"
    seeds = read_markups(path)
    np.testing.assert_allclose([s.ras for s in seeds], [[5, -25, 40], [8, -30, 50]])
    assert [s.positive for s in seeds] == [True, False]


# ------------------------------------------------------------------------------------------------
# Text encodings users really produce (issue 14, item 5).

CSV_BODY = "case,x,y,z,label,lesion\ncase01,10,20,30,+,lésion\ncase01,11,21,31,-,lésion\n"


@pytest.mark.parametrize("encoding, prefix", [
    ("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("cp1252", b""), ("utf-16-le", b"\xff\xfe"),
    ("utf-16-be", b"\xfe\xff"),
])
def test_seed_csv_in_the_encodings_excel_writes(tmp_path: Path, encoding: str, prefix: bytes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """UTF-8 with or without BOM, Excel's Windows-1252 'CSV' (with a warning naming the file)
    and Excel's UTF-16 'Unicode text' (tab separated) all read, with the accents intact."""
    body = CSV_BODY.replace(",", "\t") if encoding.startswith("utf-16") else CSV_BODY
    path = tmp_path / "seeds.csv"
    path.write_bytes(prefix + body.encode(encoding))
    with caplog.at_level("WARNING", logger="SGPSAMLib.seeds"):
        seeds = read_seed_csv(path)
    assert [(s.lesion, s.positive) for s in seeds["case01"]] == [("lésion", True),
                                                                 ("lésion", False)]
    warned = [r.getMessage() for r in caplog.records]
    if encoding == "cp1252":
        assert any("not UTF-8" in m and "Windows-1252" in m and str(path) in m for m in warned)
    else:
        assert warned == []


@pytest.mark.parametrize("content, message", [
    (b"case,x,y,z\nc,1,2,3\nc\x81,1,2,3\n", r"seeds.csv:3: byte 0x81 at column 2 is not valid "
                                            r"UTF-8 or Windows-1252 text; save it as UTF-8"),
    (b"case,x,y,z\n\x00\x01\x02", r"seeds.csv:2: holds NUL bytes.*CSV UTF-8"),
    (b"\xef\xbb\xbfcase,x,y,z\nc,1,2,\xe9\n", r"seeds.csv:2: byte 0xe9 at column 7 is not "
                                              r"valid utf-8"),
])
def test_undecodable_seed_csv_names_file_line_and_fix(tmp_path: Path, content: bytes,
                                                      message: str) -> None:
    path = tmp_path / "seeds.csv"
    path.write_bytes(content)
    with pytest.raises(SeedFileError, match=message):
        read_seed_csv(path)


def test_markups_with_bom_or_windows_encoding(tmp_path: Path) -> None:
    """A markups file with a UTF-8 BOM (Notepad) reads; so does one saved as Windows-1252."""
    node = _node([_point((1, 2, 3), label="F-1")], name="lésion", system="RAS")
    text = json.dumps({"markups": [node]}, ensure_ascii=False)
    for name, raw in (("bom.mrk.json", b"\xef\xbb\xbf" + text.encode("utf-8")),
                      ("ansi.mrk.json", text.encode("cp1252"))):
        (seed,) = read_markups(_write_bytes(tmp_path / name, raw))
        assert seed.lesion == "lésion"
        np.testing.assert_allclose(seed.ras, (1, 2, 3))
    with pytest.raises(SeedFileError, match=r"bin.mrk.json:1: holds NUL bytes"):
        read_markups(_write_bytes(tmp_path / "bin.mrk.json", b"{\0}"))


def _write_bytes(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path
