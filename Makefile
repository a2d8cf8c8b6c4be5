# privkit: `make test` runs the tests, `make reproduce` rebuilds every figure.
# Both create the virtual environment first when it is missing.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= full
# Releases that install on our CPU machines; GPU machines bring their own torch.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.privkit-installed

.PHONY: venv test reproduce bench lab clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name privkit --display-name "Python (privkit)"
	touch $@

test: $(STAMP)
	$(PY) -m pytest

# PROFILE=quick runs the CPU profile of every experiment; PRIVKIT_DATA sets the data folder;
# RAY=auto (or a Ray address) trains the notebooks' sweeps as tasks on that Ray cluster.
reproduce: $(STAMP)
	$(VENV)/bin/privkit reproduce --profile $(PROFILE) $(if $(RAY),--ray $(RAY))

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf results figures .pytest_cache

# Epoch times of every engine on this machine (a GPU when present), with the full sweep timed.
bench: $(STAMP)
	$(VENV)/bin/privkit bench --sweep experiments/privacy_utility.yaml --json results/bench.json
