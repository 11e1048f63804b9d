"""The diffusers engine: open-weight image and video models on this machine's GPU (docs/engines.md).

``runtime.py`` runs pipelines (devices, resident models, seeds, step callbacks, failures),
``models.py`` says what each model family can do, ``engine.py`` is the engine, ``video.py`` its shots.
Nothing here is imported unless a process is configured to use the engine (torch is heavy).
"""
