"""Floor 1, the ground: what every lesson stands on and none of them teaches.

The profile and device (``runtime``, with the simulated GPU of the rehearsal in ``rehearsal``), the model
registry and loaders (``models``), the bundled data (``data``), the training loop (``train``, ``trl_compat``),
measurements (``efficiency``, ``peak_memory``, ``peaks``, ``metrics``), output (``plots``, ``quiet``) and the
pinned versions (``deps``). Nothing here imports a lesson, the capstone or the tools (tests/test_imports.py).
"""
