"""The synthetic BirdCLEF-format dataset: layout, formats, labels, determinism."""

from __future__ import annotations

import ast
import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdinfer.errors import ParameterError
from birdinfer.tools.synth import make_dataset
from birdinfer.tools.synth_calls import CALL_RMS, CALL_TYPES, make_species, render_call


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth") / "data", species=4, recordings_per_species=3,
                        soundscapes=4, seed=5, train_seconds=(10, 12))


def test_layout_and_tables(small):
    taxonomy = pd.read_csv(small / "taxonomy.csv")
    assert list(taxonomy.primary_label) == ["sp01", "sp02", "sp03", "sp04"]
    assert {"primary_label", "common_name", "class_name", "scientific_name", "inat_taxon_id"} <= set(taxonomy.columns)
    train = pd.read_csv(small / "train.csv")
    assert {"primary_label", "secondary_labels", "filename", "rating"} <= set(train.columns)
    assert len(train) == 12
    for row in train.itertuples():
        secondary = ast.literal_eval(row.secondary_labels)
        assert isinstance(secondary, list) and row.primary_label not in secondary
        assert set(secondary) <= set(taxonomy.primary_label)
        assert row.filename.startswith(row.primary_label + "/") and row.filename.endswith(".ogg")
        info = sf.info(small / "train_audio" / row.filename)
        assert info.format == "OGG" and info.subtype == "VORBIS" and info.samplerate == 32000 and info.channels == 1
        assert 9.9 <= info.duration <= 12.1
    tests = sorted((small / "test_soundscapes").glob("*.ogg"))
    trains = sorted((small / "train_soundscapes").glob("*.ogg"))
    assert len(tests) == 2 and len(trains) == 2
    for path in tests + trains:
        assert sf.info(path).frames == 60 * 32000


def test_solution_and_sample_submission(small):
    solution = pd.read_csv(small / "test_solution.csv")
    sample = pd.read_csv(small / "sample_submission.csv")
    species = list(pd.read_csv(small / "taxonomy.csv").primary_label)
    assert list(solution.columns) == ["row_id"] + species == list(sample.columns)
    stems = sorted(p.stem for p in (small / "test_soundscapes").glob("*.ogg"))
    expected_ids = [f"{stem}_{5 * (k + 1)}" for stem in stems for k in range(12)]
    assert list(solution.row_id) == expected_ids == list(sample.row_id)
    values = solution[species].to_numpy()
    assert set(np.unique(values)) <= {0, 1} and values.sum() > 0
    assert (sample[species].to_numpy() == 0).all()


def test_labelled_windows_are_louder_in_the_species_band(small):
    """A positive window holds more energy near the species' pitch than the negative windows of that file."""
    import json

    meta = json.loads((small / "synth.json").read_text())
    pitch = {s["label"]: s["pitch_hz"] for s in meta["species"]}
    solution = pd.read_csv(small / "test_solution.csv")
    checked = 0
    for stem, rows in solution.groupby(solution.row_id.str.rsplit("_", n=1).str[0]):
        y, sr = sf.read(small / "test_soundscapes" / f"{stem}.ogg", dtype="float32")
        windows = y.reshape(12, -1)
        spectra = np.abs(np.fft.rfft(windows, axis=1)) ** 2
        freqs = np.fft.rfftfreq(windows.shape[1], 1 / sr)
        for label, f0 in pitch.items():
            if meta["species"][int(label[2:]) - 1]["call_type"] in ("harmonic_stack", "click_train"):
                continue  # energy spread over harmonics / broadband: the band test does not apply
            positive = rows[label].to_numpy().astype(bool)
            if positive.any() and (~positive).any():
                band = (freqs > 0.55 * f0) & (freqs < 1.6 * f0)
                energy = spectra[:, band].sum(axis=1)
                assert energy[positive].max() > np.median(energy[~positive])
                checked += 1
    assert checked > 0


def test_deterministic_in_seed(tmp_path):
    def digest(folder):
        h = hashlib.sha256()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(folder)).encode())
                # OGG streams carry a random serial number: compare decoded samples, not bytes.
                h.update(sf.read(path, dtype="float32")[0].tobytes() if path.suffix == ".ogg" else path.read_bytes())
        return h.hexdigest()

    kwargs = dict(species=2, recordings_per_species=1, soundscapes=2, train_seconds=(10, 10))
    a = make_dataset(tmp_path / "a", seed=1, **kwargs)
    b = make_dataset(tmp_path / "b", seed=1, **kwargs)
    c = make_dataset(tmp_path / "c", seed=2, **kwargs)
    assert digest(a) == digest(b) != digest(c)


def test_species_are_distinct_and_calls_vary():
    rng = np.random.default_rng(0)
    species = make_species(10, rng)
    assert len({s.label for s in species}) == 10
    assert {s.call_type for s in species} == set(CALL_TYPES)
    # Species sharing a call shape differ in pitch by a clear factor.
    for a in species:
        for b in species:
            if a is not b and a.call_type == b.call_type:
                assert max(a.pitch_hz, b.pitch_hz) / min(a.pitch_hz, b.pitch_hz) > 1.2
    one, two = render_call(species[0], rng, 32000), render_call(species[0], rng, 32000)
    assert len(one) != len(two) or not np.allclose(one, two)
    # every call shape is equally loud (RMS, not peak: a peak-normalised click train was 13.5 dB quieter)
    for s in species:
        call = render_call(s, rng, 32000)
        assert np.sqrt(np.mean(call ** 2)) == pytest.approx(CALL_RMS, rel=1e-6), s.call_type


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ParameterError, match="species"):
        make_dataset(tmp_path, species=1)
    with pytest.raises(ParameterError, match="train_seconds"):
        make_dataset(tmp_path, train_seconds=(5, 2))
