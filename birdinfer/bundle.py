"""Build the offline Kaggle bundle: one folder to upload as a Kaggle dataset.

Layout written by :func:`build_bundle`::

    <out>/
      wheels/                 birdinfer + OpenVINO (+ ONNX Runtime) and what they need beyond the Kaggle image
      models/                 copy of the model folder (checksums verified before and after the copy)
      dataset-metadata.json   for `kaggle datasets create -p <out> --dir-mode zip`
      README.md               the two lines to paste into a notebook; the image packages it assumes
      SHA256SUMS              `sha256sum -c SHA256SUMS` format, over every other file

Wheels are fetched by pip for the *target* interpreter and platform (``--python-version``,
``--platform``, ``--only-binary=:all:``), one at a time with ``--no-deps``: the dependency closure is
walked here from each downloaded wheel's own metadata, so pip cannot pull in packages the Kaggle image
already has (numpy, pandas, ...) or newer releases of them. Versions are pinned to those installed in
the building environment when they satisfy the requirement, so the bundle ships what was tested.

This module runs at build time only; it needs pip and ``packaging`` (imported where used).
"""

from __future__ import annotations

import configparser
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import BirdinferError, MissingDependencyError, ParameterError
from .manifest import Manifest, sha256_file

__all__ = [
    "BundleError",
    "KAGGLE_IMAGE_PACKAGES",
    "BundleReport",
    "build_bundle",
    "build_birdinfer_wheel",
    "find_project_root",
    "target_platforms",
    "supported_tags",
    "wheel_fits",
    "check_wheel_tags",
    "wheel_requirements",
    "write_sha256sums",
]

#: Distributions the Kaggle CPU image provides (REFERENCE.md section 1), with their own dependencies.
#: They are not bundled unless ``include_image_packages=True`` (used to emulate the image in a bare venv).
KAGGLE_IMAGE_PACKAGES = ("numpy", "pandas", "scipy", "soundfile", "soxr", "librosa", "tqdm")

#: Legacy manylinux aliases and the glibc version each stands for (PEP 600).
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


class BundleError(BirdinferError):
    """The bundle could not be built (pip failed, a wheel does not fit the target, a requirement is unmet)."""


@dataclass
class BundleReport:
    """What :func:`build_bundle` put in the bundle (also written to ``<out>/bundle.json``)."""

    python_version: str
    platform: str
    wheels: dict[str, str] = field(default_factory=dict)  # canonical name -> wheel file name
    assumed_from_image: dict[str, str] = field(default_factory=dict)  # canonical name -> combined specifier
    size_bytes: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------- tags
def target_platforms(platform: str) -> list[str]:
    """Platform tags a ``platform`` host accepts, newest first.

    ``manylinux_2_28_x86_64`` → ``manylinux_2_28_x86_64, manylinux_2_27_x86_64, ..., manylinux_2_5_x86_64``
    plus the legacy aliases ``manylinux2014/2010/1_x86_64`` (pip's ``--platform`` does not expand these
    itself, so they are passed explicitly). Any other platform is returned as is.
    """
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", platform)
    if legacy:
        (major, minor), arch = _LEGACY_MANYLINUX[legacy.group(1)], legacy.group(2)
    elif m:
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
    else:
        return [platform]
    out = [f"manylinux_{major}_{y}_{arch}" for y in range(minor, 4, -1)] if major == 2 else [platform]
    for alias, (amaj, amin) in sorted(_LEGACY_MANYLINUX.items(), key=lambda kv: kv[1], reverse=True):
        if (amaj, amin) <= (major, minor):
            out.append(f"{alias}_{arch}")
    return out


def supported_tags(python_version: str, platform: str) -> frozenset:
    """Every wheel tag (``packaging.tags.Tag``) a CPython ``python_version`` on ``platform`` installs."""
    tags = _packaging("tags")
    version = _parse_python_version(python_version)
    platforms = target_platforms(platform)
    interpreter = f"cp{version[0]}{version[1]}"
    out = set(tags.cpython_tags(python_version=version, abis=[interpreter, "abi3", "none"], platforms=platforms))
    out |= set(tags.compatible_tags(python_version=version, interpreter=interpreter, platforms=platforms))
    return frozenset(out)


def wheel_fits(wheel_name: str, python_version: str, platform: str) -> bool:
    """True when the wheel file name has at least one tag the target interpreter and platform install."""
    utils = _packaging("utils")
    _, _, _, wheel_tags = utils.parse_wheel_filename(Path(wheel_name).name)
    return bool(set(wheel_tags) & supported_tags(python_version, platform))


def check_wheel_tags(wheels_dir: str | Path, python_version: str, platform: str) -> list[str]:
    """Check every ``*.whl`` in ``wheels_dir`` fits the target; returns the file names, raises BundleError."""
    wheels = sorted(p.name for p in Path(wheels_dir).glob("*.whl"))
    if not wheels:
        raise BundleError(f"{wheels_dir}: no wheels found")
    misfits = [w for w in wheels if not wheel_fits(w, python_version, platform)]
    if misfits:
        raise BundleError(
            f"{wheels_dir}: wheel(s) {misfits} do not fit CPython {python_version} on {platform}; "
            "rebuild the bundle with the right --python-version/--platform"
        )
    return wheels


# ------------------------------------------------------------------------------------ requirements
def wheel_requirements(wheel: str | Path, python_version: str, platform: str) -> tuple[list, str | None]:
    """(requirements that apply on the target, Requires-Python) read from a wheel's METADATA.

    Markers are evaluated for CPython ``python_version`` on Linux (or the platform's OS) with no extras,
    so ``foo; extra == "onnx"`` and ``bar; sys_platform == "win32"`` are left out.
    """
    requirements = _packaging("requirements")
    wheel = Path(wheel)
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise BundleError(f"{wheel}: expected one .dist-info/METADATA, found {names}")
        meta = email.parser.Parser().parsestr(zf.read(names[0]).decode("utf-8"))
    env = _marker_environment(python_version, platform)
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        req = requirements.Requirement(line)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            out.append(req)
    return out, meta.get("Requires-Python")


def _marker_environment(python_version: str, platform: str) -> dict[str, str]:
    major, minor = _parse_python_version(python_version)
    machine = platform.rsplit("_", 2)[-1] if "x86_64" not in platform else "x86_64"
    linux = platform.startswith(("manylinux", "musllinux", "linux"))
    return {
        "python_version": f"{major}.{minor}",
        "python_full_version": f"{major}.{minor}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "implementation_version": f"{major}.{minor}.0",
        "os_name": "posix" if linux else os.name,
        "sys_platform": "linux" if linux else sys.platform,
        "platform_system": "Linux" if linux else "",
        "platform_machine": machine,
        "platform_release": "",
        "platform_version": "",
    }


def _parse_python_version(python_version: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", str(python_version).strip())
    if not m:
        raise ParameterError(f"python_version must look like '3.12', got {python_version!r}")
    return int(m.group(1)), int(m.group(2))


def _packaging(module: str):
    try:
        import importlib

        return importlib.import_module(f"packaging.{module}")
    except ImportError as e:  # pragma: no cover - packaging ships with nearly every Python
        raise MissingDependencyError(f"building a bundle needs the 'packaging' distribution: pip install packaging ({e})") from e


def _canonical(name: str) -> str:
    return _packaging("utils").canonicalize_name(name)


def _installed_version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------- pip
def _run_pip(args: Sequence[str], *, what: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BundleError(f"{what} failed (pip exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def _download_wheel(spec: str, dest: Path, python_version: str, platform: str) -> Path:
    """Download one binary wheel for the target with ``--no-deps``; return its path."""
    before = set(dest.glob("*.whl"))
    args = ["download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python_version, "--dest", str(dest), "--progress-bar", "off"]
    for plat in target_platforms(platform):
        args += ["--platform", plat]
    _run_pip([*args, spec], what=f"downloading {spec} for CPython {python_version} {platform}")
    new = set(dest.glob("*.whl")) - before
    name = _canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])
    utils = _packaging("utils")
    matches = [p for p in (new or dest.glob("*.whl")) if _canonical(utils.parse_wheel_filename(p.name)[0]) == name]
    if len(matches) != 1:
        raise BundleError(f"pip download {spec}: expected one wheel of {name} in {dest}, found {[p.name for p in matches]}")
    return matches[0]


def find_project_root(project_root: str | Path | None = None) -> Path:
    """The birdinfer source tree (folder with setup.cfg/pyproject.toml) to build the wheel from."""
    if project_root is None:
        project_root = Path(__file__).resolve().parent.parent
    root = Path(project_root)
    if not (root / "pyproject.toml").is_file() and not (root / "setup.py").is_file():
        raise ParameterError(
            f"{root} is not the birdinfer source tree (no pyproject.toml); birdinfer seems installed from a "
            "wheel: pass project_root=<checkout of birdinfer>"
        )
    return root


def _source_copy_items(root: Path) -> list[Path]:
    """Top-level files plus the package folders named in setup.cfg: enough to build, nothing else."""
    items = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    package_dir = cfg.get("options", "package_dir", fallback="")
    folders = {line.split("=", 1)[1].strip() for line in package_dir.splitlines() if "=" in line}
    folders.add("birdinfer")
    items += [root / f for f in sorted(folders) if (root / f).is_dir()]
    return items


def build_birdinfer_wheel(dest: str | Path, *, project_root: str | Path | None = None) -> Path:
    """``pip wheel --no-deps`` of the birdinfer source tree (built from a clean copy: no build/ left behind)."""
    root = find_project_root(project_root)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    with tempfile.TemporaryDirectory(prefix="birdinfer-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for item in _source_copy_items(root):
            if item.is_dir():
                shutil.copytree(item, src / item.name, ignore=ignore)
            else:
                shutil.copy2(item, src / item.name)
        before = set(dest.glob("birdinfer-*.whl"))
        try:  # the building environment's setuptools first: no index needed
            _run_pip(["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(src)],
                     what="building the birdinfer wheel")
        except BundleError:
            _run_pip(["wheel", "--no-deps", "--wheel-dir", str(dest), str(src)], what="building the birdinfer wheel")
    new = sorted(set(dest.glob("birdinfer-*.whl")) - before) or sorted(dest.glob("birdinfer-*.whl"))
    if not new:
        raise BundleError(f"pip wheel wrote no birdinfer wheel into {dest}")
    return new[-1]


# ----------------------------------------------------------------------------------- the closure
def _resolve_wheels(roots: Sequence[Path | str], wheels_dir: Path, *, python_version: str,
                    platform: str, skip: Iterable[str], say) -> tuple[dict[str, Path], dict[str, list]]:
    """Download the dependency closure of ``roots`` (wheel paths, or pip specs) for the target.

    Returns (canonical name -> wheel path, canonical name -> requirements on it left to the image).
    A dependency is pinned to the version installed here when that version satisfies the requirement.
    """
    specifiers = _packaging("specifiers")
    utils = _packaging("utils")
    skip = {_canonical(n) for n in skip}
    target = ".".join(map(str, _parse_python_version(python_version)))
    have: dict[str, Path] = {}
    left_to_image: dict[str, list] = {}
    queue: list[Path | str] = list(roots)
    while queue:
        item = queue.pop(0)
        if isinstance(item, Path):
            wheel = item
        else:
            say(f"  fetching {item}")
            wheel = _download_wheel(item, wheels_dir, python_version, platform)
        name = _canonical(utils.parse_wheel_filename(wheel.name)[0])
        have[name] = wheel
        reqs, requires_python = wheel_requirements(wheel, python_version, platform)
        if requires_python and target not in specifiers.SpecifierSet(requires_python):
            raise BundleError(f"{wheel.name} requires Python {requires_python}, the target is {target}")
        for req in reqs:
            dep = _canonical(req.name)
            if dep in skip:
                left_to_image.setdefault(dep, []).append((name, req))
                continue
            if dep in have or dep in {_spec_name(q) for q in queue}:
                continue
            installed = _installed_version(dep)
            if installed is not None and req.specifier.contains(installed, prereleases=True):
                queue.append(f"{dep}=={installed}")
            else:
                queue.append(f"{dep}{req.specifier}")
    return have, left_to_image


def _spec_name(item: Path | str) -> str:
    if isinstance(item, Path):
        return _canonical(_packaging("utils").parse_wheel_filename(item.name)[0])
    return _canonical(re.split(r"[<>=!~;\[ ]", item, maxsplit=1)[0])


def _check_closure(have: Mapping[str, Path], python_version: str, platform: str, skip: Iterable[str]) -> None:
    """Every requirement of every bundled wheel is met by a bundled version or left to the image."""
    utils = _packaging("utils")
    skip = {_canonical(n) for n in skip}
    versions = {n: utils.parse_wheel_filename(p.name)[1] for n, p in have.items()}
    problems = []
    for name, wheel in have.items():
        for req in wheel_requirements(wheel, python_version, platform)[0]:
            dep = _canonical(req.name)
            if dep in skip:
                continue
            if dep not in versions:
                problems.append(f"{wheel.name} needs {req}, which is not bundled")
            elif not req.specifier.contains(versions[dep], prereleases=True):
                problems.append(f"{wheel.name} needs {req}, the bundle has {dep} {versions[dep]}")
    if problems:
        raise BundleError("the bundled wheels do not satisfy each other: " + "; ".join(problems))


# ---------------------------------------------------------------------------------- the bundle
def build_bundle(
    models: str | Path,
    out: str | Path,
    *,
    python_version: str = "3.12",
    platform: str = "manylinux_2_28_x86_64",
    with_onnxruntime: bool = False,
    slug: str = "birdinfer-bundle",
    progress: bool = True,
    include_image_packages: bool = False,
    project_root: str | Path | None = None,
    kaggle_username: str | None = None,
) -> Path:
    """Write the offline Kaggle dataset folder ``out`` and return its path.

    ``models``: a model folder written by ``birdinfer export`` (its checksums are verified first).
    ``python_version``/``platform``: the interpreter and wheel platform of the target (Kaggle: 3.12,
    manylinux_2_28_x86_64). ``with_onnxruntime``: also ship ONNX Runtime and its dependencies.
    ``include_image_packages``: also ship numpy, pandas, scipy, soundfile, soxr, tqdm and their
    dependencies (pinned to the versions installed here) — for testing in a bare virtual environment;
    Kaggle's image already has them. ``kaggle_username``: owner in ``dataset-metadata.json``
    (default: $KAGGLE_USERNAME, else a placeholder to edit). ``out`` must not exist or be empty; the bundle
    is assembled beside it and moved into place only when complete.
    """
    t0 = time.perf_counter()
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    python_version = ".".join(map(str, _parse_python_version(python_version)))
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]", slug):
        raise ParameterError(f"slug must be 3-50 lower-case letters, digits and '-', got {slug!r}")
    models = Path(models)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParameterError(f"bundle folder {out} already exists and is not empty; remove it or choose another --out")

    say(f"birdinfer bundle: verifying model folder {models}")
    manifest = Manifest.load(models)
    manifest.verify_checksums()

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be shared
    try:
        wheels_dir = staging / "wheels"
        wheels_dir.mkdir()
        say("birdinfer bundle: building the birdinfer wheel")
        own = build_birdinfer_wheel(wheels_dir, project_root=project_root)
        roots: list[Path | str] = [own]
        if with_onnxruntime:
            version = _installed_version("onnxruntime")
            roots.append(f"onnxruntime=={version}" if version else "onnxruntime")
        skip = () if include_image_packages else KAGGLE_IMAGE_PACKAGES
        say(f"birdinfer bundle: fetching wheels for CPython {python_version} {platform}")
        have, left_to_image = _resolve_wheels(roots, wheels_dir, python_version=python_version, platform=platform,
                                              skip=skip, say=say)
        _check_closure(have, python_version, platform, skip)
        stray = sorted(set(wheels_dir.glob("*.whl")) - set(have.values()))
        for path in stray:  # e.g. a second download of the same name; only the resolved set ships
            path.unlink()
        check_wheel_tags(wheels_dir, python_version, platform)

        say("birdinfer bundle: copying the model folder")
        shutil.copytree(models, staging / "models", ignore=shutil.ignore_patterns("__pycache__", ".*"))
        Manifest.load(staging / "models").verify_checksums()

        report = BundleReport(python_version=python_version, platform=platform,
                              wheels={n: p.name for n, p in sorted(have.items())},
                              assumed_from_image={n: _combined_specifier(reqs) for n, reqs in sorted(left_to_image.items())})
        username = kaggle_username or os.environ.get("KAGGLE_USERNAME") or "INSERT_KAGGLE_USERNAME"
        (staging / "dataset-metadata.json").write_text(json.dumps({
            "title": "birdinfer offline bundle",
            "id": f"{username}/{slug}",
            "licenses": [{"name": "other"}],
            "subtitle": "birdinfer + OpenVINO wheels and an exported BirdCLEF model folder",
        }, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_readme(report, slug, manifest, with_onnxruntime, include_image_packages),
                                           encoding="utf-8")
        report.size_bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        report.seconds = round(time.perf_counter() - t0, 1)
        (staging / "bundle.json").write_text(json.dumps(report.__dict__, indent=2) + "\n", encoding="utf-8")
        write_sha256sums(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"birdinfer bundle: wrote {out} ({report.size_bytes / 1e6:.1f} MB, {len(have)} wheels) in {report.seconds:.0f} s")
    return out


def _combined_specifier(reqs: Sequence[tuple[str, object]]) -> str:
    specs = sorted({str(s) for _, req in reqs for s in req.specifier})
    return ",".join(specs) if specs else "any version"


def _readme(report: BundleReport, slug: str, manifest: Manifest, with_onnxruntime: bool, include_image: bool) -> str:
    wheels = "\n".join(f"- `{w}`" for w in report.wheels.values())
    assumed = "\n".join(
        f"- {name} {spec} (tested with {_installed_version(name) or 'n/a'})" for name, spec in report.assumed_from_image.items()
    ) or "- nothing: every dependency is bundled"
    models = ", ".join(m.name for m in manifest.models)
    return f"""# birdinfer offline bundle

Attach this dataset to a Kaggle notebook (internet off), then paste these two lines:

```python
!pip install --no-index --find-links /kaggle/input/{slug}/wheels birdinfer
import birdinfer; birdinfer.make_submission("/kaggle/input/birdclef-2025/test_soundscapes", "/kaggle/input/{slug}/models", out="/kaggle/working/submission.csv", sample_submission="/kaggle/input/birdclef-2025/sample_submission.csv")
```

The notebook `kaggle_kernel/birdinfer_inference.ipynb` of the birdinfer repository does the same with a
time budget and a fallback to `train_soundscapes` when `test_soundscapes` is empty.

Upload: `kaggle datasets create -p <this folder> --dir-mode zip` (without `--dir-mode` the CLI skips the
`wheels/` and `models/` folders). Check a copy with `sha256sum -c SHA256SUMS`.

## Target
CPython {report.python_version}, platform {report.platform}{" (ONNX Runtime included)" if with_onnxruntime else ""}.
{"This bundle also ships the packages the Kaggle image provides (built for testing in a bare environment)." if include_image else ""}

## Taken from the Kaggle image (not bundled)
The bundled wheels require these, which the Kaggle CPU image provides (numpy 2.x, pandas, scipy,
librosa 0.11 with soxr, soundfile, tqdm):
{assumed}

## Wheels
{wheels}

## Models
`models/`: {len(manifest.models)} model(s): {models}; {len(manifest.labels)} labels.
"""


def write_sha256sums(folder: str | Path) -> Path:
    """Write ``folder/SHA256SUMS`` over every other file (sorted, POSIX paths; `sha256sum -c` format)."""
    folder = Path(folder)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{sha256_file(path)}  {path.relative_to(folder).as_posix()}")
    target = folder / "SHA256SUMS"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target
