# The two commands of the README. Both set up what they need first (idempotent).
VENV ?= .venv
SAMPLE := src/napari_kaizen/data/samples/nuclei.tif
ENGINE ?= kaizen

.PHONY: segment test setup clean

## Install into .venv (CPU torch first) and segment the bundled sample -> out/sample_labels.tif
segment:
	@bash scripts/bootstrap.sh
	@mkdir -p out
	@$(VENV)/bin/kaizen segment $(SAMPLE) --engine $(ENGINE) --output out/sample_labels.tif --overwrite --quiet

## Install Debian packages for headless Qt, the test extras, and run the whole test suite
test:
	@bash scripts/bootstrap.sh --test
	$(VENV)/bin/python -m pytest

setup:
	@bash scripts/bootstrap.sh --test

clean:
	rm -rf out .pytest_cache
