# Two entry points: `make book` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test book clean chromium benchmarks saelens-venv mathjax student wheel test-browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch==2.13.0 first: a CPU build of exactly that version is on disk here, and any looser
# spec would pull gigabytes of CUDA wheels. pyproject.toml keeps torch loose for users.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[llm,offline,test,book]"
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium renders built pages in tests/test_book_render.py. apt-get needs root and Debian's
# archive; without Chromium the browser tests fail, unless AEN_MINI_NO_BROWSER=1 says to skip them.
chromium:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
		|| [ "$(AEN_MINI_NO_BROWSER)" = 1 ] \
		|| (echo "could not install chromium (needs root): install it, or set AEN_MINI_NO_BROWSER=1 to skip the browser tests" && false)

# MathJax 3 from npm, served from the built book so that formulas render offline (_config.yml points
# Sphinx at _static/mathjax/tex-chtml.js). Only the browser bundle (es5/) is kept.
MATHJAX_VERSION := 3.2.2
MATHJAX := _mathjax/mathjax/tex-chtml.js
$(MATHJAX):
	rm -rf _mathjax && mkdir -p _mathjax/npm
	cd _mathjax/npm && npm pack -q mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz
	mv _mathjax/npm/package/es5 _mathjax/mathjax && rm -rf _mathjax/npm

mathjax: $(MATHJAX)

# Student editions (student/*.ipynb, committed): every chapter with its solutions replaced by stubs; also
# rewrites each chapter's Colab badge and install cell from _config.yml's repository URL.
student: $(STAMP)
	$(BIN)/python -m aen_mini.student

# A wheel to hand to students (upload it to Colab) until the package is published.
wheel: $(STAMP)
	$(BIN)/pip wheel -q --no-deps -w dist . && rm -rf build

# The browser stage of `make test`: builds a few light pages (and checks _build/html if `make book` made it),
# then renders them in headless Chromium.
test-browser: $(STAMP) chromium $(MATHJAX)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/test_book_render.py -q -p no:cacheprovider

# sae-lens pins transformer-lens<4 (ours is 4.x), so it gets its own venv, used only by tests/test_saelens.py
# through a subprocess; torch==2.13.0 first for the reason above. Where it cannot be installed, that test skips.
SAELENS_VENV := .venv-saelens
SAELENS_STAMP := $(SAELENS_VENV)/.installed
$(SAELENS_STAMP):
	rm -rf $(SAELENS_VENV)
	$(PY) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/pip install -q torch==2.13.0
	$(SAELENS_VENV)/bin/pip install -q "sae-lens>=6,<7"
	touch $(SAELENS_STAMP)

saelens-venv:
	@$(MAKE) --no-print-directory $(SAELENS_STAMP) \
		|| echo "could not install sae-lens: tests/test_saelens.py will skip its SAELens round trip"

# One thread per process: the test problems are small, and on 2 shared cores extra threads only contend.
test: $(STAMP) chromium saelens-venv $(MATHJAX)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest --nbval-lax notebooks -q -p no:cacheprovider

# --all: Sphinx re-reads (so myst-nb re-executes) every page, also those whose source did not change but
# whose results depend on the package. One thread per kernel: CI-size models are tiny, and on shared
# cores extra threads only contend.
book: $(STAMP) $(MATHJAX)
	rm -rf _build/html
	OMP_NUM_THREADS=1 $(BIN)/jupyter-book build . --all -W --keep-going -n

# Build-time benchmark of the book: writes benchmarks/book.json and benchmarks/book.md.
benchmarks: $(STAMP) $(MATHJAX)
	$(BIN)/python benchmarks/book.py

clean:
	rm -rf _build .venv $(SAELENS_VENV) _mathjax dist build
