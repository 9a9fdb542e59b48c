# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/synthetic
RUN ?= runs/demo
PRED ?= outputs/demo
# train.amp and predict.amp of the demo: auto | off | bf16 (core/precision.py); `make demo AMP=off` forces float32
AMP ?= auto

.PHONY: demo baselines test test-slow test-all test-cuda venv bench serve clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# the CUDA-only paths (fp16 GradScaler, bf16 on the GPU, channels_last, the scripts on cuda, NCCL with two GPUs)
test-cuda: $(STAMP)
	$(PY) -m pytest -q -rs -m cuda

# synthetic data -> sanity-check the scorer -> train fold 0 and tune post-processing
# on its validation images -> predict the held-out test strips -> score -> pictures -> the leaderboard
# (masks and pass/fail beside the all-empty floor; `make baselines` adds the classical and autoencoder runs).
# Every step is resumable: rerunning skips what is already done.
demo: $(STAMP)
	$(PY) scripts/make_synthetic.py --out $(DATA) --train 800 --test 100 --seed 0
	@echo "== the scorer on the truth itself (must be 1.0) and the all-empty baseline =="
	$(PY) scripts/evaluate.py --pred $(DATA)/test_truth.csv --truth $(DATA)/test_truth.csv --images $(DATA)/test_images
	$(PY) scripts/cv.py --config configs/demo_cpu.yaml --out $(RUN) --folds 0 --data.root=$(DATA) \
		--train.amp=$(AMP) --predict.amp=$(AMP)
	$(PY) predict.py --checkpoint $(RUN)/fold0/best.pt --images $(DATA)/test_images --out $(PRED) --overlays \
		--postprocess.file=$(RUN)/postprocess.json --predict.amp=$(AMP) --resume
	@echo "== held-out score of the trained model, post-processing tuned on fold 0 =="
	$(PY) scripts/evaluate.py --pred $(PRED)/submission.csv --truth $(DATA)/test_truth.csv --images $(DATA)/test_images
	@echo "pictures: $(PRED)/overlays/*.jpg (test strips), $(RUN)/fold0/overlays/*.jpg (validation)"
	$(PY) scripts/leaderboard.py --data.root=$(DATA) --runs $(RUN) --out $(PRED)/leaderboard

# the transparent baselines beside the demo's model: the classical pipeline (Optuna) and the
# autoencoder (defect-free strips only), then one leaderboard of the three (masks and pass/fail)
baselines: $(STAMP)
	@test -f $(RUN)/fold0/best.pt || { echo "no $(RUN)/fold0/best.pt: run make demo first"; exit 1; }
	$(PY) train.py --config configs/classical.yaml --data.root=$(DATA) --output_dir=$(RUN)_classical --resume
	$(PY) train.py --config configs/autoencoder_demo_cpu.yaml --data.root=$(DATA) --output_dir=$(RUN)_autoencoder \
		--train.amp=$(AMP) --predict.amp=$(AMP) --resume
	$(PY) scripts/leaderboard.py --data.root=$(DATA) --runs $(RUN) $(RUN)_classical $(RUN)_autoencoder \
		--out $(PRED)/leaderboard

# the demo's model as a service on the loopback, with a fresh API key (SERVE_KEY=... to choose one)
serve: $(STAMP)
	@test -f $(RUN)/fold0/best.pt || { echo "no $(RUN)/fold0/best.pt: run make demo first"; exit 1; }
	@key=$${SERVE_KEY:-$$($(PY) -c "import secrets; print(secrets.token_urlsafe(18))")}; \
	echo "API key: $$key"; \
	echo "try: curl -H 'X-API-Key: $$key' -H 'Content-Type: image/jpeg' --data-binary @$$(ls $(DATA)/test_images/*.jpg | head -1) http://127.0.0.1:8000/v1/inspect"; \
	SEVERSTAL_API_KEYS=$$key exec $(PY) serve.py --checkpoint $(RUN)/fold0/best.pt --postprocess.file=$(RUN)/postprocess.json

bench: $(STAMP)
	$(PY) scripts/bench_rle.py
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_predict.py
	$(PY) scripts/bench_maskrcnn.py
	$(PY) scripts/bench_serve.py

clean:
	rm -rf $(RUN) $(RUN)_classical $(RUN)_autoencoder $(PRED) $(DATA)
