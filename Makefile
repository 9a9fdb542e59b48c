# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/synthetic
RUN ?= runs/demo
PRED ?= outputs/demo

.PHONY: demo test test-slow test-all venv bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

demo: $(STAMP)
	$(PY) scripts/make_synthetic.py --out $(DATA) --train 400 --test 100 --seed 0
	$(PY) scripts/demo_scores.py --data $(DATA) --out $(PRED)

bench: $(STAMP)
	$(PY) scripts/bench_rle.py

clean:
	rm -rf $(RUN) $(PRED) $(DATA)
