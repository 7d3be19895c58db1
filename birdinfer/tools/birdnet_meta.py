"""``birdinfer import MODEL.tflite --labels LABELS.txt --meta-model MDATA.tflite``: BirdNET's location meta model
into the model folder (:mod:`birdinfer.runtime.meta_model` runs it).

OpenVINO's TFLite frontend reads the meta model whole (dense layers, sine encodings, its float16 weights
converted to float32): it is saved as an IR in the folder (``birdnet_meta.xml`` / ``.bin``), both files
checksummed in the manifest's ``files``, and ``extra.meta_model`` names it with the source file's name, size
and sha256. The graph is checked first: one float32 input ``[-1, 3]`` (latitude, longitude, week) and one
output ``[-1, labels]``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingDependencyError, ModelFolderError
from ..spec.files import MANIFEST_NAME, sha256_file
from ..runtime.meta_model import META_MODEL_KEY

__all__ = ["META_IR", "add_meta_model", "check_meta_model"]

META_IR = "birdnet_meta.xml"


def check_meta_model(path: str | Path, n_labels: int):
    """``(openvino, the meta model read by it)`` after the checks of the module docstring."""
    path = Path(path)
    try:
        import openvino as ov
    except ImportError as e:
        raise MissingDependencyError(f"birdinfer import needs openvino: pip install openvino ({e})") from e
    if not path.is_file():
        raise ModelFolderError(f"--meta-model {path} is not a file; give BirdNET's "
                               "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:  # OpenVINO raises its own RuntimeError subclasses for a file it cannot parse
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and "Exception from" not in line]
        raise ModelFolderError(f"{path}: not BirdNET's meta model: OpenVINO cannot read it ({(lines or ['?'])[-1][:200]}); "
                               "give BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite") from e
    inputs, outputs = model.inputs, model.outputs
    shapes = ([i.get_partial_shape() for i in inputs], [o.get_partial_shape() for o in outputs])
    ok = (len(inputs) == 1 and len(outputs) == 1 and shapes[0][0].rank.get_length() == 2 and shapes[0][0][1].is_static
          and shapes[0][0][1].get_length() == 3 and shapes[1][0].rank.get_length() == 2 and shapes[1][0][1].is_static
          and shapes[1][0][1].get_length() == n_labels)
    if not ok:
        raise ModelFolderError(f"{path}: not BirdNET's meta model for these {n_labels} labels (inputs {shapes[0]}, "
                               f"outputs {shapes[1]}; expected one input [-1, 3] and one output [-1, {n_labels}])")
    return ov, model


def add_meta_model(folder: str | Path, meta_model: str | Path) -> dict:
    """Convert ``meta_model`` into ``folder`` (an imported BirdNET folder) and record it in its manifest.
    Returns the ``extra.meta_model`` entry."""
    folder, meta_model = Path(folder), Path(meta_model)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    ov, model = check_meta_model(meta_model, len(data.get("labels", [])))
    ov.save_model(model, str(folder / META_IR), compress_to_fp16=False)
    bin_name = META_IR[: -len(".xml")] + ".bin"
    data.setdefault("files", {}).update({META_IR: sha256_file(folder / META_IR), bin_name: sha256_file(folder / bin_name)})
    entry = {"openvino": META_IR, "source": {"file": meta_model.name, "bytes": meta_model.stat().st_size,
                                             "sha256": sha256_file(meta_model)}}
    data.setdefault("extra", {})[META_MODEL_KEY] = entry
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return entry
