"""Jobs over many recordings: ``submit.py`` (make_submission → submission.csv), ``predict.py`` (per-window tables
for a folder of recordings, resumable), ``journal.py`` (the one resume journal), ``distributed.py``,
``ray_pool.py`` and ``shards.py`` (Ray, its actors, its output folder), ``pseudo.py`` (pseudo-labels)."""
