"""The package layout: folders in the order data moves, imports pointing one way, no cycles
(``scripts/check_layout.py``, an AST scan of every import, lazy and TYPE_CHECKING ones included)."""

from __future__ import annotations

import configparser
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_layout.py"
SUBPACKAGES = ("dsp", "io", "ops", "spec", "runtime", "jobs", "tools")
TOP_LEVEL = {"__init__.py", "_console.py", "cli.py", "errors.py"}


@pytest.fixture(scope="module")
def layout():
    spec = importlib.util.spec_from_file_location("check_layout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_and_no_upward_import():
    run = subprocess.run([sys.executable, str(SCRIPT), str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 import cycles; 0 upward imports" in run.stdout.splitlines()[0], run.stdout


def test_the_scan_finds_a_lazy_cycle_and_an_upward_import(tmp_path, layout):
    """The check can fail: a cycle closed by an import inside a function, and ops importing from runtime."""
    pkg = tmp_path / "birdinfer"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "runtime").mkdir()
    for init in (pkg / "__init__.py", pkg / "ops" / "__init__.py", pkg / "runtime" / "__init__.py"):
        init.write_text("")
    (pkg / "ops" / "a.py").write_text("from ..runtime.b import x\n")
    (pkg / "runtime" / "b.py").write_text("def x():\n    from birdinfer.ops import a\n")
    s = layout.scan(tmp_path)
    assert s.cycles() == [["birdinfer.ops.a", "birdinfer.runtime.b"]]
    assert s.upward() == [("birdinfer.ops.a", "birdinfer.runtime.b")]
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "1 import cycles" in run.stdout, run.stdout + run.stderr


def test_dsp_imports_nothing_from_birdinfer(layout):
    """The kernels are plain numpy (a future stand-alone ``dsp`` package): no birdinfer import outside dsp/."""
    s = layout.scan(ROOT)
    dsp = [m for m in s.files if m == "birdinfer.dsp" or m.startswith("birdinfer.dsp.")]
    assert dsp
    for m in dsp:
        outside = [t for t in s.imports[m] if not (t == "birdinfer.dsp" or t.startswith("birdinfer.dsp."))]
        assert not outside, (m, outside)


def test_no_module_imports_torch_timm_or_cv2(layout):
    """Anywhere in birdinfer/, lazily or not (the torch side lives in export/ and train/)."""
    s = layout.scan(ROOT)
    bad = {m: sorted(names & {"torch", "timm", "cv2", "torchaudio"}) for m, names in s.external.items()}
    assert not {m: b for m, b in bad.items() if b}


def test_importing_every_module_loads_neither_torch_nor_cv2_nor_librosa():
    code = ("import importlib, pkgutil, sys, birdinfer\n"
            "for m in pkgutil.walk_packages(birdinfer.__path__, 'birdinfer.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [m for m in ('librosa', 'cv2', 'torch', 'timm') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_folders_follow_the_flow():
    """Only the package's face stays at the top; every subpackage ships in the wheel (setup.cfg lists them)."""
    pkg = ROOT / "birdinfer"
    assert {p.name for p in pkg.glob("*.py")} == TOP_LEVEL
    found = sorted(p.parent.name for p in pkg.glob("*/__init__.py"))
    assert found == sorted(SUBPACKAGES)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    assert {f"birdinfer.{s}" for s in SUBPACKAGES} <= listed


def test_public_names():
    import birdinfer
    from birdinfer.errors import BirdinferError
    from birdinfer.jobs.predict import predict
    from birdinfer.jobs.submit import make_submission
    from birdinfer.runtime.pipeline import Predictor
    from birdinfer.spec import Manifest, ManifestV2

    assert birdinfer.make_submission is make_submission and birdinfer.predict is predict
    assert birdinfer.Predictor is Predictor and birdinfer.BirdinferError is BirdinferError
    assert birdinfer.Manifest is Manifest and issubclass(ManifestV2, Manifest)
    with pytest.raises(AttributeError):
        birdinfer.no_such_name  # noqa: B018
