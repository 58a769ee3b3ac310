"""Peak memory of an unlearning step with a frozen reference model (NPO) vs without (GradAscent), on
stories260K with TOFU forget01 batches. Each method runs in its own process (peak RSS is per process);
the script also reports the parameter bytes each module holds, which is what the reference adds.

    python benchmarks/reference_memory.py [--data-dir ../shared/data] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def measure(method: str, data_dir: Path, steps: int) -> dict:
    import torch

    from unlearning.data.collate import PromptTemplate, encode_qa, pad_batch
    from unlearning.data.tofu import load_tofu
    from unlearning.methods.grad_ascent import GradAscent
    from unlearning.methods.npo import NPO
    from unlearning.module import UnlearningModule
    from unlearning.models import load_pretrained

    model, tokenizer = load_pretrained(data_dir / "models" / "stories260K", torch.float32)
    objective = NPO() if method == "npo" else GradAscent()
    module = UnlearningModule(model, objective, torch.optim.AdamW)
    module.log = lambda *args, **kwargs: None  # no Trainer: logging is the Trainer's job
    forget = load_tofu("forget01", str(data_dir / "tofu")).forget
    encoded = [encode_qa(tokenizer, PromptTemplate(), r["question"], r["answer"], 256) for r in forget]
    optimizer = module.configure_optimizers()
    for step in range(steps):
        batch = {"forget": pad_batch(encoded[8 * step: 8 * step + 8], tokenizer.pad_token_id)}
        module.training_step(batch, step).backward()
        optimizer.step()
        optimizer.zero_grad()
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "param_mb": param_bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--method", choices=["npo", "grad_ascent"])
    args = parser.parse_args()
    if args.method:
        print(json.dumps(measure(args.method, Path(args.data_dir), args.steps)))
        return
    results = {}
    for method in ("grad_ascent", "npo"):
        out = subprocess.run([sys.executable, __file__, "--method", method, "--data-dir", args.data_dir,
                              "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    for method, r in results.items():
        print(f"{method:12s} peak RSS {r['peak_rss_mb']:.0f} MB, module parameters {r['param_mb']:.2f} MB")
    print(f"NPO / GradAscent: peak RSS {results['npo']['peak_rss_mb'] / results['grad_ascent']['peak_rss_mb']:.3f}x, "
          f"parameters {results['npo']['param_mb'] / results['grad_ascent']['param_mb']:.2f}x")


if __name__ == "__main__":
    main()
