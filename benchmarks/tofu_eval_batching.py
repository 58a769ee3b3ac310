"""TOFU forget10 evaluation of stories260K: batched (padded batches, left-padded generation) vs one
example at a time, in one process so the ratio is not skewed by machine load drifting between runs.

    python benchmarks/tofu_eval_batching.py [--data-dir ../shared/data] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from unlearning.data.collate import PromptTemplate
from unlearning.data.tofu import load_tofu
from unlearning.evaluation.tofu import evaluate_tofu
from unlearning.models import load_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = Path(args.data_dir)
    model, tokenizer = load_pretrained(data / "models" / "stories260K", torch.float32)
    forget = {"forget": load_tofu("forget10", str(data / "tofu")).forget_perturbed}
    timings: dict[int, list[float]] = {args.batch_size: [], 1: []}
    results = {}
    for _ in range(args.repeats):
        for batch_size in timings:  # alternate, so both see the same machine conditions
            start = time.perf_counter()
            results[batch_size] = evaluate_tofu(model, tokenizer, PromptTemplate(), forget, batch_size=batch_size,
                                                max_length=512, max_new_tokens=args.max_new_tokens)
            timings[batch_size].append(time.perf_counter() - start)
    batched, single = statistics.median(timings[args.batch_size]), statistics.median(timings[1])
    print(f"TOFU forget10 ({len(forget['forget'])} questions, 7 answer variants each, {args.max_new_tokens} new tokens), "
          f"stories260K, {torch.get_num_threads()} threads, median of {args.repeats}:")
    print(f"  batch size {args.batch_size}: {batched:.1f} s   batch size 1: {single:.1f} s   ratio {single / batched:.1f}x")
    same = {k: round(v, 4) for k, v in results[1].aggregates.items()} == \
           {k: round(v, 4) for k, v in results[args.batch_size].aggregates.items()}
    print(f"  same aggregates (4 decimals): {same}")


if __name__ == "__main__":
    main()
