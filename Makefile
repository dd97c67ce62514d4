# Each target sets up .venv itself. TORCH_SPEC picks the torch build: the default is the CPU build
# that lies on these machines; with a GPU, e.g. `make demo TORCH_SPEC="torch==2.13.0"` from an
# index that serves CUDA wheels (add PIP_INDEX_URL=...).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
# These machines have no internet: use the local mirror beside the checkout when there is one.
ifeq ($(origin LSTMCLI_MIRROR), undefined)
  ifneq ($(wildcard ../shared/datasets/SHA256SUMS),)
    export LSTMCLI_MIRROR := $(abspath ../shared/datasets)
  endif
endif

.PHONY: demo test bench-encode clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/lstmcli train --config imdb_small --out runs/demo
	$(BIN)/lstmcli eval --checkpoint runs/demo/best
	$(BIN)/lstmcli predict --checkpoint runs/demo/best --top-k 2 \
	  "A moving, beautifully acted film. I loved every minute of it." \
	  "Dull, predictable and far too long; a waste of two hours."

# The suite runs once on this CPU as it is; then the tests whose outcome depends on the CPU (marked
# `cpu`: kernels, precision, numerics) run again as an AVX2-only x86-64 CPU (most users' machines):
# ATen dispatches to its AVX2 kernels (and the scratch C++ kernels are built for AVX2), oneDNN stops at
# AVX2 and so refuses bfloat16 recurrent kernels as such a CPU does, and MKL is asked for its AVX2 code
# (honoured on Intel CPUs; on AMD ones MKL picks its own path either way). On a CPU without AVX-512
# the first run already was that CPU's run, so the second is left out.
AVX2_ONLY := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	@if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then \
	  echo "$(AVX2_ONLY) $(BIN)/python -m pytest -m 'cpu and not slow'"; \
	  $(AVX2_ONLY) $(BIN)/python -m pytest -m 'cpu and not slow'; \
	else echo "make test: this CPU has no AVX-512, so the run above was an AVX2-only run; no second pass"; fi

bench-encode: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_encode.py

clean:
	rm -rf $(VENV) runs .pytest_cache
