# The README's two commands:
#   make protect IN=photo.jpg [OUT=photo.protected.jpg] [PRESET=balanced]
#   make test
# Both create .venv on first use and install the project with the pinned constraints.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= balanced
export DEEPGUARD_WEIGHTS_DIR ?= $(abspath ../shared/weights)

.PHONY: install system-test-deps protect serve test lint format bench clean

# One OpenCV wheel only: opencv-python and opencv-python-headless both install cv2/, so the
# headless one that older checkouts installed is removed (with the other, reinstalled next).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if $(BIN)/python -m pip show --quiet opencv-python-headless 2>/dev/null; then \
	  $(BIN)/python -m pip uninstall --quiet -y opencv-python-headless opencv-python; fi
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

protect: $(STAMP)
	@test -n "$(IN)" || { echo "usage: make protect IN=photo.jpg [OUT=...] [PRESET=balanced]"; exit 2; }
	$(BIN)/deepguard protect "$(IN)" $(if $(OUT),-o "$(OUT)") --preset $(PRESET)

serve: $(STAMP)
	$(BIN)/deepguard serve

lint: $(STAMP)
	$(BIN)/ruff check deepguard tests bench
	$(BIN)/ruff format --check deepguard tests bench

# system packages the tests use for real: a Prometheus server for the metrics test, Chromium
# for the dashboard's end-to-end tests (Playwright drives it; it downloads no browser of its
# own) and a Korean font so the Korean screenshots are legible. Debian's packages.
SYSTEM_TEST_PACKAGES := prometheus chromium fonts-nanum
system-test-deps:
	@missing=""; for p in $(SYSTEM_TEST_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && \
	    apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; fi

test: $(STAMP) lint system-test-deps
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format deepguard tests bench
	$(BIN)/ruff check --fix deepguard tests bench

bench: $(STAMP)
	$(BIN)/python bench/detectors.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
