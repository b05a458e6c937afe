# mvit_det: `make demo` runs the main job, `make test` the test suite. Both set up everything.
# MVIT_DET_PYTHON=/path/to/python uses an existing environment (e.g. with detectron2 built from
# source) instead of creating .venv.
PY := $(if $(MVIT_DET_PYTHON),$(MVIT_DET_PYTHON),.venv/bin/python)

.PHONY: setup demo test benchmark faults

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py $(ARGS)

# The numerics tests run a second time on the CPU's baseline kernels (no AVX2/AVX-512), so that no
# tolerance depends on the vector units of the machine. The second run happens even when the first
# fails; the target fails if either does.
test: setup
	$(PY) -m pytest -q tests $(ARGS); first=$$?; \
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m numerics tests $(ARGS); second=$$?; \
	test $$first -eq 0 && test $$second -eq 0

benchmark: setup
	$(PY) tools/benchmark.py $(ARGS)

# The standing fault check (docs/testing.md): deliberate bugs, one at a time, must each fail tests.
faults: setup
	$(PY) tools/fault_check.py $(ARGS)
