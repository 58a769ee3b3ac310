"""Item 5: how unlearning and evaluation cost grow with the forget set: 1x, 2x, 4x records.

Both should grow linearly (a step per batch, a forward per answer variant); time per record divided
by its value at 1x shows it: about 1 is linear, clearly above 1 is worse than linear (e.g. work per
step that grows with the data set), below 1 is fixed costs being amortised or batches filling up.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import Section
from benchmarks.runs import MethodRun
from benchmarks.timing import Variant, time_interleaved
from benchmarks.workload import Workload

MULTIPLES = (1, 2, 4)
METHOD = "npo"


def measure(workload: Workload, log_dir: Path) -> Section:
    settings, config = workload.settings, workload.config
    tofu = config.eval.groups.tofu
    sizes = {multiple: multiple * settings.scaling_base for multiple in MULTIPLES}

    def unlearning_epoch(size: int) -> Variant:
        run = MethodRun.build(workload, METHOD, retain="nll", steps=size // settings.batch_size, forget_size=size)
        return run.framework(log_dir)

    def evaluation(size: int) -> Variant:
        return Variant(lambda _: workload.evaluate_forget(workload.forget_perturbed[:size]))

    training = time_interleaved({m: unlearning_epoch(size) for m, size in sizes.items()},
                                settings.repeats, settings.warmup)
    evaluating = time_interleaved({m: evaluation(size) for m, size in sizes.items()},
                                  settings.repeats, settings.warmup)

    def per_record_vs_1x(timed, multiple: int) -> str:
        return f"{timed[multiple].median / multiple / timed[1].median:.2f}"

    rows = [[f"{m}x", sizes[m], f"{training[m].median:.2f}", per_record_vs_1x(training, m),
             f"{evaluating[m].median:.2f}", per_record_vs_1x(evaluating, m)] for m in MULTIPLES]
    return Section(
        title="5. Cost growth with the forget-set size",
        summary=(f"Unlearning: one epoch of `{METHOD}` + `retain=nll` through the framework (Lightning fit, batch "
                 f"{settings.batch_size}, tokenizing excluded) on the first N forget10 records; model: "
                 f"{workload.training_model_description}. Evaluation: the full TOFU evaluation of the same "
                 f"records (scores + {tofu.max_new_tokens} generated tokens, batch {tofu.batch_size}) by the "
                 f"real stories260K. Median of {settings.repeats} interleaved repeats after {settings.warmup} "
                 f"warm-up."),
        columns=["size", "records", "unlearning s", "per record / 1x", "evaluation s", "per record / 1x"],
        rows=rows,
    )
