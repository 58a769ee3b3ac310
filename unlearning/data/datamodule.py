"""Batches for every stage: the primary set (forget, or the finetune set) iterated in epochs, each
example paired with companion samples (retain) drawn at random, and with aligned samples (an alternate
answer to the same question) taken at the same index.

Companion draws are a pure function of (seed, rank, epoch, index): reproducible, resumable, and
**different on every rank**, so several processes never train on the same retain samples. The shuffle
is a pure function of (seed, epoch) too, and a run resumed from a checkpoint starts it where the killed
run stopped (Lightning does not fast-forward a plain DataLoader).
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from unlearning.data.collate import PromptTemplate, encode_record, pad_sub_batches


class PairedDataset(Dataset):
    """Item i = the i-th primary example, the i-th example of each aligned set, and one random example
    of each companion set."""

    def __init__(self, primary_key: str, primary: Sequence[dict], companions: Mapping[str, Sequence[dict]],
                 seed: int, rank: int, aligned: Mapping[str, Sequence[dict]] | None = None) -> None:
        self.primary_key = primary_key
        self.primary = primary
        self.companions = companions
        self.aligned = dict(aligned or {})
        for name, records in self.aligned.items():
            if len(records) != len(primary):
                raise ValueError(f"aligned set '{name}' has {len(records)} examples, '{primary_key}' {len(primary)}")
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.primary)

    def companion_index(self, name_index: int, size: int, i: int) -> int:
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, name_index, i])
        return int(rng.integers(size))

    def __getitem__(self, i: int) -> dict:
        item = {self.primary_key: self.primary[i]}
        item.update({name: records[i] for name, records in self.aligned.items()})
        for k, (name, records) in enumerate(self.companions.items()):
            item[name] = records[self.companion_index(k, len(records), i)]
        return item


class EpochPermutation(Sampler[int]):
    """Epoch e visits the examples in the permutation drawn from (seed, e). `resume_batches` (the batches
    a resumed run already trained on) starts the first pass at that epoch and position.

    Under `world` processes rank r takes every world-th example from position r (the permutation padded
    with its head to equal shares, so every rank runs the same number of steps): step k's batches of
    size B together are the single-process batch k of size world * B."""

    def __init__(self, dataset: PairedDataset, seed: int, batch_size: int, resume_batches: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.dataset = dataset
        self.seed = seed
        self.batch_size = batch_size
        self.resume_batches = resume_batches
        self.rank = rank
        self.world = world
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.dataset.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self.resume_batches:
            epoch, done = divmod(self.resume_batches, math.ceil(len(self) / self.batch_size))
            self.set_epoch(epoch)
            skip, self.resume_batches = done * self.batch_size, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        order = np.concatenate([order, order[:len(self) * self.world - len(order)]])
        return iter(order[self.rank::self.world][skip:].tolist())


class UnlearningDataModule(L.LightningDataModule):
    """Tokenizes QA sets with the model's template (answer-only labels) and serves paired batches.

    `sets` maps each batch key to its records; the first key is the primary set; `aligned_keys` name
    the sets indexed like the primary set rather than sampled.
    """

    def __init__(self, sets: Mapping[str, Sequence[dict]], tokenizer, template: PromptTemplate,
                 batch_size: int, max_length: int, seed: int, aligned_keys: Sequence[str] = ()) -> None:
        super().__init__()
        self.sets = dict(sets)
        self.aligned_keys = tuple(aligned_keys)
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.train_set: PairedDataset | None = None
        self.sampler: EpochPermutation | None = None

    def encode(self, records: Sequence[dict]) -> list[dict]:
        return [encode_record(self.tokenizer, self.template, r, self.max_length) for r in records]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        encoded = {name: self.encode(records) for name, records in self.sets.items()}
        primary_key, *others = encoded
        rank = self.trainer.global_rank if self.trainer is not None else 0
        self.train_set = PairedDataset(
            primary_key, encoded[primary_key],
            {k: encoded[k] for k in others if k not in self.aligned_keys}, self.seed, rank,
            aligned={k: encoded[k] for k in others if k in self.aligned_keys},
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def collate(self, items: list[dict]) -> dict:
        return pad_sub_batches(items, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        # Called after a checkpoint is restored: global_step counts the batches already trained on.
        done = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer is not None else 0
        trainer = self.trainer
        self.sampler = EpochPermutation(self.train_set, self.seed, self.batch_size, done,
                                        trainer.global_rank if trainer else 0, trainer.world_size if trainer else 1)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self.collate)
