"""protocol=tofu_sequential: each request is a benchmark of its own share of the forget set."""

from __future__ import annotations

from unlearning.data.synthetic import make_synthetic_benchmark
from unlearning.protocols.sequential import request_benchmark, request_slices


def test_each_request_keeps_the_perturbed_records_of_its_own_questions():
    """A request's benchmark passes the perturbed-file check (same questions, as many): before, every
    request kept the whole split's perturbed file and `experiment=undial_sequential` failed every job."""
    benchmark = make_synthetic_benchmark(split="forget10", seed=0)
    parts = [request_benchmark(benchmark, benchmark.forget[part]) for part in request_slices(len(benchmark.forget), 4)]
    assert [len(part.forget) for part in parts] == [len(part.forget_perturbed) for part in parts] == [50] * 4
    for part in parts:
        assert {r["question"] for r in part.forget_perturbed} == {r["question"] for r in part.forget}
    assert sum((part.forget_perturbed for part in parts), []) == benchmark.forget_perturbed
