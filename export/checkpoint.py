"""Reading and writing SED checkpoints in the reference format (REFERENCE.md section 3).

Reference format: ``torch.save({"model_state_dict": averaged.state_dict()})`` where ``averaged`` is a
``torch.optim.swa_utils.AveragedModel`` wrapping the :class:`SEDNet`, so every key starts with ``module.``
and one extra key ``n_averaged`` counts the averaged weights. ``{"state_dict": ...}`` and plain state dicts
are accepted too.

Files are only ever read with ``torch.load(..., weights_only=True)``: a checkpoint holding pickled Python
objects other than tensors and plain containers is refused, never unpickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import torch

from birdinfer.errors import CheckpointError
from birdinfer.spec.manifest import MelGroup

from .network import SEDNet

__all__ = [
    "load_checkpoint",
    "read_state_dict",
    "checkpoint_class_count",
    "checkpoint_mel_count",
    "save_reference_checkpoint",
    "random_checkpoint",
]

_AVERAGED_PREFIX = "module."
_AVERAGED_COUNT_KEY = "n_averaged"
_CLASS_KEY = "att_block.cla.weight"  # (n_classes, C, 1)
_MEL_KEY = "bn0.weight"  # (n_mels,)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network state dict of a checkpoint file, ``module.`` prefix and ``n_averaged`` removed.

    Raises :class:`CheckpointError` (naming the file) when the file is missing, is not a torch file, holds
    arbitrary Python objects (refused by ``weights_only``), or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused to load: the file holds pickled Python objects other than tensors, and "
                "checkpoints are only read with torch.load(weights_only=True). Re-save just the state dict "
                "(torch.save({'model_state_dict': model.state_dict()}, path)) from a trusted environment."
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint file ({type(e).__name__}: {_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many unrelated types on non-torch bytes
        raise CheckpointError(f"{path}: not a torch checkpoint file ({type(e).__name__}: {_short(e)})") from None
    return _unwrap_state_dict(obj, path)


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model_state_dict", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: holds {type(obj).__name__}, not a state dict; expected {{'model_state_dict': ...}}, "
            "{'state_dict': ...} or a plain state dict"
        )
    state = {str(k): v for k, v in obj.items()}
    averaged = any(k.startswith(_AVERAGED_PREFIX) for k in state)
    if averaged:
        state.pop(_AVERAGED_COUNT_KEY, None)
        state = {k[len(_AVERAGED_PREFIX):] if k.startswith(_AVERAGED_PREFIX) else k: v for k, v in state.items()}
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"{path}: not a state dict: {len(non_tensors)} entries are not tensors (e.g. {non_tensors[:3]})"
        )
    return state


def checkpoint_class_count(state: Mapping[str, torch.Tensor], *, path: str | Path = "checkpoint") -> int:
    """Number of classes the network emits (rows of ``att_block.cla.weight``)."""
    if _CLASS_KEY not in state:
        raise CheckpointError(f"{path}: no {_CLASS_KEY!r} in the state dict: not an SED network checkpoint")
    return int(state[_CLASS_KEY].shape[0])


def checkpoint_mel_count(state: Mapping[str, torch.Tensor], *, path: str | Path = "checkpoint") -> int:
    """Number of mel bins the network expects (length of ``bn0.weight``)."""
    if _MEL_KEY not in state:
        raise CheckpointError(f"{path}: no {_MEL_KEY!r} in the state dict: not an SED network checkpoint")
    return int(state[_MEL_KEY].shape[0])


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def load_checkpoint(path: str | Path, *, arch: str, n_mels: int, n_classes: int) -> SEDNet:
    """Build ``SEDNet(arch, n_mels, n_classes)`` and load the checkpoint at ``path`` into it (eval mode).

    Raises :class:`CheckpointError` naming the file when it is not a torch file, is refused by the safe
    loader, has a class count other than ``n_classes`` (e.g. vs ``taxonomy.csv``), a mel count other than
    ``n_mels`` (the recipe group's), or does not fit architecture ``arch`` (missing/unexpected keys and
    shape mismatches listed briefly).
    """
    path = Path(path)
    state = read_state_dict(path)
    mels = checkpoint_mel_count(state, path=path)
    if mels != n_mels:
        raise CheckpointError(
            f"{path}: the network takes {mels} mel bins ({_MEL_KEY} has {mels} entries) but its recipe group "
            f"has n_mels={n_mels}; check the model's group in the recipe"
        )
    classes = checkpoint_class_count(state, path=path)
    if classes != n_classes:
        raise CheckpointError(
            f"{path}: the network emits {classes} classes ({_CLASS_KEY} has {classes} rows) but {n_classes} labels "
            "are expected; use the taxonomy.csv the model was trained with"
        )
    try:
        model = SEDNet(arch, n_mels=n_mels, n_classes=n_classes)
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build architecture {arch!r}: {e}") from e
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs {arch}) {_listing(mismatched)}")
        raise CheckpointError(
            f"{path}: does not fit architecture {arch!r} of the recipe: " + "; ".join(parts)
            + ". Check the model's arch in the recipe."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_reference_checkpoint(model: SEDNet, path: str | Path, *, n_averaged: int = 1) -> Path:
    """Write ``model`` as the reference did: ``{"model_state_dict": <AveragedModel state dict>}``.

    Keys get the ``module.`` prefix of ``torch.optim.swa_utils.AveragedModel`` plus ``n_averaged``
    (a long scalar tensor), so the file loads wherever the published checkpoints load.
    """
    path = Path(path)
    state = {_AVERAGED_PREFIX + k: v.detach().clone() for k, v in model.state_dict().items()}
    state[_AVERAGED_COUNT_KEY] = torch.tensor(int(n_averaged), dtype=torch.long)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model_state_dict": state}, tmp)
    tmp.replace(path)
    return path


def random_checkpoint(
    arch: str, n_mels: int, n_classes: int, path: str | Path, *, seed: int, group: MelGroup | None = None
) -> Path:
    """Write a random-weight ``SEDNet`` in the reference format, with realistic ``bn0`` statistics.

    ``bn0`` gets running means around −40 dB and variances 100–400 (what trained models hold, FINDINGS.md),
    so the normalised input is of order 1 and the outputs depend on the input. The encoder's batch-norm
    statistics are then measured on dB input: the front end's mel chunks of seeded synthetic audio when
    ``group`` is given (recommended: activations then have the scale a trained network has on real input),
    else dB-like noise. For tests and benchmarks.
    """
    if group is not None and group.n_mels != n_mels:
        raise ValueError(f"group {group.name!r} has n_mels={group.n_mels}, not {n_mels}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SEDNet(arch, n_mels=n_mels, n_classes=n_classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.bn0.running_mean.copy_(-40.0 + 5.0 * torch.randn(n_mels, generator=generator))
            model.bn0.running_var.copy_(100.0 + 300.0 * torch.rand(n_mels, generator=generator))
            model.bn0.weight.copy_(1.0 + 0.1 * torch.randn(n_mels, generator=generator))
            model.bn0.bias.copy_(0.1 * torch.randn(n_mels, generator=generator))
        _calibrate_encoder_batch_norm(model, _calibration_input(n_mels, group, seed=seed, generator=generator))
    return save_reference_checkpoint(model.eval(), path, n_averaged=1)


def _calibration_input(n_mels: int, group: MelGroup | None, *, seed: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Batches ``(b, 1, n_mels, T)`` of dB input to measure batch-norm statistics on."""
    if group is None:
        return [-40.0 + 15.0 * torch.randn(4, 1, n_mels, 256, generator=generator) for _ in range(2)]
    from birdinfer.runtime.mel_frontend import MelFrontEnd

    from .verify import synthetic_audio

    mel = MelFrontEnd([group])(synthetic_audio(30.0, seed=10_000 + seed))[group.name]  # 3 chunks
    return [torch.from_numpy(mel)]


def _calibrate_encoder_batch_norm(model: SEDNet, batches: list[torch.Tensor]) -> None:
    """Set the encoder's batch-norm running statistics to those of the given dB input.

    With timm's initial statistics (mean 0, variance 1) deep random encoders shrink or blow up their
    activations, leaving logits nearly constant; statistics measured on the input's own scale keep every
    layer near unit variance, as in a trained network.
    """
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration passes
    model.train()
    model.bn0.eval()  # keep the realistic bn0 statistics set above
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for norm in norms:
        norm.momentum = 0.1  # timm's default, as saved in trained checkpoints
    model.eval()
