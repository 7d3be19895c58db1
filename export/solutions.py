"""Random-weight builds of other public solutions: torch networks → ONNX files + a version 2 spec for ``birdinfer import``.

A solution spec (``weights/birdclef20xx_*.spec.json``, docs/manifest_v2.md without ``files``) names, per model,
its ONNX file and, under ``export``, how to build the network: ``{"head": "gem_sed" | "classifier" | "wave_sed",
"arch": <timm name>, "folds": [<timm name>, ...] (wave_sed), "in_chans": n (classifier)}``.
:func:`build_solution` builds every model with random weights (``pretrained=False``), gives each batch norm
the statistics of the model's own input computed from seeded synthetic audio (so outputs depend on the input,
as with trained weights), exports ONNX (opset 17, TorchScript exporter, dynamic batch axis) next to a copy of
the spec, and returns the spec path and the torch modules (for parity tests against the transcriptions in
tests/solutions/).

CI builds override the architectures with small real ones (``arch=...``) and the label count
(``n_classes=...``); the full builds keep the spec's architectures (docs/solutions/*.md).
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .heads import FoldMean, GemSEDNet, PerchLikeNet, WaveSEDNet, timm_classifier
from .verify import synthetic_audio

__all__ = ["HEADS", "build_network", "calibrate_batch_norm", "export_graph", "build_solution", "calibration_input"]

ONNX_OPSET = 17
SR = 32000


def _gem_sed(info: dict, n_classes: int) -> nn.Module:
    return GemSEDNet(info["arch"], n_classes, in_chans=int(info.get("in_chans", 3)))


def _classifier(info: dict, n_classes: int) -> nn.Module:
    return timm_classifier(info["arch"], n_classes, in_chans=int(info.get("in_chans", 1)))


def _wave_sed(info: dict, n_classes: int) -> nn.Module:
    folds = info.get("folds") or [info["arch"]]
    return FoldMean([WaveSEDNet(arch, n_classes) for arch in folds])


def _perch_like(info: dict, n_classes: int) -> nn.Module:
    return PerchLikeNet(info.get("arch", "efficientnet_b3"), int(info.get("n_labels", n_classes)))


#: head type → builder(export info, class count); the recipe/spec field ``export.head`` names one.
HEADS: dict[str, Callable[[dict, int], nn.Module]] = {"gem_sed": _gem_sed, "classifier": _classifier, "wave_sed": _wave_sed,
                                                      "perch_like": _perch_like}


def build_network(info: dict, n_classes: int) -> nn.Module:
    head = info.get("head")
    if head not in HEADS:
        raise ValueError(f"export.head must be one of {sorted(HEADS)}, got {head!r}")
    return HEADS[head](info, n_classes)


# ----------------------------------------------------------------------------------- calibration input
def _torch_mel_db_norm(y: np.ndarray, *, n_fft: int, hop: int, n_mels: int, fmax: float) -> torch.Tensor:
    """torchaudio-style window-normalised HTK mel → dB(top 80) → z-score/min-max over the whole signal."""
    from .frontends import ChannelAgnosticDB, NormalizeMelSpec, melscale_fbanks_htk

    window = torch.hann_window(n_fft)
    spec = torch.stft(torch.from_numpy(y), n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = (spec / window.pow(2).sum().sqrt()).abs().pow(2)
    mel = melscale_fbanks_htk(n_fft // 2 + 1, 0.0, fmax, n_mels, SR).T @ power
    return NormalizeMelSpec()(ChannelAgnosticDB(80.0)(mel[None]))[0]


def _calibration_audio(seconds: float, seed: int) -> list[np.ndarray]:
    """Seeded synthetic soundscapes of three kinds (calls over faint noise; the same with every other 5 s nearly
    silent; calls under loud noise): batch-norm statistics measured on one kind only make deep random networks
    blow up (activations ×1000 after a few stages) on audio of another kind; a mix keeps them of order one."""
    base = synthetic_audio(seconds, seed=seed)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(base)).astype(np.float32)
    gaps = base.copy()
    for start in range(5 * SR, len(gaps), 10 * SR):
        gaps[start: start + 5 * SR] *= 1e-3
    return [base, gaps, np.clip(base + 0.05 * noise, -1, 1)]


def calibration_input(info: dict, *, seed: int, windows: int = 4) -> torch.Tensor:
    """A batch of the model's own input, made from seeded synthetic audio through its solution's front end."""
    head = info.get("head")
    if head == "gem_sed":  # 2025 1st: 20 s windows of a whole-file normalised HTK mel, 3 channels
        batch = []
        for y in _calibration_audio(5.0 * windows, seed):  # padded as the 1st place pads a file of `windows` rows
            side = -(-((512 + (windows - 1) * 128 - 1) * 1252 - len(y)) // 2)
            mel = _torch_mel_db_norm(np.pad(y, (side, side)), n_fft=4096, hop=1252, n_mels=224, fmax=16000.0)
            batch += [mel[:, 128 * i: 128 * i + 512] for i in range(windows)]
        return torch.stack(batch)[:, None].expand(-1, int(info.get("in_chans", 3)), -1, -1).contiguous()
    if head == "classifier":  # 2024 1st: per-chunk Slaney mel ×1024² → dB, 10 s context windows
        import librosa

        batch = []
        for y in _calibration_audio(5.0 * (windows + 1), seed):
            mel = librosa.feature.melspectrogram(y=1024.0 * y[: 5 * SR * (windows + 1)].reshape(-1, 5 * SR), sr=SR,
                                                 n_fft=1024, hop_length=500, n_mels=128, fmin=40, fmax=15000)[:, :, :320]
            x = np.concatenate([mel[:-1], mel[1:]], axis=-1)[..., 160:-160]
            batch.append(librosa.power_to_db(x, ref=1.0, top_db=100.0)[:, None].astype(np.float32))
        return torch.from_numpy(np.concatenate(batch))
    if head == "perch_like":  # raw 5 s pieces
        return torch.from_numpy(np.concatenate([a.reshape(windows, 5 * SR) for a in _calibration_audio(5.0 * windows, seed)])).float()
    if head == "wave_sed":  # 2025 2nd: peak-normalised 5 s pieces, some left-padded like a file's last piece
        y = np.concatenate([a.reshape(windows, 5 * SR) for a in _calibration_audio(5.0 * windows, seed)])
        padded = y[::2].copy()
        for i, cut in enumerate(np.random.default_rng(seed).uniform(0.2, 0.9, len(padded))):
            padded[i, : int(cut * 5 * SR)] = 0.0
        y = np.concatenate([y, padded])
        return torch.from_numpy(y / np.maximum(np.abs(y).max(axis=1, keepdims=True), 1e-12)).float()
    raise ValueError(f"no calibration input for head {head!r}")


def calibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Set every batch norm's running statistics to those of ``batches`` (cumulative average); eval mode after.

    Random timm backbones with running statistics (0, 1) shrink or blow up activations layer after layer and
    give nearly constant outputs; measured statistics keep each layer near unit variance, as trained ones do.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()
    return model.eval()


def random_network(info: dict, n_classes: int, *, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(info, n_classes)
        # Head biases around −2 and 1×1-conv weights ×8 (PyTorch's default init gives logits within ±0.1 of
        # the bias here): sigmoid outputs then spread over (0, 1) and move with the input, as trained ones do.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("fix_scale.bias", "classifier.bias", "fc.bias")):
                    param.add_(-2.0)
                if name.endswith(("fix_scale.weight", "attention.weight")):
                    param.mul_(8.0)
        return calibrate_batch_norm(model, [calibration_input(info, seed=1000 + seed)])


def export_graph(model: nn.Module, path: str | Path, example: torch.Tensor, *, input_name: str,
                 output_name: str | list[str]) -> Path:
    """ONNX opset 17 (TorchScript exporter) with a dynamic first axis; checked with ``onnx.checker``. Several
    ``output_name`` for a network returning a tuple (e.g. :class:`PerchLikeNet`: label, embedding)."""
    import onnx

    path = Path(path)
    outputs = [output_name] if isinstance(output_name, str) else list(output_name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=outputs,
                          dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                          do_constant_folding=True)
    onnx.checker.check_model(str(path))
    return path


# ------------------------------------------------------------------------------------------- solutions
def _small_label_map(label_map: dict, labels: list[str], size: int) -> dict:
    """Keep the map's labels that are still in ``labels``, then its other labels, ``size`` in all."""
    keep = [x for x in label_map["labels"] if x in set(labels)]
    rest = [x for x in label_map["labels"] if x not in set(labels)]
    return {**label_map, "labels": (keep + rest)[:size]}


def build_solution(spec: str | Path, out: str | Path, *, arch: str | None = None, n_classes: int | None = None,
                   folds: int | None = None, specialist_classes: int = 16, models: list[str] | None = None,
                   seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """Build every model of ``spec`` with random weights, export its ONNX into ``out``, write ``out/spec.json``.

    Overrides for small (CI) builds: ``arch`` replaces every architecture (folds too), ``n_classes`` keeps the
    first labels (label maps shrink to ``specialist_classes`` entries, overlapping labels first), ``folds``
    keeps that many folds per fold-ensemble graph, ``models`` keeps only the named models (their weights and
    steps unchanged; ensemble members naming others are not rewritten, so use it with the default members). Returns ``(out/spec.json, {model name: torch module})``.
    """
    spec_path = Path(spec)
    data = json.loads(spec_path.read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = copy.deepcopy(data)
    if n_classes is not None:
        data["labels"] = data["labels"][:n_classes]
    if models is not None:
        unknown = sorted(set(models) - {m["name"] for m in data["models"]})
        if unknown:
            raise ValueError(f"{spec_path}: no model named {unknown}")
        data["models"] = [m for m in data["models"] if m["name"] in models]
    modules: dict[str, Any] = {}
    for index, entry in enumerate(data["models"]):
        info = dict(entry.get("export", {}))
        if arch is not None:
            info["arch"] = arch
            if info.get("folds"):
                info["folds"] = [arch] * len(info["folds"])
        if folds is not None and info.get("folds"):
            info["folds"] = info["folds"][:folds]
        if info.get("checkpoints") and info.get("folds"):
            info["checkpoints"] = info["checkpoints"][: len(info["folds"])]
        if "label_map" in entry and n_classes is not None:
            entry["label_map"] = _small_label_map(entry["label_map"], data["labels"], specialist_classes)
        classes = len(entry["label_map"]["labels"]) if "label_map" in entry else len(data["labels"])
        model = random_network(info, classes, seed=seed + index)
        shape = [2 if d == -1 else d for d in entry["input_shape"]]
        onnx_name = entry["variants"]["f32"]["onnx"]
        names = (list(info.get("outputs", ["label", "embedding"])) if info.get("head") == "perch_like"
                 else entry["outputs"][0]["name"])
        export_graph(model, out / onnx_name, torch.zeros(shape), input_name=entry.get("input_name", "x"), output_name=names)
        entry["export"] = {**info, "seed": seed + index, "weights": "random (pretrained=False), batch norm calibrated on synthetic audio"}
        modules[entry["name"]] = model
    target = out / "spec.json"
    target.write_text(json.dumps(data, indent=1))
    return target, modules


# ------------------------------------------------------------------------------------ real checkpoints
def checkpoint_names(entry: dict) -> list[str]:
    """Checkpoint file(s) of a spec model, relative to the checkpoint folder: ``export.checkpoint`` (one file) or
    ``export.checkpoints`` (one per fold of a ``wave_sed`` graph); default ``<name>.pt`` / ``<name>_fold<i>.ckpt``."""
    info = entry.get("export", {})
    if info.get("head") == "wave_sed":
        names = info.get("checkpoints") or [f"{entry['name']}_fold{i}.ckpt" for i in range(len(info.get("folds") or [1]))]
    else:
        names = [info.get("checkpoint") or f"{entry['name']}.pt"]
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"model {entry['name']!r}: checkpoint name {name!r} must stay inside the checkpoint folder")
    return list(names)


def _strip(state: dict, prefix: str, *, only_prefixed: bool) -> dict:
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if only_prefixed else \
        {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _load_into(module: nn.Module, state: dict, path: Path, *, ignore_unexpected: bool) -> None:
    from birdinfer.errors import CheckpointError

    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [] if ignore_unexpected else [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: does not fit the spec's network: missing {missing[:4]} ({len(missing)}), "
                              f"unexpected {unexpected[:4]} ({len(unexpected)}), shape mismatches {shapes[:3]}; "
                              "check export.arch / export.head and the label count of the spec")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


def load_solution_model(entry: dict, n_classes: int, checkpoints: str | Path) -> nn.Module:
    """The network of a spec model with its checkpoint(s) loaded, in the solution's own checkpoint format.

    - ``gem_sed`` (2025 1st): their ``CLEFClassifierSED`` state dict; ``mel_spectr_generator.*`` (torchaudio
      buffers) is dropped, ``backbone.*`` / ``head.*`` must match exactly.
    - ``classifier`` (2024 1st): a Lightning checkpoint; only keys under ``model.`` are kept, prefix removed.
    - ``wave_sed`` (2025 2nd): one Lightning checkpoint per fold, prefix ``model.`` removed, extra keys ignored
      (their ``strict=False``), every key of the network required.
    Files are read with ``torch.load(weights_only=True)`` (``checkpoint.read_state_dict``).
    """
    from .checkpoint import read_state_dict

    info = entry.get("export", {})
    model = build_network(info, n_classes)
    paths = [Path(checkpoints) / name for name in checkpoint_names(entry)]
    if info["head"] == "wave_sed":
        if len(paths) != len(model.models):
            raise ValueError(f"model {entry['name']!r}: {len(paths)} checkpoints for {len(model.models)} folds")
        for fold, path in zip(model.models, paths):
            _load_into(fold, _strip(read_state_dict(path), "model.", only_prefixed=False), path, ignore_unexpected=True)
    elif info["head"] == "classifier":
        _load_into(model, _strip(read_state_dict(paths[0]), "model.", only_prefixed=True), paths[0], ignore_unexpected=False)
    else:
        state = {k: v for k, v in read_state_dict(paths[0]).items() if not k.startswith("mel_spectr_generator.")}
        _load_into(model, state, paths[0], ignore_unexpected=False)
    return model.eval()


def save_solution_checkpoint(entry: dict, model: nn.Module, checkpoints: str | Path) -> list[Path]:
    """Write ``model`` in the solution's own checkpoint layout (for tests of :func:`load_solution_model`)."""
    folder = Path(checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in checkpoint_names(entry)]
    head = entry["export"]["head"]
    if head == "wave_sed":
        for fold, path in zip(model.models, paths):
            torch.save({"state_dict": {f"model.{k}": v for k, v in fold.state_dict().items()}, "epoch": 1}, path)
    elif head == "classifier":
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 1}, paths[0])
    else:
        torch.save(dict(model.state_dict()), paths[0])
    return paths


def export_solution(spec: str | Path, checkpoints: str | Path, out: str | Path, *, models: list[str] | None = None,
                    labels: list[str] | None = None):
    """Real checkpoints → ONNX (staged next to a copy of the spec in a temporary folder) → ``birdinfer import`` into ``out``.

    ``labels`` (e.g. a taxonomy's primary_label column) replaces the spec's labels (same count). Returns the
    imported folder's manifest.
    """
    from birdinfer.tools.importer import import_folder

    spec_path = Path(spec)
    data = json.loads(spec_path.read_text())
    if labels is not None:
        if len(labels) != len(data["labels"]):
            raise ValueError(f"{spec_path}: {len(labels)} labels given, the spec has {len(data['labels'])}")
        data["labels"] = list(labels)
    if models is not None:
        data["models"] = [m for m in data["models"] if m["name"] in set(models)]
        if not data["models"]:
            raise ValueError(f"{spec_path}: none of {models} is a model of the spec")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staging = Path(tmp)
        for entry in data["models"]:
            classes = len(entry["label_map"]["labels"]) if "label_map" in entry else len(data["labels"])
            model = load_solution_model(entry, classes, checkpoints)
            shape = [2 if d == -1 else d for d in entry["input_shape"]]
            export_graph(model, staging / entry["variants"]["f32"]["onnx"], torch.zeros(shape),
                         input_name=entry.get("input_name", "x"), output_name=entry["outputs"][0]["name"])
            entry["export"] = {**entry.get("export", {}), "checkpoint_files": checkpoint_names(entry)}
            del model
        target = staging / "spec.json"
        target.write_text(json.dumps(data, indent=1))
        return import_folder(target, out, overwrite=True)
