"""Capstone (notebook 09): a Korean tax-and-accounting chatbot that keeps learning from feedback.

Import each piece from its module (this package re-exports nothing):

- ``store``: feedback validation and the SQLite store (``FeedbackStore``, ``DOMAINS``, ``sigkill_demo``);
- ``registry``: versioned, checksummed safetensors adapter folders (``AdapterRegistry``);
- ``backend``: ``LoraBackend``, per-domain peft LoRA adapters on one base model plus a training clone; a
  hand-written bottleneck adapter (``course_utils.lessons.peft_methods``) could stand in behind its four methods;
- ``config``: ``ChatbotConfig`` (sizes, LoRA shape, eval-gate tolerance), imported by ``backend`` and ``bot``;
- ``bot``: the eval gate ``should_accept``, ``guess_domain`` and ``Chatbot`` (rounds, monitor);
- ``ui``: the ipywidgets chat ``ChatUI`` and the monitoring ``plot_dashboard``;
- ``hybrid``: the seed's LoRA + bottleneck adapters trained together (a building block, tested).

Its benchmarks live in ``course_utils.bench.chatbot``.
"""
