"""Data: answer-only labels, retain pairing (different on every rank), the TOFU loader on real files."""

from __future__ import annotations

import numpy as np

from unlearning.data.collate import PromptTemplate, encode_prompt, encode_qa, pad_batch
from unlearning.data.datamodule import PairedDataset
from unlearning.data.tofu import load_tofu
from unlearning.ops import IGNORE_INDEX


def test_answer_only_labels(tokenizer):
    template = PromptTemplate()
    encoded = encode_qa(tokenizer, template, "Who wrote the book?", "The author.", max_length=64)
    prompt = encode_prompt(tokenizer, template, "Who wrote the book?")
    assert encoded["input_ids"][: len(prompt)] == prompt and prompt[0] == tokenizer.bos_token_id
    assert encoded["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = encoded["labels"][len(prompt):]
    assert IGNORE_INDEX not in answer and answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == "The author."


def test_padding_masks_labels_and_attention(tokenizer):
    short = encode_qa(tokenizer, PromptTemplate(), "Q?", "A.", max_length=64)
    long = encode_qa(tokenizer, PromptTemplate(), "A longer question here?", "A longer answer.", max_length=64)
    right = pad_batch([short, long], tokenizer.pad_token_id)
    n = len(short["input_ids"])
    assert right["attention_mask"][0, n:].sum() == 0 and (right["labels"][0, n:] == IGNORE_INDEX).all()
    left = pad_batch([short, long], tokenizer.pad_token_id, side="left")
    assert left["input_ids"][0, -n:].tolist() == short["input_ids"]


def retain_draws(rank: int, epoch: int = 0, seed: int = 0) -> list[int]:
    forget = [{"id": i} for i in range(50)]
    retain = [{"id": i} for i in range(1000)]
    dataset = PairedDataset("forget", forget, {"retain": retain}, seed=seed, rank=rank)
    dataset.epoch = epoch
    return [dataset[i]["retain"]["id"] for i in range(len(dataset))]


def test_each_rank_draws_different_retain_samples():
    rank0, rank1 = retain_draws(0), retain_draws(1)
    assert rank0 == retain_draws(0)  # reproducible: a pure function of seed, rank, epoch, index
    assert sum(a == b for a, b in zip(rank0, rank1)) <= 2  # 50 draws of 1000: collisions are rare
    assert retain_draws(0, epoch=1) != rank0 and retain_draws(0, seed=1) != rank0


def test_forget_items_are_not_resampled():
    dataset = PairedDataset("forget", [{"id": i} for i in range(5)], {"retain": [{"id": -1}]}, seed=0, rank=3)
    assert [dataset[i]["forget"]["id"] for i in range(5)] == list(range(5))


def test_tofu_loader_on_real_files(data_dir):
    """forget01 + retain99 == full, in order (TOFU's own layout), and the eval sets have their schema."""
    benchmark = load_tofu("forget01", str(data_dir / "tofu"))
    assert len(benchmark.forget) == 40 and len(benchmark.retain) == 3960
    assert benchmark.retain + benchmark.forget == benchmark.full
    assert np.all([len(r["perturbed_answer"]) == 5 for r in benchmark.forget_perturbed])
    assert set(benchmark.eval_sets()) == {"forget", "retain", "real_authors", "world_facts"}
