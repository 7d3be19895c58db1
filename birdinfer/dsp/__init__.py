"""DSP kernels in plain numpy (no birdinfer imports): windows, STFT frames, the cv2 time resize, mel filterbanks
and the fused "only the frames and bins that are read" mel kernel the front-end ops run on.

:mod:`birdinfer.dsp.mel` — mel scales and filterbanks, the banded split of a filterbank;
:mod:`birdinfer.dsp.frames` — frame counts, the cv2 ``INTER_LINEAR`` resize plan, the Hann window and
:func:`resized_mel_power` (STFT → time resize → mel for several outputs sharing frames of one ``n_fft``).
"""

from .frames import (
    SpectrumTarget,
    hann_window,
    power_spectra,
    power_to_db_chunks,
    resize_plan,
    resized_mel_power,
    resized_width,
    stft_frames,
)
from .mel import MelBand, MelBands, hz_to_mel_slaney, mel_bands, mel_filterbank, mel_to_hz_slaney, project_bands

__all__ = [
    "SpectrumTarget",
    "MelBand",
    "MelBands",
    "hann_window",
    "hz_to_mel_slaney",
    "mel_bands",
    "mel_filterbank",
    "mel_to_hz_slaney",
    "power_spectra",
    "power_to_db_chunks",
    "project_bands",
    "resize_plan",
    "resized_mel_power",
    "resized_width",
    "stft_frames",
]
