"""Import SAELens's synthetic-data code (``sae_lens.synthetic``) where sae-lens itself cannot be installed.

sae-lens 6.x pins transformer-lens < 4 (ours is 4.x) and pulls wandb, plotly and datasets; the GPU image has none of
them and fetches nothing. The synthetic model, its sampler and its evaluation need none of them either: they are
plain PyTorch + scipy. So, where ``import sae_lens`` fails, this module loads SAELens's own source files from a
folder (``AEN_SAELENS_SRC``: a copy of the installed ``sae_lens`` package) without running the package's
``__init__`` files (which import everything), and stands empty stub modules in for the missing third-party
packages that are imported but never called on this path (type hints, base classes of LLM-only code).

Nothing of SAELens is re-implemented here: every function used is SAELens's, from its files.
"""
from __future__ import annotations

import abc
import importlib
import importlib.machinery
import logging
import os
import re
import sys
import types
from pathlib import Path

import torch

# Imported (at module level) by sae_lens.evals / sae_lens.saes.sae, unused by the synthetic path.
_STUBBED = ("transformer_lens", "transformer_lens.HookedTransformer", "transformer_lens.hook_points",
            "transformer_lens.utils", "datasets", "wandb")


class _Anything(abc.ABCMeta):
    """Metaclass of the stub classes: subscriptable (annotations evaluate) and compatible with ABC bases."""

    def __getitem__(cls, item):
        return cls

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


def _stub_class(name: str) -> type:
    return _Anything(name, (torch.nn.Module,), {})  # stands in for transformer_lens's modules as a base class


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def _load_from_source(src: Path) -> None:
    for name in [m for m in sys.modules if m == "sae_lens" or m.startswith("sae_lens.")]:
        del sys.modules[name]  # a half-failed `import sae_lens` leaves broken entries
    for name in _STUBBED:
        top = name.split(".")[0]
        if isinstance(sys.modules.get(top), _StubModule) or not _importable(top):
            for level in range(1, name.count(".") + 2):
                part = ".".join(name.split(".")[:level])
                if part not in sys.modules:
                    module = _StubModule(part)
                    module.__path__ = []  # a package, so submodules can be registered under it
                    # a spec, so importlib.util.find_spec (other packages probing for it) answers, not raises
                    module.__spec__ = importlib.machinery.ModuleSpec(part, None, is_package=True)
                    sys.modules[part] = module
    package = types.ModuleType("sae_lens")
    package.__path__ = [str(src)]
    version = re.search(r'__version__\s*=\s*"([^"]+)"', (src / "__init__.py").read_text())
    package.__version__ = version.group(1) if version else "unknown"
    package.logger = logging.getLogger("sae_lens")
    sys.modules["sae_lens"] = package
    synthetic = types.ModuleType("sae_lens.synthetic")
    synthetic.__path__ = [str(src / "synthetic")]
    sys.modules["sae_lens.synthetic"] = synthetic
    package.synthetic = synthetic


def load() -> types.SimpleNamespace:
    """SAELens's synthetic model, its configs and its evaluation, from the installed package or from
    ``AEN_SAELENS_SRC``. ``AEN_SAELENS_FORCE_SRC=1`` takes the source path even where sae_lens imports (tests)."""
    src = os.environ.get("AEN_SAELENS_SRC")
    if not (src and os.environ.get("AEN_SAELENS_FORCE_SRC") == "1"):
        try:
            importlib.import_module("sae_lens.synthetic")
        except ImportError as err:
            if not src:
                raise ImportError(f"sae_lens is not importable ({err}); install it (`make saelens-venv`) or set "
                                  "AEN_SAELENS_SRC to a copy of its package folder") from None
            _load_from_source(Path(src))
    else:
        _load_from_source(Path(src))
    model = importlib.import_module("sae_lens.synthetic.synthetic_model")
    magnitudes = importlib.import_module("sae_lens.synthetic.firing_magnitudes")
    evals = importlib.import_module("sae_lens.synthetic.evals")
    return types.SimpleNamespace(
        version=sys.modules["sae_lens"].__version__, SyntheticModel=model.SyntheticModel,
        SyntheticModelConfig=model.SyntheticModelConfig, HierarchyConfig=model.HierarchyConfig,
        LowRankCorrelationConfig=model.LowRankCorrelationConfig,
        OrthogonalizationConfig=model.OrthogonalizationConfig,
        ZipfianFiringProbabilityConfig=model.ZipfianFiringProbabilityConfig,
        LinearMagnitudeConfig=magnitudes.LinearMagnitudeConfig,
        FoldedNormalMagnitudeConfig=magnitudes.FoldedNormalMagnitudeConfig,
        eval_sae_on_synthetic_data=evals.eval_sae_on_synthetic_data,
        mean_correlation_coefficient=evals.mean_correlation_coefficient)
