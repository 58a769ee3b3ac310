"""Data-parallel evaluation (unlearning/sharding.py): batches dealt to ranks and put back in order, by hand;
two gloo processes splitting real batches; and the default experiment's three models scored by every
metric group on 2 ranks with the numbers of 1 process (benchmarks/eval_ranks.py starts the processes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearning.sharding import all_gather_objects, evaluation_ranks, in_batch_order, map_sharded, owners, sharded


def test_owners_deal_batches_round_robin_from_the_first_rank():
    assert owners(5, 2) == [0, 1, 0, 1, 0]
    assert owners(7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert owners(3, 2, first=1) == [1, 0, 1]  # the next call's spare batch goes to the other rank


def test_more_ranks_than_batches_leaves_some_ranks_without_work():
    assert owners(2, 4) == [0, 1]
    assert in_batch_order([["r0"], ["r1"], [], []], [0, 1]) == ["r0", "r1"]
    assert owners(0, 2) == [] and in_batch_order([[], []], []) == []


def test_costs_balance_the_ranks_largest_first():
    # sets batched apart: [64, 36] rows twice. Round robin gives rank 0 both 64s (128 against 72);
    # balanced: 64 + 36 each, the largest first and a tie in load going to `first`
    assert owners(4, 2, costs=[64, 36, 64, 36]) == [0, 0, 1, 1]
    assert owners(4, 2, first=1, costs=[64, 36, 64, 36]) == [1, 1, 0, 0]
    assert owners(3, 2, costs=[5, 3, 3]) == [0, 1, 1]  # 5 against 3 + 3
    loads = [0, 0, 0]
    costs = [9, 7, 6, 5, 5, 4, 3, 2]
    for cost, rank in zip(costs, owners(len(costs), 3, costs=costs)):
        loads[rank] += cost
    assert sorted(loads) == [13, 14, 14]


def test_in_batch_order_puts_uneven_shares_back():
    # 5 batches on 2 ranks round robin: rank 0 computed batches 0, 2, 4 and rank 1 batches 1, 3
    assert in_batch_order([["x0", "x2", "x4"], ["x1", "x3"]], owners(5, 2)) == ["x0", "x1", "x2", "x3", "x4"]
    for world in range(1, 5):
        for count in range(8):
            for costs in (None, [(i * 7) % 5 for i in range(count)]):
                owner = owners(count, world, count % world, costs)
                parts = [[i for i in range(count) if owner[i] == rank] for rank in range(world)]
                assert in_batch_order(parts, owner) == list(range(count))


def test_one_process_computes_every_batch_in_order():
    class Bar:
        n = 0

        def update(self, k: int = 1) -> None:
            self.n += k

    bar = Bar()
    with sharded():
        assert evaluation_ranks() == (0, 1)
        assert map_sharded(lambda b: b * 10, [3, 1, 2], bar) == [30, 10, 20]
    assert bar.n == 3
    assert all_gather_objects({"a": 1}) == [{"a": 1}]


def _two_ranks(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    computed = []

    def compute(batch):
        computed.append(batch)
        return [value * 2 for value in batch]

    batches = [[1, 2], [3], [4, 5], [6], [7]]
    outside = map_sharded(lambda batch: batch, batches[:2])  # outside `sharded()`: every rank computes every batch
    with sharded():
        ranks = evaluation_ranks()
        inside = map_sharded(compute, batches)
        rotated = map_sharded(compute, [[10], [11], [12]])  # the second call starts at rank 1
        balanced = map_sharded(compute, [[20], [21, 22, 23], [24]], costs=[1, 3, 1])  # third call: rank 0 first
        empty = map_sharded(compute, [])
    record = {"ranks": ranks, "computed": computed, "results": inside, "rotated": rotated, "balanced": balanced,
              "empty": empty,
              "outside": outside, "gathered": all_gather_objects(rank)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.ci
def test_two_processes_split_the_batches_and_both_get_every_result(tmp_path):
    """5 batches on 2 gloo ranks: rank 0 computes batches 0, 2, 4, rank 1 batches 1, 3; both end with the
    five results in batch order. The next call's 3 batches start at rank 1 (0 and 2 there, 1 on rank 0),
    so uneven counts do not always leave the spare batch to rank 0. With costs, the large batch alone on
    rank 0 and the two small ones on rank 1."""
    from benchmarks.eval_ranks import free_port

    torch.multiprocessing.start_processes(_two_ranks, (free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [rank["ranks"] for rank in ranks] == [[0, 2], [1, 2]]
    assert ranks[0]["computed"] == [[1, 2], [4, 5], [7], [11], [21, 22, 23]]
    assert ranks[1]["computed"] == [[3], [6], [10], [12], [20], [24]]
    for rank in ranks:
        assert rank["results"] == [[2, 4], [6], [8, 10], [12], [14]] and rank["rotated"] == [[20], [22], [24]]
        assert rank["balanced"] == [[40], [42, 44, 46], [48]]
        assert rank["empty"] == [] and rank["outside"] == [[1, 2], [3]] and rank["gathered"] == [0, 1]


@pytest.fixture(scope="module")
def default_models(tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """The default experiment's target, retain and unlearned models, small (2 finetuning epochs, 4
    unlearning steps), and the overrides that score them with every metric group on a few examples,
    in batches that do not divide the sets evenly."""
    from benchmarks.eval_ranks import default_experiment, default_models

    cache, run_dir = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("run")
    terms = tmp_path_factory.mktemp("terms") / "terms.yaml"
    terms.write_text("born: raised\nfather: mother\nnovels: stories\n")
    trained = [f"paths.cache_dir={cache}", "finetune.epochs=2", "trainer.max_steps=4", "logger=none",
               "checkpoint_every_n_steps=null"]
    folders = default_models(default_experiment(*trained, f"paths.run_dir={run_dir}"))
    scored = [*trained, "mia=default", "muse=default", "memorization=default", "familiarity=default",
              "eval.groups.tofu.max_examples=10", "eval.groups.tofu.batch_size=4", "eval.groups.tofu.max_new_tokens=8",
              "eval.groups.lm_eval.limit=7", "eval.groups.lm_eval.batch_size=8",
              "eval.groups.mia.max_examples=7", "eval.groups.mia.batch_size=4",
              "eval.groups.muse.max_examples=5", "eval.groups.muse.batch_size=2",
              "eval.groups.muse.verbmem_max_new_tokens=8", "eval.groups.muse.knowmem_max_new_tokens=8",
              "eval.groups.memorization.max_examples=7", "eval.groups.memorization.batch_size=4",
              "eval.groups.memorization.max_new_tokens=8",
              f"eval.groups.familiarity.anchored_terms={terms}", "eval.groups.familiarity.max_prompts=9",
              "eval.groups.familiarity.batch_size=4", "eval.groups.familiarity.max_new_tokens=6",
              f"paths.run_dir={run_dir}"]
    return scored, folders


@pytest.mark.slow
@pytest.mark.ci
def test_two_ranks_score_every_group_as_one_process(default_models, tmp_path):
    """Every metric group on 2 gloo ranks (1 torch thread each) gives one process's numbers (2 threads):
    probabilities, truth ratios and every other number within 1e-6, forget quality and every generation
    identical, lm-eval's per-task sample counts equal."""
    from benchmarks.eval_ranks import default_experiment, differences, evaluate_on_ranks

    overrides, folders = default_models
    cfg = default_experiment(*overrides)
    single = evaluate_on_ranks(cfg, folders, world=1, threads=2, log=tmp_path / "single")
    ranks = evaluate_on_ranks(cfg, folders, world=2, threads=1, log=tmp_path / "ranks")
    assert set(single.models) == {"target", "retain", "unlearned"}
    for group in ("tofu", "lm_eval", "mia", "muse", "memorization", "familiarity"):
        assert all(group in single.per_example[model] for model in single.models), group
    assert differences(ranks.per_example, single.per_example) == []
    assert differences(ranks.models, single.models) == []
    for model, metrics in single.models.items():
        assert ranks.models[model]["forget_quality"] == metrics["forget_quality"]
        tofu = single.per_example[model]["tofu"]
        assert ranks.per_example[model]["tofu"]["forget"]["generation"] == tofu["forget"]["generation"]
        np.testing.assert_allclose(ranks.per_example[model]["tofu"]["forget"]["truth_ratio"],
                                   tofu["forget"]["truth_ratio"], rtol=1e-6)
        assert any(key.startswith("lm_eval_") for key in metrics)
