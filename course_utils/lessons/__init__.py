"""Floor 2: each lesson's final definitions, one module per notebook topic, built on ``course_utils.core``.

``preflight`` (00: what this machine can do, and ``print_env``, every notebook's first cell), ``fine_tuning`` (01), ``peft_methods`` (02), ``lora_math`` (03), ``quantization`` (04), ``pruning`` (05),
``distillation`` (06), ``qlora`` (07), ``instruction_tuning`` (08), ``scaling`` (10), and ``memory``, the
training-memory arithmetic that notebooks 01, 07 and 10 share. A lesson imports the core and other lessons,
never the capstone, the benchmarks or the tools (tests/test_imports.py).
"""
