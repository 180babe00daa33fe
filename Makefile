# Two entry points, each bootstrapping .venv from nothing:
#   make demo   photo -> run folder under outputs/demo (cpu preset)
#   make test   the linter (make lint: ruff, config in ruff.toml), then the whole test suite, offline
# A CUDA user points TORCH_SPEC at their torch build, e.g.
#   make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
# or TORCH_SPEC= to keep a torch already in .venv.
PYTHON ?= python3
VENV := .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,segment
DEMO_IMAGE ?= examples/astronaut.jpg
DEMO_OUT ?= outputs/demo
DEMO_PRESET ?= cpu

.PHONY: demo lint test clean-venv

$(VENV)/.installed: setup.py Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(VENV)/bin/pip install --disable-pip-version-check -q $(TORCH_SPEC))
	$(VENV)/bin/pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/geneman run $(DEMO_IMAGE) -o $(DEMO_OUT) --preset $(DEMO_PRESET)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.installed lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
