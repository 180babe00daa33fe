# Entry points, each bootstrapping .venv from nothing:
#   make demo   photo -> textured avatar in outputs/demo/final (preset demo: the bundled tiny priors, CPU,
#               no downloads); DEMO_IMAGE=examples/astronaut.jpg for the second example
#   make test   the linter (make lint: ruff, config in ruff.toml), then the whole test suite, offline, on two
#               pytest workers (the ten slowest tests printed at the end)
#   make priors the bundled tiny priors (priors/bundled) made again from their seed (training/bundle.py,
#               about 45 minutes on a 2-core CPU; its data and full-precision outputs in outputs/priors-work)
# A CUDA user points TORCH_SPEC at their torch build, e.g.
#   make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
# or TORCH_SPEC= to keep a torch already in .venv.
PYTHON ?= python3
VENV := .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,segment
DEMO_IMAGE ?= examples/demo_person.png
DEMO_OUT ?= outputs/demo
DEMO_PRESET ?= demo
PRIORS_WORK ?= outputs/priors-work
# Two pytest workers (the 2 cores), each test file on one worker (module fixtures, the Slurm cluster);
# PYTEST_ARGS= runs the suite in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: demo lint test priors clean-venv

$(VENV)/.installed: setup.py Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(VENV)/bin/pip install --disable-pip-version-check -q $(TORCH_SPEC))
	$(VENV)/bin/pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/geneman run $(DEMO_IMAGE) -o $(DEMO_OUT) --preset $(DEMO_PRESET)

priors: $(VENV)/.installed
	$(VENV)/bin/python -m training.bundle --work $(PRIORS_WORK)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
