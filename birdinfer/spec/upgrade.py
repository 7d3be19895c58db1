"""Version 1 model folders (the BirdCLEF 2025 4th place's format: mel ``groups``) as version 2 specs.

:func:`spec_from_v1` writes a version 1 manifest's inference (REFERENCE.md sections 2 and 4) as a version 2
manifest dict; :func:`upgrade` parses it into the :class:`birdinfer.spec.v2.ManifestV2` that
:meth:`birdinfer.spec.manifest.Manifest.load` returns for a version 1 folder, so every folder runs on one engine
(:mod:`birdinfer.runtime.engine`). The files, checksums, variants and folder stay those of the version 1 manifest,
which the upgraded one keeps as ``.v1`` for the writers that rewrite a folder in its own format (bundle,
INT8 variants). :class:`birdinfer.runtime.mel_frontend.MelFrontEnd` runs version 1 mel groups on that engine.
"""

from __future__ import annotations

from dataclasses import replace
from ..errors import ModelFolderError
from .manifest import FORMAT_VERSION, UPGRADES, Manifest, MelGroup
from .files import FORMAT
from .v2 import ManifestV2
from .parse import parse_spec

__all__ = ["spec_from_v1", "upgrade", "group_feature", "V1_BLOCK_SECONDS"]

#: Block length of an upgraded folder: each 60 s block is one BirdCLEF soundscape (REFERENCE.md).
V1_BLOCK_SECONDS = 60.0


def group_feature(g: MelGroup) -> dict:
    """A version 1 mel group as a version 2 feature: ``stft → resize_time → mel → windows (2F, step 2F) → db per
    window → 1 channel`` (REFERENCE.md section 2)."""
    return {"steps": [
        {"op": "stft", "n_fft": g.n_fft, "hop_length": g.hop_length, "center": True, "pad_mode": "constant", "power": 2.0},
        {"op": "resize_time", "frames_per_row": g.frames_per_window},
        {"op": "mel", "n_mels": g.n_mels, "fmin": g.fmin, "fmax": g.fmax, "scale": "slaney", "norm": "slaney"},
        {"op": "windows", "length_frames": g.frames_per_chunk, "step_frames": g.frames_per_chunk, "fill": 0.0},
        {"op": "db", "top_db": g.top_db, "ref": 1.0},
        {"op": "channels", "repeat": 1},
    ]}


def spec_from_v1(manifest: Manifest) -> dict:
    """A version 1 manifest's inference (REFERENCE.md sections 2 and 4) as a version 2 manifest dict: per
    mel group a feature (:func:`group_feature`); per model ``sigmoid → timeline_rows (max per row)``; per group
    a weighted mean; the groups' weighted mean; then the ``[f, 1 − 2f, f]`` smoothing with ``nearest`` edges.
    The files and checksums are the same. An upgraded manifest (``.v1`` set) is written from its version 1 one."""
    manifest = getattr(manifest, "v1", None) or manifest  # an upgraded folder: the manifest it was read from
    if manifest.format_version != 1:
        raise ModelFolderError(f"{manifest._where}: spec_from_v1 needs a version 1 manifest")
    features = {g.name: group_feature(g) for g in manifest.groups}
    models, groups = [], []
    for m in manifest.models:
        models.append({
            "name": m.name, "arch": m.arch, "input": m.group, "weight": m.weight, "input_name": m.input_name,
            "input_shape": list(m.input_shape), "pad_value": -100.0,
            "outputs": [{"name": "logits", "kind": "frame_logits", "index": 0,
                         "shape": [-1, len(manifest.labels), m.frames_per_chunk]}],
            "steps": [{"step": "sigmoid"}, {"step": "timeline_rows", "overlap": "mean", "reduce": "max"}],
            "variants": {k: v.to_dict() for k, v in m.variants.items()},
            "export": dict(m.export),
        })
    for g in manifest.used_groups():
        groups.append({"name": g.name, "weight": g.weight, "steps": [{"step": "weighted_mean"}],
                       "members": [{"model": m.name, "weight": m.weight} for m in manifest.models_of(g.name)]})
    f = manifest.smoothing
    steps: list[dict] = [{"step": "weighted_mean"}]
    if f:
        steps.append({"step": "smooth", "kernel": [f, 1 - 2 * f, f], "mode": "nearest"})
    return {"format": FORMAT, "format_version": 2, "sample_rate": manifest.sample_rate, "labels": list(manifest.labels),
            "rows": {"seconds": manifest.window_seconds}, "block_seconds": V1_BLOCK_SECONDS, "features": features,
            "models": models, "ensemble": {"members": groups, "steps": steps}, "files": dict(manifest.files),
            "extra": {"converted_from": "format_version 1"}}


def upgrade(manifest: Manifest) -> ManifestV2:
    """Any manifest as the version 2 manifest the engine runs (a version 2 one unchanged). A version 1 manifest
    is written as a spec (:func:`spec_from_v1`) and parsed; the variants are the version 1 ones as parsed
    (CPU classes included), the provenance its ``extra``, the folder its folder."""
    if isinstance(manifest, ManifestV2):
        return manifest
    if manifest.format_version != 1:
        raise ModelFolderError(f"{manifest._where}: cannot run format_version {manifest.format_version!r}")
    spec = parse_spec(spec_from_v1(manifest), folder=manifest.folder, require_files=manifest.folder is not None)
    variants = {m.name: m.variants for m in manifest.models}
    models = tuple(replace(m, variants=variants[m.name]) for m in spec.models)
    return replace(spec, models=models, extra={**dict(manifest.extra), "converted_from": "format_version 1"},
                   v1=manifest)


UPGRADES[FORMAT_VERSION] = upgrade  # Manifest.load(folder) upgrades a version 1 folder through this
