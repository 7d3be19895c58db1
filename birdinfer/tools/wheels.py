"""Wheels for another interpreter and platform: tags, requirements, and the dependency closure pip fetches.

Wheels are fetched by pip for the *target* interpreter and platform (``--python-version``,
``--platform``, ``--only-binary=:all:``), one at a time with ``--no-deps``: the dependency closure is
walked here from each downloaded wheel's own metadata, so pip cannot pull in packages the Kaggle image
already has (numpy, pandas, ...) or newer releases of them. Versions are pinned to those installed in
the building environment when they satisfy the requirement, so the bundle ships what was tested.

Used by :mod:`birdinfer.tools.bundle` at build time only; needs pip and ``packaging`` (imported where used).
"""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import BirdinferError, MissingDependencyError, ParameterError

__all__ = [
    "BundleError",
    "target_platforms",
    "supported_tags",
    "wheel_fits",
    "check_wheel_tags",
    "wheel_requirements",
    "build_birdinfer_wheel",
    "find_project_root",
    "installed_version",
    "parse_python_version",
    "resolve_wheels",
    "check_closure",
]

#: Legacy manylinux aliases and the glibc version each stands for (PEP 600).
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}



class BundleError(BirdinferError):
    """The bundle could not be built (pip failed, a wheel does not fit the target, a requirement is unmet)."""


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
    version = parse_python_version(python_version)
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
    major, minor = parse_python_version(python_version)
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


def parse_python_version(python_version: str) -> tuple[int, int]:
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


def installed_version(name: str) -> str | None:
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
        project_root = Path(__file__).resolve().parents[2]  # birdinfer/tools/wheels.py → the checkout
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
def resolve_wheels(roots: Sequence[Path | str], wheels_dir: Path, *, python_version: str,
                    platform: str, skip: Iterable[str], say) -> tuple[dict[str, Path], dict[str, list]]:
    """Download the dependency closure of ``roots`` (wheel paths, or pip specs) for the target.

    Returns (canonical name -> wheel path, canonical name -> requirements on it left to the image).
    A dependency is pinned to the version installed here when that version satisfies the requirement.
    """
    specifiers = _packaging("specifiers")
    utils = _packaging("utils")
    skip = {_canonical(n) for n in skip}
    target = ".".join(map(str, parse_python_version(python_version)))
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
            installed = installed_version(dep)
            if installed is not None and req.specifier.contains(installed, prereleases=True):
                queue.append(f"{dep}=={installed}")
            else:
                queue.append(f"{dep}{req.specifier}")
    return have, left_to_image


def _spec_name(item: Path | str) -> str:
    if isinstance(item, Path):
        return _canonical(_packaging("utils").parse_wheel_filename(item.name)[0])
    return _canonical(re.split(r"[<>=!~;\[ ]", item, maxsplit=1)[0])


def check_closure(have: Mapping[str, Path], python_version: str, platform: str, skip: Iterable[str]) -> None:
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
