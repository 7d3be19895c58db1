"""birdinfer_export: trained SED checkpoints → verified ONNX / OpenVINO model folders (needs birdinfer[export]).

Stages, one module each::

    recipe.py      which checkpoints form the ensemble (arch, mel group, weight)
    checkpoint.py  safe loading (weights_only) of reference-format checkpoints into network.SEDNet
    convert.py     ONNX + OpenVINO IR export, parity check, manifest (export_models)
    verify.py      mel input from the runtime's front end, deviation figures
    quantize.py    NNCF INT8 post-training quantization
"""

from .checkpoint import load_checkpoint, random_checkpoint, read_state_dict, save_reference_checkpoint
from .convert import PARITY_TOLERANCE, ExportError, export_models
from .network import SEDNet
from .quantize import DEPTHWISE_OPS
from .recipe import Recipe, RecipeModel, default_recipe_path, load_recipe

__all__ = [
    "export_models",
    "ExportError",
    "PARITY_TOLERANCE",
    "DEPTHWISE_OPS",
    "load_checkpoint",
    "read_state_dict",
    "save_reference_checkpoint",
    "random_checkpoint",
    "SEDNet",
    "Recipe",
    "RecipeModel",
    "load_recipe",
    "default_recipe_path",
]
