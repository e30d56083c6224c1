# Two commands on a fresh machine:  `make lab`  and  `make test`  (README, "Quick start").
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
EXTRAS      ?= torch,course,unsloth-support,lab,dev
# Optional extra index for torch, e.g. https://download.pytorch.org/whl/cpu on a Linux laptop without CUDA.
TORCH_INDEX ?=
# `make lab` listens on loopback only; in a container pass LAB_IP=0.0.0.0 (the token stays on). README, "Running the lab as root or in a container".
LAB_IP      ?= 127.0.0.1
LAB_PORT    ?= 8888
STAMP       := $(VENV)/.course-installed
NB_ENV      := COURSE_PROFILE=cpu COURSE_STRICT=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
               TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1

# The gpu profile rehearsed on this CPU: stand-in models under the real hub ids, a simulated T4, the device audit.
REHEARSE_ENV := COURSE_PROFILE=gpu COURSE_REHEARSAL=1 COURSE_STRICT=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
               TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1

.PHONY: setup lab test lint unit notebooks rehearse-gpu gpu-check images badges strip bench clean \
        drift drift-setup drift-test drift-report

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[$(EXTRAS)]"
	$(PIP) install --quiet --disable-pip-version-check --no-deps $$($(PY) -m course_utils.core.deps no-deps)
	$(PY) -m course_utils.core.models prepare
	@touch $(STAMP)

lab: setup
	$(PY) -m course_utils.tools.lab --ip=$(LAB_IP) --port=$(LAB_PORT) --notebook-dir=notebooks

# vermin: no code may need a newer Python than requires-python (3.10) promises
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/vermin --no-tips --violations -t=3.10- course_utils scripts tests data conftest.py

# Every >>> example in course_utils runs; one that would need a model, a GPU, the network or seconds of
# compute is plain ``Example::`` text instead.
unit: setup
	$(NB_ENV) $(PY) -m pytest tests -q --durations=10
	$(NB_ENV) $(PY) -m pytest --doctest-modules course_utils -q

notebooks: setup
	$(NB_ENV) $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=600 notebooks -p no:cacheprovider --durations=0 -q

rehearse-gpu: setup
	$(PY) -m course_utils.tools.standins build
	HF_HUB_CACHE=$$($(PY) -m course_utils.tools.standins cache) $(REHEARSE_ENV) $(PY) -m pytest --nbval-lax \
	  --nbval-current-env --nbval-cell-timeout=300 notebooks -p no:cacheprovider \
	  --durations=0 -q

# On a CUDA machine: every notebook in the gpu profile on the stand-ins, then the QLoRA benchmark, one report.
# WHEELS=DIR: bitsandbytes/trl/unsloth wheels for a machine without them (made with scripts/gpu_check.py --download).
gpu-check:
	$(PYTHON) scripts/gpu_check.py $(if $(WHEELS),--wheels $(WHEELS))

# A real browser opens `make lab`'s JupyterLab as a learner does (tests/browser/, about 2-3 min): Debian's
# headless chromium + chromium-driver driven by selenium, installed here when missing (root: apt-get; otherwise
# the command to run is printed). Screenshots and the server log land in outputs/screenshots/.
browser-test: setup
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "browser-test: installing Debian's chromium + chromium-driver (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	      fonts-noto-cjk fonts-noto-color-emoji || exit 1; \
	  else \
	    echo "browser-test needs Debian's chromium and chromium-driver, not found. Install them as root:" >&2; \
	    echo "  sudo apt-get install -y chromium chromium-driver fonts-noto-cjk fonts-noto-color-emoji" >&2; \
	    exit 1; \
	  fi; \
	fi
	COURSE_BROWSER_TEST=1 $(PY) -m pytest tests/browser -q -p no:cacheprovider -rfE --durations=5

test: lint unit notebooks rehearse-gpu browser-test

# Dependency drift (README, "Dependency drift"): the unit tests and every notebook (cpu profile) in up to three
# lanes, each in its own venv under DRIFT_DIR (default ~/.cache/course-kit/drift): pinned (what `make setup`
# installs), latest (newest torch/transformers/trl/peft/datasets/accelerate/bitsandbytes, no Unsloth), pre
# (`pip install --pre`, allowed to fail). Writes docs/drift.md. Slow (a whole course per lane): not in `make test`.
LANES       ?= pinned,latest,pre
DRIFT_ARGS  := $(if $(DRIFT_DIR),--dir $(DRIFT_DIR))

drift:
	$(PYTHON) scripts/drift.py run $(LANES) $(DRIFT_ARGS)

drift-setup:
	$(PYTHON) scripts/drift.py setup $(LANES) $(DRIFT_ARGS)

drift-test:
	$(PYTHON) scripts/drift.py test $(LANES) $(DRIFT_ARGS)

drift-report:
	$(PYTHON) scripts/drift.py report $(DRIFT_ARGS)

images: setup
	$(PY) -m course_utils.images

badges: setup
	$(PY) -m course_utils.tools.course sync

strip: setup
	$(PY) -m course_utils.tools.course strip

bench: setup
	$(PY) -m course_utils.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
