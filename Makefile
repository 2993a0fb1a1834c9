# A fresh clone needs only `make book` (set up, then build the book) or `make test` (set up, then test).
# Both create the virtual environment in $(VENV) when it is missing or older than pyproject.toml,
# and install the system programs the book needs (npm; chromium for the tests) when run as root.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env test book pdf bench clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,book]"
	touch $@

test: env
	book/system_tools.sh --browser
	$(BIN)/python -m pytest

# The notebooks run under DCLS_PROFILE (smoke / cpu / gpu; default: gpu with CUDA, else cpu).
book: env
	book/system_tools.sh
	$(BIN)/python book/build_book.py

# The built book printed to one PDF (book/_build/pdf/dcls-book.pdf) by headless Chromium, offline.
pdf: book
	book/system_tools.sh --browser
	$(BIN)/python book/build_pdf.py

bench: env
	$(BIN)/python benchmarks/layer_memory.py
	$(BIN)/python benchmarks/layer_speed.py
	$(BIN)/python benchmarks/evaluation_speed.py
	$(BIN)/python benchmarks/model_speed.py --models convnext_tiny
	$(BIN)/python benchmarks/sanity_speed.py

clean:
	rm -rf $(VENV) book/_build book/_vendor book/node_modules .pytest_cache
