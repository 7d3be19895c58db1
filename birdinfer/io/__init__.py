"""Files in and out: which inputs are read (``paths.py``), audio decoding (``audio.py``), prediction and
submission tables with atomic writes (``output.py``) and the output folder's lock (``lock.py``). Imports
nothing of birdinfer but its errors."""
