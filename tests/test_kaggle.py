"""The Kaggle path: the offline bundle, and the inference notebook run as Kaggle would run it.

The end-to-end test builds a bundle for this machine's Python, installs it into a fresh virtual
environment with ``pip install --no-index`` (pip cannot reach any index, and a dead index URL is set on
top), lays out a fake ``/kaggle/input`` tree, executes ``kaggle_kernel/birdinfer_inference.ipynb`` with
nbclient in a Jupyter kernel running that environment's Python, and validates ``submission.csv``.
Tests that fetch wheels skip (with pip's message) when the package index is unreachable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdinfer.tools.bundle import (
    KAGGLE_IMAGE_PACKAGES,
    BundleError,
    build_bundle,
    check_wheel_tags,
    copy_model_files,
    target_platforms,
    wheel_fits,
    wheel_requirements,
)
from birdinfer.errors import ChecksumError, ModelFolderError, ParameterError
from birdinfer.spec.manifest import Manifest, MelGroup, ModelEntry
from birdinfer.spec.files import ModelVariant, sha256_file

from conftest import LABELS, write_ogg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = PROJECT_ROOT / "kaggle_kernel"
NOTEBOOK = KERNEL_DIR / "birdinfer_inference.ipynb"
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# Anything pip might try to reach during the offline install fails here at once.
DEAD_INDEX = "http://127.0.0.1:9/simple"


def _fake_model_folder(folder: Path) -> Path:
    """A manifest-valid model folder with placeholder network files (enough for bundling)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.xml").write_text("<net/>")
    (folder / "m.bin").write_bytes(b"\x00" * 16)
    Manifest(
        labels=("a", "b"),
        groups=(MelGroup("v1", 2048, 64, 256, 60, 16000, 256, weight=2.5),),
        models=(ModelEntry("m", "tf_efficientnet_lite0", "v1", 1.0, (6, 1, 256, 512), 16,
                           {"f32": ModelVariant(openvino="m.xml")}),),
        files={"m.xml": sha256_file(folder / "m.xml"), "m.bin": sha256_file(folder / "m.bin")},
    ).save(folder)
    return folder


def _offline_pip_env() -> dict[str, str]:
    """Environment for a pip that must not find packages anywhere but the --find-links folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=DEAD_INDEX, PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_DEFAULT_TIMEOUT="5")
    return env


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def package_index(tmp_path_factory) -> None:
    """Skip when pip cannot download a small binary wheel for the Kaggle target (no index reachable)."""
    dest = tmp_path_factory.mktemp("index_probe")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "--dest", str(dest),
         "--progress-bar", "off", "openvino-telemetry"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip("package index unreachable, cannot fetch wheels: " + " | ".join(proc.stdout.strip().splitlines()[-2:]))


# ------------------------------------------------------------------------------- no network needed
def test_target_platforms_expand_manylinux():
    plats = target_platforms("manylinux_2_28_x86_64")
    assert plats[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in plats and "manylinux_2_5_x86_64" in plats
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(plats)
    assert "manylinux_2_29_x86_64" not in plats
    assert target_platforms("manylinux2014_x86_64")[0] == "manylinux_2_17_x86_64"
    assert "manylinux_2_28_x86_64" not in target_platforms("manylinux2014_x86_64")


@pytest.mark.parametrize("name, fits", [
    ("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
    ("protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", True),
    ("flatbuffers-25.12.19-py2.py3-none-any.whl", True),
    ("soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl", True),
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", False),  # wrong Python
    ("x-1.0-cp312-cp312-manylinux_2_34_x86_64.whl", False),  # needs a newer glibc
    ("x-1.0-cp312-cp312-musllinux_1_2_x86_64.whl", False),
    ("x-1.0-cp312-cp312-manylinux_2_28_aarch64.whl", False),
    ("x-1.0-cp312-cp312-win_amd64.whl", False),
])
def test_wheel_fits_cp312_manylinux_2_28(name, fits):
    assert wheel_fits(name, "3.12", "manylinux_2_28_x86_64") is fits


def test_wheel_requirements_evaluate_markers_for_the_target(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    metadata = "\n".join([
        "Metadata-Version: 2.1", "Name: demo", "Version: 1.0", "Requires-Python: >=3.10",
        "Requires-Dist: numpy>=1.24", "Requires-Dist: tomli; python_version < '3.11'",
        "Requires-Dist: pywin32; sys_platform == 'win32'", "Requires-Dist: onnxruntime; extra == 'onnx'", "",
    ])
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo-1.0.dist-info/METADATA", metadata)
    reqs, requires_python = wheel_requirements(wheel, "3.12", "manylinux_2_28_x86_64")
    assert [r.name for r in reqs] == ["numpy"] and requires_python == ">=3.10"
    assert [r.name for r in wheel_requirements(wheel, "3.10", "manylinux_2_28_x86_64")[0]] == ["numpy", "tomli"]


def test_check_wheel_tags_names_the_misfit(tmp_path):
    for name in ("a-1-py3-none-any.whl", "b-1-cp311-cp311-manylinux_2_28_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(BundleError, match="b-1-cp311"):
        check_wheel_tags(tmp_path, "3.12", "manylinux_2_28_x86_64")
    assert check_wheel_tags(tmp_path, "3.11", "manylinux_2_28_x86_64") == sorted(p.name for p in tmp_path.iterdir())


def test_bundle_refuses_corrupt_models_and_a_used_out_folder(tmp_path):
    models = _fake_model_folder(tmp_path / "models")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    with pytest.raises(ParameterError, match="not empty"):
        build_bundle(models, used, progress=False)
    (models / "m.bin").write_bytes(b"\x01" * 16)
    with pytest.raises(ChecksumError, match="m.bin"):
        build_bundle(models, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_lean_model_files_keep_only_what_the_runtime_loads(small_model_folder, tmp_path, monkeypatch):
    """The bundle's default model copy: IR only, a manifest naming exactly the files present (checksums pass),
    the same submission as the full folder; ONNX Runtime on it fails before any audio with what to do."""
    from birdinfer.jobs.submit import make_submission

    source = Manifest.load(small_model_folder)
    assert all(v.onnx for m in source.models for v in m.variants.values())  # the export keeps ONNX
    lean = copy_model_files(source, tmp_path / "lean")
    full = copy_model_files(source, tmp_path / "full", with_onnx=True)
    on_disk = {p.name for p in (tmp_path / "lean").iterdir()} - {"manifest.json"}
    assert on_disk == set(lean.files) and not any(n.endswith(".onnx") for n in on_disk)
    assert {p.name for p in (tmp_path / "full").iterdir()} - {"manifest.json"} == set(source.files) == set(full.files)
    assert "bundle" not in full.extra
    assert all(lean.files[n] == source.files[n] for n in lean.files)
    assert sorted(lean.extra["bundle"]["left_out"]) == sorted(n for n in source.files if n.endswith(".onnx"))
    for m_lean, m_src in zip(lean.models, source.models):  # verification figures and provenance carried over
        assert m_lean.variants["f32"].verification == m_src.variants["f32"].verification and m_lean.export == m_src.export
    ratio = _folder_bytes(tmp_path / "lean") / _folder_bytes(small_model_folder)
    assert ratio < 0.55, ratio
    print(f"\nlean model files: {ratio:.1%} of the full folder")

    audio = tmp_path / "audio"
    for i in range(2):
        write_ogg(audio / f"soundscape_{i}.ogg", 60.0, seed=500 + i)
    want = make_submission(audio, small_model_folder, out=None, precision="f32", progress=False)
    got = make_submission(audio, tmp_path / "lean", out=None, precision="f32", progress=False)
    pd.testing.assert_frame_equal(got, want, check_exact=True)

    import birdinfer.runtime.pipeline as pipeline

    def forbidden(*a, **k):
        raise AssertionError("audio was decoded before the backend check")

    monkeypatch.setattr(pipeline, "iter_audio_blocks", forbidden)
    from birdinfer.jobs.predict import predict

    for run in (lambda: make_submission(audio, tmp_path / "lean", out=tmp_path / "s.csv", backend="onnxruntime", progress=False),
                lambda: predict([audio], tmp_path / "lean", tmp_path / "p.csv", backend="onnxruntime", progress=False)):
        with pytest.raises(ModelFolderError, match=r"lean.*lite0_v1.*no ONNX file.*--backend openvino.*--with-onnx"):
            run()
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "p.csv").exists()


def test_notebook_is_committed_clean_and_metadata_is_offline_cpu():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    for needle in ("--no-index", "sys.executable", "make_submission", "time_budget_s", "train_soundscapes",
                   "BIRDINFER_BUNDLE", "BIRDINFER_COMPETITION", "BIRDINFER_WORKING", "BIRDINFER_TIME_BUDGET"):
        assert needle in source, needle
    meta = json.loads((KERNEL_DIR / "kernel-metadata.json").read_text())
    assert meta["code_file"] == NOTEBOOK.name and (KERNEL_DIR / meta["code_file"]).is_file()
    assert meta["competition_sources"] == ["birdclef-2025"]
    assert [s.split("/")[1] for s in meta["dataset_sources"]] == ["birdinfer-bundle"]
    assert meta["enable_internet"] is False and meta["enable_gpu"] is False and meta["is_private"] is True
    assert meta["kernel_type"] == "notebook" and meta["language"] == "python"


# ----------------------------------------------------------------------------------- needs the index
def _sha256sums_match(bundle: Path) -> None:
    listed = {}
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert sha256_file(bundle / name) == digest, name


def _fits_kaggle_cp312(tag) -> bool:
    """CPython 3.12 (own ABI, stable ABI or pure) on manylinux x86_64 with glibc <= 2.28, or any platform."""
    glibc = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag.platform)
    platform_ok = (tag.platform == "any" or tag.platform in {"manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"}
                   or (glibc is not None and (int(glibc.group(1)), int(glibc.group(2))) <= (2, 28)))
    stable_abi = re.fullmatch(r"cp3(\d+)", tag.interpreter)
    python_ok = ((tag.interpreter == "cp312" and tag.abi in {"cp312", "abi3", "none"})
                 or (tag.abi == "abi3" and stable_abi is not None and int(stable_abi.group(1)) <= 12)
                 or (tag.interpreter in {"py3", "py312"} and tag.abi == "none"))
    return platform_ok and python_ok


def test_bundle_for_kaggle_python_312_fits_cp312_manylinux(tmp_path, package_index):
    from packaging.utils import canonicalize_name, parse_wheel_filename

    bundle = build_bundle(_fake_model_folder(tmp_path / "models"), tmp_path / "bundle", python_version="3.12",
                          platform="manylinux_2_28_x86_64", with_onnxruntime=True, slug="birdinfer-bundle",
                          progress=False, kaggle_username="someone")
    wheels = check_wheel_tags(bundle / "wheels", "3.12", "manylinux_2_28_x86_64")
    names = {canonicalize_name(parse_wheel_filename(w)[0]) for w in wheels}
    assert {"birdinfer", "openvino", "openvino-telemetry", "onnxruntime", "protobuf", "flatbuffers"} <= names
    assert not names & set(KAGGLE_IMAGE_PACKAGES), "the Kaggle image's own packages must not be bundled"
    for w in wheels:  # checked again here, independently of birdinfer.tools.bundle's tag logic
        assert any(_fits_kaggle_cp312(tag) for tag in parse_wheel_filename(w)[3]), w
    assert json.loads((bundle / "dataset-metadata.json").read_text())["id"] == "someone/birdinfer-bundle"
    readme = (bundle / "README.md").read_text()
    assert "pip install --no-index --find-links /kaggle/input/birdinfer-bundle/wheels birdinfer" in readme
    assert "numpy" in readme and "make_submission" in readme
    Manifest.load(bundle / "models").verify_checksums()
    _sha256sums_match(bundle)


def _kaggle_python() -> str | None:
    """A CPython 3.12 interpreter (Kaggle's version): ``BIRDINFER_TEST_PYTHON312``, ``python3.12`` on PATH, or a
    pyenv-installed 3.12; None when this machine has none."""
    candidates = [os.environ.get("BIRDINFER_TEST_PYTHON312"), shutil.which("python3.12")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted(pyenv_root.glob("versions/3.12*/bin/python3.12"), reverse=True)]
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2] == (3, 12))"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture(scope="session", params=["host", "3.12"])
def kaggle_venv(request, tmp_path_factory, small_model_folder, package_index):
    """(bundle, venv python, figures): a bundle for this Python (``host``) or for Kaggle's Python 3.12, with the
    image packages, installed offline into a fresh venv of that Python."""
    if request.param == "host":
        base_python, version = sys.executable, HOST_PYTHON
    else:
        if HOST_PYTHON == "3.12":
            pytest.skip("the host Python is 3.12: the 'host' case already runs it")
        base_python, version = _kaggle_python(), "3.12"
        if base_python is None:
            pytest.skip("no CPython 3.12 on this machine (set BIRDINFER_TEST_PYTHON312): Kaggle's Python not tested")
    root = tmp_path_factory.mktemp(f"kaggle{version}")
    figures: dict[str, float] = {"python": float(version)}
    t0 = time.perf_counter()
    bundle = build_bundle(small_model_folder, root / "input" / "birdinfer-bundle", python_version=version,
                          include_image_packages=True, progress=False)
    figures["bundle_build_s"] = time.perf_counter() - t0
    assert not list((bundle / "models").glob("*.onnx")), "the default bundle ships the OpenVINO IR only"
    figures["models_mb"] = sum(p.stat().st_size for p in (bundle / "models").iterdir()) / 1e6
    figures["bundle_mb"] = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
    figures["wheels_mb"] = sum(p.stat().st_size for p in (bundle / "wheels").glob("*.whl")) / 1e6
    check_wheel_tags(bundle / "wheels", version, "manylinux_2_28_x86_64")

    venv = root / "venv"
    t0 = time.perf_counter()
    _run([base_python, "-m", "venv", venv])
    figures["venv_create_s"] = time.perf_counter() - t0
    python = venv / "bin" / "python"
    offline = _offline_pip_env()
    t0 = time.perf_counter()
    _run([python, "-m", "pip", "install", "--no-index", "--only-binary=:all:", "--find-links", bundle / "wheels",
          "--progress-bar", "off", "birdinfer"], env=offline)
    figures["offline_install_s"] = time.perf_counter() - t0
    _run([python, "-m", "pip", "check"], env=offline)
    probe = _run([python, "-c", "import birdinfer, numpy, openvino, pandas, scipy, soundfile, soxr, tqdm; "
                  "import importlib.util as u; print(birdinfer.__file__, u.find_spec('torch') is None)"], env=offline, cwd=root)
    assert str(venv) in probe.stdout and probe.stdout.split()[-1] == "True", probe.stdout
    ran = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], env=offline, cwd=root)
    assert ran.stdout.strip() == version, ran.stdout

    # The Jupyter kernel itself is test scaffolding, not part of the bundle: installed with the machine's pip set-up.
    t0 = time.perf_counter()
    kernel = subprocess.run([python, "-m", "pip", "install", "--progress-bar", "off", "ipykernel"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)
    figures["ipykernel_install_s"] = time.perf_counter() - t0
    if kernel.returncode != 0:
        pytest.skip("cannot install ipykernel into the test venv: " + kernel.stdout.strip().splitlines()[-1])
    return bundle, python, figures


def _fake_competition(folder: Path, n_train: int = 3) -> tuple[Path, list[str]]:
    """BirdCLEF layout: taxonomy.csv, sample_submission.csv (shuffled columns), n_train 60 s train soundscapes,
    and an empty test_soundscapes (as in an interactive Kaggle session)."""
    (folder / "test_soundscapes").mkdir(parents=True)
    stems = [f"H{index:02d}_20230{index + 1}01_000000" for index in range(n_train)]
    for seed, stem in enumerate(stems):
        write_ogg(folder / "train_soundscapes" / f"{stem}.ogg", 60.0, seed=100 + seed)
    pd.DataFrame({"primary_label": LABELS, "class_name": "Aves"}).to_csv(folder / "taxonomy.csv", index=False)
    columns = list(np.random.default_rng(0).permutation(LABELS))
    sample = pd.DataFrame(0.0, index=range(3), columns=columns)
    sample.insert(0, "row_id", [f"soundscape_0_{s}" for s in (5, 10, 15)])
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return folder, stems


def test_notebook_runs_offline_in_a_fresh_venv(kaggle_venv, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    bundle, python, figures = kaggle_venv
    competition, stems = _fake_competition(tmp_path / "input" / "birdclef-2025")
    working = tmp_path / "working"
    kernels = tmp_path / "jupyter" / "kernels" / "birdinfer-venv"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "birdinfer test venv", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    offline = _offline_pip_env()
    for key in list(os.environ):
        if (key.startswith("PIP_") or key == "PYTHONPATH") and key not in offline:
            monkeypatch.delenv(key)
    for key, value in offline.items():
        if key.startswith("PIP_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("BIRDINFER_INPUT", str(tmp_path / "input"))
    monkeypatch.setenv("BIRDINFER_BUNDLE", str(bundle))
    monkeypatch.setenv("BIRDINFER_COMPETITION", str(competition))
    monkeypatch.setenv("BIRDINFER_WORKING", str(working))
    monkeypatch.setenv("BIRDINFER_TIME_BUDGET", "1800")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, kernel_name="birdinfer-venv", timeout=900, startup_timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    figures["notebook_wall_s"] = time.perf_counter() - t0
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "test_soundscapes is EMPTY" in printed
    assert "Looking in links: " + str(bundle / "wheels") in printed, "the notebook's pip must see only the bundle"

    sample = pd.read_csv(competition / "sample_submission.csv")
    submission = pd.read_csv(working / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission["row_id"].tolist() == [f"{stem}_{end}" for stem in stems for end in range(5, 65, 5)]
    probabilities = submission.iloc[:, 1:].to_numpy()
    assert probabilities.shape == (12 * len(stems), len(LABELS))
    assert np.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all()
    assert probabilities.std() > 0, "a constant submission means the fallback ran, not the models"
    assert (working / "birdinfer_report.json").is_file()

    figures = {k: round(v, 2) for k, v in figures.items()}
    (tmp_path / "kaggle_figures.json").write_text(json.dumps(figures, indent=2))
    print(f"\nkaggle figures: {json.dumps(figures)}")


def test_offline_install_fails_when_a_bundled_wheel_is_missing(kaggle_venv, tmp_path):
    """The offline check can fail: without openvino-telemetry's wheel pip cannot resolve birdinfer."""
    bundle, python, _ = kaggle_venv
    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in (bundle / "wheels").glob("*.whl"):
        if not wheel.name.startswith("openvino_telemetry-"):
            (partial / wheel.name).symlink_to(wheel)

    def resolve_offline(find_links: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index", "--only-binary=:all:",
             "--find-links", str(find_links), "birdinfer"],
            env=_offline_pip_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    complete = resolve_offline(bundle / "wheels")
    assert complete.returncode == 0, complete.stdout[-2000:]
    missing = resolve_offline(partial)
    assert missing.returncode != 0 and "openvino-telemetry" in missing.stdout.lower().replace("_", "-"), missing.stdout[-2000:]
