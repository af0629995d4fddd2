# The README's two commands: `make demo` (train + evaluate XML-CNN with 2 processes on the embedded
# synthetic default) and `make test` (the test suite; .ci/run calls it). Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `python -m deepspeed.launcher.runner` is the `deepspeed` command, wherever pip put its script.
# DeepSpeed JIT-builds a small shared-memory op on first use: keep the build between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export PYTHONUNBUFFERED := 1
# Two ranks (gloo CPU processes without a GPU), one on a one-GPU machine: two ranks cannot share a GPU.
NPROC ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "$$n" = 1 ] && echo 1 || echo 2)
CONFIG ?= xml_cnn_synthetic
ARGS ?=
# PyTorch's CPU wheel index for a CPU machine whose pip would otherwise take the CUDA build from PyPI
# (make install TORCH_INDEX=https://download.pytorch.org/whl/cpu); empty: pip's own configuration.
TORCH_INDEX ?=

.PHONY: install demo test bench reuters acceptance clean

install: $(VENV)/.installed

# --system-site-packages keeps a CUDA machine's own torch; a machine without torch and without
# nvidia-smi gets the CPU wheel torch==2.13.0, never the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); $(PYTHON) -m venv --system-site-packages $(VENV); }
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet torch; \
	else \
		$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(PY) -m deepspeed.launcher.runner --num_gpus $(NPROC) launch/train.py --config $(CONFIG) $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

bench: install
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-only -q $(ARGS)

reuters: install
	$(PY) -m deepspeed.launcher.runner --num_gpus 2 launch/train.py --config xml_cnn_reuters $(ARGS)

# The Reuters-21578 targets (issues 2 and 4): full trainings, 15-30 min each on 2 cores; results
# land in runs/acceptance/*.json.
acceptance: install
	$(PY) -m pytest -q --acceptance tests/acceptance $(ARGS)

clean:
	rm -rf $(VENV) .cache runs
