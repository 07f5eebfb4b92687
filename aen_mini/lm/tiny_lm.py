"""The tiny-neox language model: a byte-level BPE tokenizer and a 4M-parameter GPT-NeoX, both trained here
on the offline corpus, so that the book has a *trained* causal model without the Hugging Face hub.

    train_tiny_lm("aen_mini/lm/assets/tiny-neox", steps=800, device="cuda")    # ~15 s on an H100
    train_tiny_lm("/tmp/tiny", steps=20, device="cpu")                        # smoke size

The folder then holds ``model.safetensors`` (float16, ~8 MB), ``config.json``, the tokenizer files and
``training.json`` (steps, losses, corpus); ``aen_mini.lm.models.load_model("tiny-neox")`` reads it.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from aen_mini.data.text import BUILTIN_CORPUS, ContextFormat, load_corpus, tokenize_corpus
from aen_mini.validate import check_positive_int

VOCAB_SIZE = 4096
EOS, PAD = "<|endoftext|>", "<|padding|>"  # ids 0 and 1, as in Pythia's tokenizer
TINY_NEOX_CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "rotary_pct": 0.25,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,  # halves the parameters: the package ships these weights
    "use_parallel_residual": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 1,
}


def train_tokenizer(out_dir: str | os.PathLike, corpus: Any = BUILTIN_CORPUS, vocab_size: int = VOCAB_SIZE) -> Any:
    """Train a byte-level BPE tokenizer (GPT-NeoX style, ``<|endoftext|>`` = 0) and save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(load_corpus(corpus), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10 %


@torch.no_grad()
def _mean_loss(model: Any, tokens: torch.Tensor, attention: torch.Tensor, batch_size: int) -> float:
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        t, a = tokens[i:i + batch_size], attention[i:i + batch_size]
        labels = t.masked_fill(~a, -100)  # padding is not a target
        n = int(a[:, 1:].sum())
        total += float(model(input_ids=t, attention_mask=a.long(), labels=labels).loss) * n
        count += n
    return total / count


def train_tiny_lm(out_dir: str | os.PathLike, steps: int = 800, device: str | torch.device = "cpu", *,
                  corpus: Any = BUILTIN_CORPUS, ctx_len: int = 128, batch_size: int = 32, lr: float = 1e-3,
                  val_fraction: float = 0.05, dropout: float = 0.1, eval_every: int = 0, seed: int = 0) -> dict[str, Any]:
    """Train tiny-neox next-token prediction on ``corpus`` and save it (float16) with its tokenizer to ``out_dir``.

    The stdlib corpus is small (~0.4M tokens): a step sees 32 x 128 tokens, so 1000 steps are ~10 epochs and
    the held-out loss starts rising well before that (on an H100, 2000 steps: best held-out loss 4.89 at step
    400 without dropout, 4.82 at step 700 with dropout 0.1, hence the defaults). ``eval_every`` (default: 10 evaluations per run) records
    the held-out curve in the returned record, which is also written to ``training.json``.
    """
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    check_positive_int("steps", steps)
    eval_every = eval_every or max(1, steps // 10)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out)) if (out / "tokenizer.json").exists() else train_tokenizer(out, corpus)
    fmt = ContextFormat(tokenizer.bos_token_id, None, tokenizer.eos_token_id, tokenizer.pad_token_id)
    data = tokenize_corpus(load_corpus(corpus), tokenizer, fmt, ctx_len)
    n_val = max(1, int(len(data) * val_fraction))
    if len(data) - n_val < 1:
        raise ValueError(f"the corpus gives only {len(data)} contexts of {ctx_len} tokens: too few to train on")
    # The held-out contexts are the last ones (whole documents at the end of the corpus order).
    train, val = data[:len(data) - n_val].to(device), data[len(data) - n_val:].to(device)

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_dropout=dropout, attention_dropout=dropout, **TINY_NEOX_CONFIG)
    model = GPTNeoXForCausalLM(config).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 20)
    losses: list[float] = []
    val_curve: list[tuple[int, float]] = []
    start = time.time()
    for step in tqdm(range(steps), desc="tiny-neox"):
        rows = torch.randint(len(train), (batch_size,), generator=generator).to(device)
        t, a = train.tokens[rows], train.attention_mask[rows]
        for group in optimiser.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        loss = model(input_ids=t, attention_mask=a.long(), labels=t.masked_fill(~a, -100)).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            val_curve.append((step + 1, _mean_loss(model, val.tokens, val.attention_mask, batch_size)))
            model.train()
    model.eval()
    record = {
        "steps": steps, "batch_size": batch_size, "ctx_len": ctx_len, "lr": lr, "seed": seed,
        "corpus": corpus if isinstance(corpus, str) else "custom", "train_contexts": len(train), "val_contexts": len(val),
        "n_params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "dropout": dropout, "val_loss": val_curve[-1][1], "val_curve": val_curve,
        "seconds": round(time.time() - start, 1), "device": str(device),
        "python": platform.python_version(),  # the stdlib corpus differs between Python versions
    }
    model.half().save_pretrained(str(out), safe_serialization=True)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
