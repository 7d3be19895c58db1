"""BirdNET's location meta model: ``(latitude, longitude, week)`` → one occurrence score per label.

``birdinfer import MODEL.tflite --labels LABELS.txt --meta-model MDATA.tflite`` converts the meta model
(``BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite``: input ``[-1, 3]``, output ``[-1, labels]``) to an
OpenVINO IR inside the model folder and names it in the manifest: ``extra.meta_model.openvino`` (the ``.xml``;
its ``.bin`` beside it), both files checksummed in ``files``. It runs here in float32 (never bf16, whatever
the CPU), reading nothing outside the folder; its scores equal LiteRT's within ~1e-6 (``tests/test_birdnet_outputs.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, ModelFolderError, ParameterError

__all__ = ["META_MODEL_KEY", "has_meta_model", "meta_model_files", "location_scores"]

#: The key of ``extra`` naming the meta model's IR.
META_MODEL_KEY = "meta_model"


def has_meta_model(manifest) -> bool:
    return isinstance((manifest.extra or {}).get(META_MODEL_KEY), dict)


def meta_model_files(manifest) -> tuple[str, str]:
    """The IR's ``.xml`` and ``.bin`` names; a :class:`ParameterError` saying how to add one when the folder has none."""
    entry = (manifest.extra or {}).get(META_MODEL_KEY)
    if not isinstance(entry, dict) or not str(entry.get("openvino", "")).endswith(".xml"):
        raise ParameterError(
            f"{manifest.folder} has no location meta model for --lat/--lon/--week: import it with `birdinfer import "
            f"MODEL.tflite --labels LABELS.txt --meta-model BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite --out DIR`, "
            f"or give --species-list FILE")
    xml = str(entry["openvino"])
    return xml, xml[: -len(".xml")] + ".bin"


def location_scores(manifest, lat: float, lon: float, week: float) -> np.ndarray:
    """The meta model's scores ``(n_labels,)`` float32 for one location and week (checksums verified first)."""
    xml, bin_name = meta_model_files(manifest)
    manifest.verify_checksums([xml, bin_name])
    try:
        import openvino as ov
    except ImportError as e:
        raise MissingDependencyError(f"the location meta model runs on openvino: pip install openvino ({e})") from e
    core = ov.Core()
    model = core.read_model(str(manifest.path_of(xml)), str(manifest.path_of(bin_name)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    scores = np.asarray(compiled(np.array([[lat, lon, week]], np.float32))[0], np.float32).reshape(-1)
    if scores.size != len(manifest.labels):
        raise ModelFolderError(f"{Path(manifest.path_of(xml))}: the meta model gives {scores.size} scores for "
                               f"{len(manifest.labels)} labels; import the folder again")
    return scores
