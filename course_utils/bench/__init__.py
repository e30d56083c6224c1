"""Benchmarks, one module each: printed ratios, never asserted.

``quant`` (NF4 vs bitsandbytes), ``qlora`` (plain QLoRA vs Unsloth), ``chatbot`` (the capstone's writes, round
and latency), ``efficiency`` (steps and generation vs the machine's limits).
``python -m course_utils.bench NAME`` runs one (see ``__main__.py``)."""
