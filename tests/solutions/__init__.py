"""Plain torch/librosa transcriptions of other teams' inference (facts in docs/solutions/), used as oracles."""
