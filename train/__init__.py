"""birdinfer_train: training SED ensemble members from BirdCLEF-format data (needs birdinfer[train]).

Stages, one module each::

    losses.py    hard / soft AUC losses (REFERENCE.md section 5) and BCE
    data.py      taxonomy + train.csv labels, cached mel power, 10 s crops, augmentation
    training.py  train(): the training loop, weight averaging, reference-format checkpoint
    pseudo.py    soft labels from ensemble predictions of unlabelled soundscapes
    demo.py      run_demo(): synth → train → export → submit → score on synthetic data (``birdinfer demo``)
"""

from .losses import LOSSES, auc_loss, bce_loss, get_loss, soft_auc_loss
from .pseudo import soft_labels_from_predictions
from .training import resolve_group, train
from .demo import run_demo

__all__ = [
    "train",
    "run_demo",
    "resolve_group",
    "soft_auc_loss",
    "auc_loss",
    "bce_loss",
    "get_loss",
    "LOSSES",
    "soft_labels_from_predictions",
]
