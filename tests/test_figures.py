"""The report's figures as a reader meets them (issue 16): drawn, not blank, one legend entry per method,
a method's colour the same in every figure, one panel per forget split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from unlearning.report import plots  # noqa: E402
from unlearning.report.collect import Job  # noqa: E402

METHODS = {"NPO": "unlearning.methods.npo.NPO", "GradAscent": "unlearning.methods.grad_ascent.GradAscent"}


def job(method: str, split: str, seed: int) -> Job:
    config = OmegaConf.create({"seed": seed, "method": {"_target_": METHODS[method]}, "data": {"split": split}})
    shift = 0.1 * seed + (0.2 if method == "NPO" else 0.0)
    lm_eval = {"lm_eval_facts_acc": 0.5 + shift, "lm_eval_forget_mc_acc": 0.3 + shift}
    models = {"target": {"forget_quality": 1e-9, "model_utility": 0.6, "lm_eval_facts_acc": 0.9,
                         "lm_eval_forget_mc_acc": 0.8},
              "retain": {"forget_quality": 1.0, "model_utility": 0.58},
              "unlearned": {"forget_quality": 10 ** -(3 - seed - shift), "model_utility": 0.5 + shift, **lm_eval}}
    curve = [(step, 1.0 / (step + 1) + shift) for step in range(5)]
    return Job(f"data.split={split},method={method},seed={seed}", Path("/nonexistent"), config, models,
               eval_curves={"forget_quality": curve, "model_utility": curve},
               loss_curves={"loss": curve, "forget_loss": curve})


JOBS = [job(method, split, seed) for method in METHODS for split in ("forget01", "forget05") for seed in (0, 1)]
COLORS = plots.method_colors(JOBS)


def drawn(figure) -> np.ndarray:
    image = imread(io.BytesIO(plots.png_bytes(figure)))
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas
    return image


def legend_entries(figure) -> list[str]:
    (legend,) = figure.legends
    return [text.get_text() for text in legend.get_texts()]


def colour_of(figure, method: str) -> tuple:
    (legend,) = figure.legends
    handle = legend.legend_handles[legend_entries(figure).index(method)]
    return tuple(handle.get_color())


@pytest.mark.parametrize("draw", [
    lambda: plots.forget_quality_vs_utility(JOBS, COLORS),
    lambda: plots.curves(JOBS, "eval_curves", ["forget_quality", "model_utility"], "none", COLORS),
    lambda: plots.curves(JOBS, "loss_curves", ["loss", "forget_loss"], "none", COLORS),
    lambda: plots.lm_eval_bars(JOBS, COLORS),
], ids=["forget_quality_vs_utility", "eval_curves", "loss_curves", "lm_eval"])
def test_each_figure_is_drawn_with_one_legend_entry_per_method(draw):
    figure = draw()
    drawn(figure)
    entries = legend_entries(figure)
    for method in METHODS:
        assert entries.count(method) == 1, entries
        assert colour_of(figure, method) == tuple(COLORS[method])
    assert not any("=" in entry for entry in entries)  # method names, not override strings


def test_forget_quality_is_faceted_by_split_with_shared_axes_and_references_per_panel():
    figure = plots.forget_quality_vs_utility(JOBS, COLORS)
    panels = figure.axes
    assert [panel.get_title() for panel in panels] == ["split forget01", "split forget05"]
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[1])
    for panel in panels:
        assert {text.get_text() for text in panel.texts} == {"target", "retain"}
        # 4 jobs per split (2 methods x 2 seeds) + the target and retain markers
        assert sum(len(collection.get_offsets()) for collection in panel.collections) == 6
    assert {"seed 0", "seed 1", "target model", "retain model"} <= set(legend_entries(figure))


def test_the_lm_eval_bars_average_seeds_with_their_spread():
    figure = plots.lm_eval_bars(JOBS, COLORS)
    panel = figure.axes[0]
    heights = sorted(round(bar.get_height(), 3) for bar in panel.patches)
    # forget_mc, facts: GradAscent 0.3 and 0.5 + seeds' shifts 0 and 0.1, NPO 0.2 more; target 0.8 and 0.9
    assert heights == [0.35, 0.55, 0.55, 0.75, 0.8, 0.9]
    spreads = [bars.errorbar.lines[2][0].get_segments()[0] for bars in panel.containers
               if isinstance(bars, BarContainer)]
    assert [round(top[1] - bottom[1], 3) for bottom, top in spreads] == [0.0, 0.141, 0.141]  # 2 x std of 0, 0.1


def test_a_figure_without_data_says_what_is_missing():
    empty = [Job("a", Path("/nonexistent"), OmegaConf.create({}), {})]
    with pytest.raises(plots.MissingData, match="forget_quality"):
        plots.forget_quality_vs_utility(empty, plots.method_colors(empty))
