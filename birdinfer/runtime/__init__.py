"""Running a folder: CPU classes (``cpu.py``), the precision plan (``plan.py``), model backends (``models.py``),
the front-end graph and the engine (``engine.py``), whole-file specs streamed in bounded memory
(``streaming.py``, ``stream_exec.py``, ``streaming_rows.py``), the :class:`Predictor` over recordings
(``pipeline.py``) and the time budget (``budget.py``). Never imports torch, timm or cv2."""
