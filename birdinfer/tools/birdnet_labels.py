"""``birdinfer import MODEL.tflite --labels LABELS.txt --translated-labels DIR``: BirdNET's translated labels
into the model folder, for ``predict --locale``.

BirdNET-Analyzer ships one file per locale beside its labels (``labels/V2.4/`` in its package):
``<labels file stem>_<locale>.txt`` (``BirdNET_GLOBAL_6K_V2.4_Labels_de.txt``), one ``Scientific_Common`` line per
label in the labels' order, the common name translated. It picks the file of ``--locale`` by that name
(``en``: the labels themselves). The import does the same over ``DIR``: every file named so is checked (as many
lines as labels, each with its label's scientific name), copied into the folder as ``labels_<locale>.txt``,
checksummed in the manifest's ``files`` and listed in ``extra.translated_labels`` (locale → file). The lines are
kept as they are (BirdNET-Analyzer does not trim them). :func:`read_labels` reads the model's own labels file. These files carry the model's licence, like the labels.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import ModelFolderError, ParameterError
from ..spec.files import MANIFEST_NAME, sha256_file

__all__ = ["TRANSLATED_KEY", "add_translated_labels", "check_translations", "read_labels", "translation_files"]

#: The manifest's ``extra`` entry: locale → file in the folder.
TRANSLATED_KEY = "translated_labels"


def read_labels(path: str | Path) -> list[str]:
    """The model's labels file: distinct labels, one per line (blank lines skipped, spaces trimmed)."""
    path = Path(path)
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot read the labels file ({e})") from e
    if not labels or len(set(labels)) != len(labels):
        raise ModelFolderError(f"{path}: the labels file must list distinct labels, one per line")
    return labels


def translation_files(folder: str | Path, labels_name: str) -> dict[str, Path]:
    """``{locale: file}`` of ``folder``'s files named ``<stem of labels_name>_<locale>.txt``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ParameterError(f"--translated-labels {folder} is not a folder: give the folder of BirdNET-Analyzer's "
                             "translated labels (labels/V2.4 in its package)")
    stem = Path(labels_name).stem
    pattern = re.compile(re.escape(stem) + r"_([A-Za-z]{2,3}(?:_[A-Za-z]{2})?)\.txt")
    found = {m.group(1): p for p in sorted(folder.iterdir()) if (m := pattern.fullmatch(p.name)) and p.is_file()}
    if not found:
        raise ParameterError(f"--translated-labels {folder}: no file named {stem}_<locale>.txt (as BirdNET-Analyzer "
                             f"names the translations of {labels_name}); give the folder holding them")
    return found


def _checked_lines(path: Path, labels: list[str]) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot read the translated labels ({e})") from e
    if len(lines) != len(labels):
        raise ModelFolderError(f"{path}: {len(lines)} lines for the folder's {len(labels)} labels; give the "
                               "translations of these labels")
    for n, (line, label) in enumerate(zip(lines, labels), 1):
        if line.split("_", 1)[0] != label.split("_", 1)[0]:
            raise ModelFolderError(f"{path}, line {n}: {line!r} is not a translation of the label {label!r} (another "
                                   "scientific name); give the translations of these labels")
    return lines


def check_translations(source: str | Path, labels_name: str, labels: list[str]) -> None:
    """Fail (naming the file) unless ``source`` holds translations of ``labels`` that :func:`add_translated_labels`
    would copy: before the import's long work."""
    for file in translation_files(source, labels_name).values():
        _checked_lines(file, labels)


def add_translated_labels(folder: str | Path, source: str | Path, labels_name: str) -> dict[str, str]:
    """Copy the translations of ``labels_name`` found in ``source`` into the model ``folder`` and record them.
    Returns the ``extra.translated_labels`` entry."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    labels = list(data.get("labels", []))
    found = translation_files(source, labels_name)
    entry = {}
    for locale, file in found.items():
        _checked_lines(file, labels)
        name = f"labels_{locale}.txt"
        shutil.copyfile(file, folder / name)
        data.setdefault("files", {})[name] = sha256_file(folder / name)
        entry[locale] = name
    data.setdefault("extra", {})[TRANSLATED_KEY] = entry
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return entry
