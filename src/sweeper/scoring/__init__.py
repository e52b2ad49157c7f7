"""Scoring: per-image metrics (CLIP score, LAION aesthetic, PickScore) and set-level distances of a sweep's images.

    models.py   which scorer models a config names, whether they are here, loading them (once per process)
    metrics.py  Scorer: images + prompts -> one value per image and metric
    sweep.py    scoring the ok images of a sweep dir that lack a score (the CLI and the render loop)
    sets.py     FD and KID on CLIP features of each axis value's images against reference images
    tiny.py     tiny random-weight scorers (tiny-clip, tiny-aesthetic) for tests and demos
"""
