# The two newcomer commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.tinyssd-installed

.PHONY: setup browser demo test test-avx2 lint bench bench-augment clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,onnx,serve,video]'
	$(PIP) install -q --no-deps d2l==1.0.3
	@$(MAKE) --no-print-directory browser
	touch $(STAMP)

# Chromium and its driver for the browser test of `tinyssd serve`'s page (tests/test_serve.py).
# Installed with apt-get when run as root; anywhere else a notice, and that test is skipped.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } || \
	  echo "notice: apt-get could not install chromium; the page's browser test will be skipped"; \
	else \
	  echo "notice: no chromium + chromedriver (apt-get install chromium chromium-driver);" \
	    "the page's browser test will be skipped"; \
	fi

demo: $(STAMP)
	$(VENV)/bin/tinyssd demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# the suite on AVX2 kernels (what AMD EPYC and older Intel CPUs run), on any x86 machine
test-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/ops.py --out bench/results/ops.json
	$(PY) bench/eval.py --out bench/results/eval.json
	$(PY) bench/predict.py --out bench/results/predict.json
	$(PY) bench/train.py --out bench/results/train.json
	$(PY) bench/time_to_ap.py --out bench/results/time_to_ap.json
	$(PY) bench/readme_table.py

# about 40 minutes: SSD augmentation vs none at equal epochs (docs/augmentation.md)
bench-augment: $(STAMP)
	cd bench && ../$(PY) augment.py --epochs 20 --synthetic-epochs 12 --out results/augment.json

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
