# `make demo` and `make test` each create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# opencv-contrib-python-headless replaced opencv-python-headless: both install cv2, never keep both
	$(PY) -m pip uninstall --quiet --yes opencv-python-headless
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2  # two worker processes (pytest-xdist): most tests use one core

clean:
	rm -rf $(VENV) work_dirs demo_data
