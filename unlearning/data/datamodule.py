"""Batches for every stage: the primary set (forget, or the finetune set) iterated in epochs, each
example paired with companion samples (retain) drawn at random, and with aligned samples (an alternate
answer to the same question) taken at the same index.

Companion draws are a pure function of (seed, rank, epoch, index): reproducible, resumable, and
**different on every rank**, so several processes never train on the same retain samples.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from unlearning.data.collate import PromptTemplate, encode_record, pad_batch


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
        self.train_set.epoch = epoch

    def collate(self, items: list[dict]) -> dict:
        pad_id = self.tokenizer.pad_token_id
        return {key: pad_batch([item[key] for item in items], pad_id) for key in items[0]}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate)
