"""Build the offline Kaggle bundle: one folder to upload as a Kaggle dataset.

Layout written by :func:`build_bundle`::

    <out>/
      wheels/                 birdinfer + OpenVINO (+ ONNX Runtime) and what they need beyond the Kaggle image
      models/                 the files the runtime loads: each variant's OpenVINO IR (.xml + .bin) and a manifest
                              naming only those (ONNX files too with ``with_onnx``); checksums verified after the copy
      dataset-metadata.json   for `kaggle datasets create -p <out> --dir-mode zip`
      README.md               the two lines to paste into a notebook; the image packages it assumes
      SHA256SUMS              `sha256sum -c SHA256SUMS` format, over every other file

Wheels are fetched by pip for the *target* interpreter and platform, without the packages the Kaggle image
already has (:mod:`birdinfer.tools.wheels`).

This module runs at build time only; it needs pip and ``packaging`` (imported where used).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..errors import ParameterError
from ..spec.manifest import Manifest
from ..spec.files import safe_join, sha256_file
from .wheels import (BundleError, build_birdinfer_wheel, check_closure, check_wheel_tags, find_project_root, installed_version,
                     parse_python_version, resolve_wheels, supported_tags, target_platforms, wheel_fits, wheel_requirements)

__all__ = [
    "BundleError",
    "KAGGLE_IMAGE_PACKAGES",
    "BundleReport",
    "build_bundle",
    "build_birdinfer_wheel",
    "copy_model_files",
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


@dataclass
class BundleReport:
    """What :func:`build_bundle` put in the bundle (also written to ``<out>/bundle.json``)."""

    python_version: str
    platform: str
    wheels: dict[str, str] = field(default_factory=dict)  # canonical name -> wheel file name
    assumed_from_image: dict[str, str] = field(default_factory=dict)  # canonical name -> combined specifier
    size_bytes: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------------------------- the bundle
def build_bundle(
    models: str | Path,
    out: str | Path,
    *,
    python_version: str = "3.12",
    platform: str = "manylinux_2_28_x86_64",
    with_onnxruntime: bool = False,
    with_onnx: bool = False,
    slug: str = "birdinfer-bundle",
    progress: bool = True,
    include_image_packages: bool = False,
    project_root: str | Path | None = None,
    kaggle_username: str | None = None,
) -> Path:
    """Write the offline Kaggle dataset folder ``out`` and return its path.

    ``models``: a model folder written by ``birdinfer export`` (its checksums are verified first).
    ``python_version``/``platform``: the interpreter and wheel platform of the target (Kaggle: 3.12,
    manylinux_2_28_x86_64). ``with_onnxruntime``: also ship ONNX Runtime and its dependencies (implies
    ``with_onnx``). ``with_onnx``: also ship the models' ONNX files; without it the bundle carries only what
    the OpenVINO runtime loads (see :func:`copy_model_files`).
    ``include_image_packages``: also ship numpy, pandas, scipy, soundfile, soxr, tqdm and their
    dependencies (pinned to the versions installed here) — for testing in a bare virtual environment;
    Kaggle's image already has them. ``kaggle_username``: owner in ``dataset-metadata.json``
    (default: $KAGGLE_USERNAME, else a placeholder to edit). ``out`` must not exist or be empty; the bundle
    is assembled beside it and moved into place only when complete.
    """
    t0 = time.perf_counter()
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    python_version = ".".join(map(str, parse_python_version(python_version)))
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
        have, left_to_image = _fetch_wheels(staging / "wheels", python_version, platform, say=say,
                                            project_root=project_root, with_onnxruntime=with_onnxruntime,
                                            include_image_packages=include_image_packages)

        with_onnx = with_onnx or with_onnxruntime
        say(f"birdinfer bundle: copying the model files ({'IR + ONNX' if with_onnx else 'OpenVINO IR only'})")
        copy_model_files(manifest, staging / "models", with_onnx=with_onnx)

        report = BundleReport(python_version=python_version, platform=platform,
                              wheels={n: p.name for n, p in sorted(have.items())},
                              assumed_from_image={n: _combined_specifier(reqs) for n, reqs in sorted(left_to_image.items())})
        _write_dataset_metadata(staging, slug, kaggle_username)
        (staging / "README.md").write_text(_readme(report, slug, manifest, with_onnxruntime, include_image_packages, with_onnx),
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


def _fetch_wheels(wheels_dir: Path, python_version: str, platform: str, *, say, project_root, with_onnxruntime: bool,
                  include_image_packages: bool) -> tuple[dict, dict]:
    """The birdinfer wheel and the closure of its dependencies for the target into ``wheels_dir``: ``(wheels by
    name, requirements left to Kaggle's image)``; checked for tags and completeness."""
    wheels_dir.mkdir()
    say("birdinfer bundle: building the birdinfer wheel")
    own = build_birdinfer_wheel(wheels_dir, project_root=project_root)
    roots: list[Path | str] = [own]
    if with_onnxruntime:
        version = installed_version("onnxruntime")
        roots.append(f"onnxruntime=={version}" if version else "onnxruntime")
    skip = () if include_image_packages else KAGGLE_IMAGE_PACKAGES
    say(f"birdinfer bundle: fetching wheels for CPython {python_version} {platform}")
    have, left_to_image = resolve_wheels(roots, wheels_dir, python_version=python_version, platform=platform,
                                          skip=skip, say=say)
    check_closure(have, python_version, platform, skip)
    stray = sorted(set(wheels_dir.glob("*.whl")) - set(have.values()))
    for path in stray:  # e.g. a second download of the same name; only the resolved set ships
        path.unlink()
    check_wheel_tags(wheels_dir, python_version, platform)
    return have, left_to_image


def _write_dataset_metadata(staging: Path, slug: str, kaggle_username: str | None) -> None:
    username = kaggle_username or os.environ.get("KAGGLE_USERNAME") or "INSERT_KAGGLE_USERNAME"
    (staging / "dataset-metadata.json").write_text(json.dumps({
        "title": "birdinfer offline bundle",
        "id": f"{username}/{slug}",
        "licenses": [{"name": "other"}],
        "subtitle": "birdinfer + OpenVINO wheels and an exported BirdCLEF model folder",
    }, indent=2) + "\n", encoding="utf-8")


def copy_model_files(manifest: Manifest, dest: str | Path, *, with_onnx: bool = False) -> Manifest:
    """Copy into ``dest`` the files of ``manifest`` (a loaded, verified model folder) that the runtime loads, and
    a manifest naming exactly those; return it, loaded from ``dest`` with its checksums verified.

    Every variant keeps its OpenVINO IR (``.xml`` + ``.bin``). ONNX files are kept with ``with_onnx``, or when a
    variant has no IR (its ONNX file is then its only form). Checksums, verification figures and provenance
    are carried over unchanged; ``extra["bundle"]`` records what was left out.
    """
    dest = Path(dest)
    dest.mkdir(parents=True)
    manifest = getattr(manifest, "v1", None) or manifest  # an upgraded version 1 folder is copied as written
    models, left_out = [], []
    for entry in manifest.models:
        variants = {}
        for precision, variant in entry.variants.items():
            if variant.onnx and variant.openvino and not with_onnx:
                left_out.append(variant.onnx)
                variant = replace(variant, onnx=None)
            variants[precision] = variant
        models.append(replace(entry, variants=variants))
    names = sorted({name for m in models for v in m.variants.values() for name in v.file_names()})
    for name in names:
        target = safe_join(dest, name, where=str(dest))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(manifest.path_of(name), target)
    extra = dict(manifest.extra)
    if left_out:
        extra["bundle"] = {"left_out": sorted(left_out),
                           "why": "the OpenVINO runtime loads only the IR; `birdinfer bundle --with-onnx` keeps ONNX"}
    replace(manifest, models=tuple(models), files={n: manifest.files[n] for n in names}, extra=extra, folder=dest).save(dest)
    bundled = Manifest.load(dest)
    bundled.verify_checksums()
    return bundled


def _combined_specifier(reqs: Sequence[tuple[str, object]]) -> str:
    specs = sorted({str(s) for _, req in reqs for s in req.specifier})
    return ",".join(specs) if specs else "any version"


def _readme(report: BundleReport, slug: str, manifest: Manifest, with_onnxruntime: bool, include_image: bool,
            with_onnx: bool) -> str:
    wheels = "\n".join(f"- `{w}`" for w in report.wheels.values())
    assumed = "\n".join(
        f"- {name} {spec} (tested with {installed_version(name) or 'n/a'})" for name, spec in report.assumed_from_image.items()
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
{"OpenVINO IR and ONNX files." if with_onnx else "OpenVINO IR only (the ONNX files were left out: `--backend onnxruntime` needs a bundle built with `--with-onnx`)."}
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
