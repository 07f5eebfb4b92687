# Two entry points: `make book` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test book clean

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

test: $(STAMP)
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest --nbval-lax notebooks -q -p no:cacheprovider

book: $(STAMP)
	rm -rf _build/html
	$(BIN)/jupyter-book build . -W --keep-going -n

clean:
	rm -rf _build .venv
