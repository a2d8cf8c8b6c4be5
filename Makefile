# privkit: `make test` runs the tests, `make reproduce` rebuilds every figure.
# Both create the virtual environment first when it is missing.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= full
# Releases that install on our CPU machines; GPU machines bring their own torch.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.privkit-installed
# JupyterLab's settings for every lab started from the venv: no news pop-up, no update check.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json

.PHONY: venv test reproduce bench lab site clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name privkit --display-name "Python (privkit)"
	touch $@

$(LAB_SETTINGS): lab/settings/overrides.json $(STAMP)
	mkdir -p $(dir $@)
	cp $< $@

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@start=$$(date +%s); $(PY) -m pytest; rc=$$?; \
	echo "make test: pytest took $$(( $$(date +%s) - start )) s (exit $$rc)"; exit $$rc

# PROFILE=quick runs the CPU profile of every experiment; PRIVKIT_DATA sets the data folder;
# RAY=auto (or a Ray address) trains the notebooks' sweeps as tasks on that Ray cluster.
reproduce: $(STAMP)
	$(VENV)/bin/privkit reproduce --profile $(PROFILE) $(if $(RAY),--ray $(RAY))

lab: $(STAMP) $(LAB_SETTINGS)
	$(VENV)/bin/jupyter lab notebooks/

# The course site: every tutorial and its solutions executed (stale ones only), then built
# offline into results/course/site/html/index.html. PRIVKIT_DATA sets the data folder.
site: $(STAMP)
	$(VENV)/bin/privkit site --out results/course

clean:
	rm -rf results figures .pytest_cache

# Epoch times of every engine on this machine (a GPU when present), with the full sweep timed.
bench: $(STAMP)
	$(VENV)/bin/privkit bench --sweep experiments/privacy_utility.yaml --json results/bench.json
