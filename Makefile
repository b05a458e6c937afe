# mvit_det: `make demo` runs the main job, `make test` the test suite. Both set up everything.
# MVIT_DET_PYTHON=/path/to/python uses an existing environment (e.g. with detectron2 built from
# source) instead of creating .venv.
PY := $(if $(MVIT_DET_PYTHON),$(MVIT_DET_PYTHON),.venv/bin/python)

.PHONY: setup demo test benchmark

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py $(ARGS)

# The numerics tests run a second time on the CPU's baseline kernels (no AVX2/AVX-512), so that no
# tolerance depends on the vector units of the machine.
test: setup
	$(PY) -m pytest -q tests $(ARGS)
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m numerics tests $(ARGS)

benchmark: setup
	$(PY) tools/benchmark.py $(ARGS)
