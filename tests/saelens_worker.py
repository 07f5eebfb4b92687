"""Runs inside the separate sae-lens venv (.venv-saelens; sae-lens pins transformer-lens<4, ours is 4.x).

    python saelens_worker.py JOBS.json

JOBS.json lists {"make": ARCH or null, "folder", "inputs", "out"}: with "make", a random SAELens SAE of that
architecture is first saved to "folder" with SAELens' own save_model. Each job then loads "folder" with
SAE.load_from_disk and writes to "out" (safetensors) encode(x), decode(encode(x)) and forward(x) on
inputs["x"], as SAELens computes them. One process for all jobs: importing sae_lens takes seconds.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from sae_lens import (SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                      TopKSAEConfig)
from sae_lens.saes.sae import SAEMetadata

D_IN, D_SAE = 12, 40


def make(architecture: str, folder: str) -> None:
    torch.manual_seed(0)
    metadata = SAEMetadata(model_name="toy-model", hook_name="blocks.0.hook_resid_post")
    if architecture == "standard":  # apply_b_dec_to_input=False exercises the b_enc fold on import
        sae = StandardSAE(StandardSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=False, metadata=metadata))
    elif architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(D_IN, D_SAE, k=5, metadata=metadata))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(D_IN, D_SAE, metadata=metadata))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        if architecture == "jumprelu":
            sae.threshold.fill_(0.2)  # one shared threshold: what a BatchTopK SAE becomes
    sae.save_model(folder)


def outputs(sae: SAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        h = sae.encode(x)
        return {"encode": h, "decode": sae.decode(h), "forward": sae(x)}


def main(jobs_path: str) -> None:
    for job in json.loads(open(jobs_path).read()):
        if job["make"]:
            make(job["make"], job["folder"])
        sae = SAE.load_from_disk(job["folder"])
        result = outputs(sae, load_file(job["inputs"])["x"])
        result["architecture"] = torch.tensor([ord(c) for c in sae.cfg.architecture()])
        save_file({k: v.contiguous() for k, v in result.items()}, job["out"])


if __name__ == "__main__":
    main(sys.argv[1])
