"""Tools around the runtime: ``importer.py`` (``birdinfer import``), ``precision.py`` (bf16 / INT8 error measured
when a folder is written), ``bench*.py`` (stage and model timings), ``bundle.py`` and ``wheels.py`` (the Kaggle
bundle), ``synth.py`` (synthetic soundscapes), ``metric.py`` (the competition metric)."""
