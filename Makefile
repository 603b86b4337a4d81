# make demo: set up .venv and run the main job; make test: set up .venv (+dev) and run ruff + pytest;
# make stress: the long loops (tests marked stress) at full length.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# constraints.txt pins torch to the CPU wheel in the machine's wheel store (no multi-GB CUDA download).
# uv installs (unpacks and compiles every module) in a third of pip's time; where it cannot (no wheel
# store, no uv), pip does.  Modules are compiled at install: where PYTHONDONTWRITEBYTECODE is set (CI),
# nothing is compiled later, and each interpreter would compile torch again as it imports it.  Files
# are copied, not linked to uv's cache: mapped from linked files, torch's libraries counted 60 MB more
# resident memory per process here (which the memory-budget tests see).
WHEELS ?= /opt/wheels
UV_INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt --compile-bytecode --link-mode=copy \
	$(if $(wildcard $(WHEELS)),--find-links $(WHEELS))
PIP_INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
INSTALL = $(UV_INSTALL) $(1) || $(PIP_INSTALL) $(1)

.PHONY: demo test stress lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	-$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

# haloconv's own modules (an editable install: src/) compiled once here, as the installer
# compiles the dependencies: where PYTHONDONTWRITEBYTECODE is set (CI) every interpreter would
# compile them again as it imports them (each worker, each command)
COMPILE_SRC = $(BIN)/python -m compileall -q src

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(call INSTALL,-e .)
	$(COMPILE_SRC)
	touch $@

# one resolve for the package and its dev extra (a fresh `make test` installs once)
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(call INSTALL,-e '.[dev]')
	$(COMPILE_SRC)
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/haloconv run --sample hopper --kernel sobel-x --workers 4 --partition grid --verify -o out/hopper-sobel-x --overwrite

# the site (docs/, mkdocs.yml): the internals and the API reference from the docstrings, strict
# (a warning fails it); tests/test_docs.py builds it in `make test` too
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

# two pytest-xdist workers, each test group whole on one (tests/conftest.py: xdist_scope):
# much of the suite waits on processes starting, so two keep the cores busy
TEST_WORKERS ?= 2
test: lint $(VENV)/.peer-tests
	$(COMPILE_SRC)
	HALOCONV_PEER_TESTS=required $(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# dask-image ships its own tests in its sdist, not in its wheel: tests/test_dask_image_suite.py
# runs its filter tests against haloconv.ndimage (scipy's come in scipy's wheel)
PEER_TESTS := $(VENV)/peer-tests
$(VENV)/.peer-tests: $(VENV)/.installed-dev
	rm -rf $(PEER_TESTS) && mkdir -p $(PEER_TESTS)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d $(PEER_TESTS) \
		"dask-image==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("dask-image"))')"
	tar xzf $(PEER_TESTS)/dask_image-*.tar.gz -C $(PEER_TESTS) --wildcards '*/tests/test_dask_image/test_ndfilters/*'
	touch $@

# the long loops whole: ten clean exits of a training script, a thousand calls on one cluster, a soak,
# ten clusters with a worker killed as soon as each is built
stress: $(VENV)/.installed-dev
	HALOCONV_STRESS=1 $(BIN)/python -m pytest -q -m stress

clean:
	rm -rf $(VENV) out site .pytest_cache .hypothesis
