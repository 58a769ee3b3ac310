"""unlearn-report on fake run and sweep folders laid out like real ones (results.json as the pipeline
writes it, .hydra/config.yaml, FAILED.json, the CSV logger's logs/unlearn/version_0/metrics.csv,
eval_during_training.json): the Markdown and LaTeX tables' mean ± std over seeds against numbers worked
out by hand, the CSV rows, the figures as PNG files inlined in report.html, failed jobs listed, figures
without data left out with a note, and an offline W&B run holding the tables and images."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import pytest

from unlearning.report import main
from unlearning.report.collect import collect, unlearning_curves
from unlearning.report.figures import TITLES
from unlearning.report.wandb_log import wandb_wanted

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("forget_quality_vs_utility", "eval_curves", "loss_curves", "lm_eval")
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
# A target model's metrics from a real run of the default experiment (results.json, TOFU and lm-eval groups).
REAL_METRICS = {
    "forget_prob": 0.9482787027128786, "forget_truth_ratio": 0.7431555093720863, "forget_rouge": 0.9523645382395383,
    "retain_prob": 0.9547182406797777, "retain_truth_ratio": 0.23104042848496376, "retain_rouge": 0.9356978715728715,
    "real_authors_prob": 0.8312330568021064, "real_authors_truth_ratio": 0.9472416688055764,
    "real_authors_rouge": 0.7833333333333333, "world_facts_prob": 0.635079154833487,
    "world_facts_truth_ratio": 0.7792039052670845, "world_facts_rouge": 0.8293650793650793,
    "model_utility": 0.640869006382243, "forget_quality": 5.951062636424447e-11,
    "lm_eval_tofu_forget_mc_acc": 0.925, "lm_eval_tofu_forget_mc_acc_stderr": 0.04217636961434872,
    "lm_eval_tofu_forget_loglik_loglikelihood": -0.7607464569620788,
    "lm_eval_tofu_forget_loglik_loglikelihood_stderr": 0.21083548781763733,
    "lm_eval_synthetic_world_facts_mc_acc": 0.975, "lm_eval_synthetic_world_facts_mc_acc_stderr": 0.025,
}
# (target, retain, unlearned) forget quality and model utility of each method and seed.
SWEEP = {
    "npo": [((1e-17, 0.62), (1.0, 0.6), (0.01, 0.5)), ((2e-17, 0.63), (1.0, 0.6), (0.02, 0.6)),
            ((3e-17, 0.64), (1.0, 0.6), (0.06, 0.7))],
    "grad_ascent": [((1e-17, 0.62), (1.0, 0.6), (0.001, 0.4)), ((2e-17, 0.63), (1.0, 0.6), (0.003, 0.4)),
                    ((3e-17, 0.64), (1.0, 0.6), (0.002, 0.4))],
}
FAILURE = {"error": "DataError", "message": "synthetic benchmark: unknown split 'forget07'",
           "overrides": ["method=simnpo", "seed=0"]}


def fake_job(folder: Path, seed: int = 0, models: dict | None = None, failure: dict | None = None,
             logger: str = CSV_LOGGER, columns: list[str] | None = None) -> None:
    """A job folder as a run leaves it: results.json when it finished, FAILED.json when the sweep caught
    its error."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nlogger:\n  _target_: {logger}\n  save_dir: ${{paths.run_dir}}/logs\n"
        + (f"report:\n  columns: {json.dumps(columns)}\n" if columns else ""))
    if models is not None:
        (folder / "results.json").write_text(json.dumps({
            "models": models, "paths": {name: str(folder / name) for name in models},
            "per_example": "per_example.json", "config": {"seed": seed}}, indent=2))
    if failure is not None:
        (folder / "FAILED.json").write_text(json.dumps(failure))


def model_metrics(forget_quality: float, model_utility: float) -> dict:
    return {**REAL_METRICS, "forget_quality": forget_quality, "model_utility": model_utility}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two methods x three seeds, a failed job, and logged curves for two jobs (the npo seed 0 job through
    the CSV logger: losses and eval/* columns; the grad_ascent seed 0 job through eval_during_training.json),
    reported once with the columns forget_quality and model_utility."""
    root = tmp_path_factory.mktemp("multirun") / "2026-11-22" / "09-00-00"
    for method, seeds in SWEEP.items():
        for seed, models in enumerate(seeds):
            fake_job(root / f"method={method},seed={seed}", seed,
                     {name: model_metrics(*values) for name, values in zip(("target", "retain", "unlearned"), models)})
    fake_job(root / "method=simnpo,seed=0", 0, failure=FAILURE)
    logs = root / "method=npo,seed=0" / "logs" / "unlearn" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text(
        "epoch,eval/forget_prob,eval/forget_quality,step,train/forget_loss,train/loss,train/retain_loss\n"
        ",0.95,1e-10,0,,,\n0,,,4,12.58,12.65,0.07\n0,0.4,0.001,5,,,\n1,,,9,5.07,5.63,0.55\n1,0.02,0.01,10,,,\n")
    (root / "method=grad_ascent,seed=0" / "eval_during_training.json").write_text(json.dumps(
        [{"step": 0, "forget_prob": 0.95, "forget_quality": 1e-10},
         {"step": 5, "forget_prob": 0.5, "forget_quality": 1e-4},
         {"step": 10, "forget_prob": 0.1, "forget_quality": 0.001}]))
    report(root)
    return root


def report(folder: Path, *options: str) -> None:
    main([str(folder), "--columns", "forget_quality", "model_utility", "--no-wandb", *options])


def test_summary_tables_give_mean_and_std_over_seeds(sweep):
    """npo unlearned: forget quality 0.01, 0.02, 0.06 -> mean 0.03, std sqrt((0.02^2 + 0.01^2 + 0.03^2) / 2)
    = sqrt(0.0007) = 0.026; utility 0.5, 0.6, 0.7 -> 0.6 ± 0.1. grad_ascent: 0.001, 0.003, 0.002 ->
    0.002 ± 0.001; 0.4 ± 0. The target (1e-17, 2e-17, 3e-17 -> 2e-17 ± 1e-17; 0.62..0.64 -> 0.63 ± 0.01) and
    the retain model are the same for both methods: one row each. npo is best in both columns."""
    markdown = (sweep / "report.md").read_text()
    assert markdown.startswith("""# unlearn-report: 09-00-00

## Summary

Mean ± sample standard deviation over the seeds of each group (n: its jobs). The best unlearned value of each \
column is in bold.

| group | model | n | forget_quality | model_utility |
|---|---|---|---|---|
|  | target | 3 | 2e-17 ± 1e-17 | 0.63 ± 0.01 |
|  | retain | 3 | 1 ± 0 | 0.6 ± 0 |
| method=grad_ascent | unlearned | 3 | 0.002 ± 0.001 | 0.4 ± 0 |
| method=npo | unlearned | 3 | **0.03 ± 0.026** | **0.6 ± 0.1** |

## Jobs
""")
    assert "| method=npo,seed=2 | unlearned | 0.06 | 0.7 |\n| method=simnpo,seed=0 | failed | - | - |" in markdown
    assert markdown.endswith("## Failed jobs\n\n- method=simnpo,seed=0: DataError: synthetic benchmark: unknown split "
                             "'forget07'\n")
    assert (sweep / "report.tex").read_text() == r"""% needs \usepackage{booktabs}
\begin{table}[t]
\centering
\caption{Mean $\pm$ sample standard deviation over the seeds of each group (n: its jobs). The best unlearned value of each column is in bold.}
\label{tab:unlearning}
\begin{tabular}{llrrr}
\toprule
group & model & n & forget\_quality & model\_utility \\
\midrule
 & target & 3 & $2\times10^{-17} \pm 1\times10^{-17}$ & $0.63 \pm 0.01$ \\
 & retain & 3 & $1 \pm 0$ & $0.6 \pm 0$ \\
\midrule
method=grad\_ascent & unlearned & 3 & $0.002 \pm 0.001$ & $0.4 \pm 0$ \\
method=npo & unlearned & 3 & $\mathbf{0.03 \pm 0.026}$ & $\mathbf{0.6 \pm 0.1}$ \\
\bottomrule
\end{tabular}
\end{table}
"""


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_csv_files_hold_every_job_and_the_summary(sweep):
    jobs = read_csv(sweep / "report.csv")
    assert jobs[0] == ["job", "group", "seed", "model", "status", "forget_quality", "model_utility", "error"]
    assert ["method=npo,seed=1", "method=npo", "1", "unlearned", "ok", "0.02", "0.6", ""] in jobs
    assert jobs[-1] == ["method=simnpo,seed=0", "method=simnpo", "0", "", "failed", "", "",
                        "DataError: synthetic benchmark: unknown split 'forget07'"]
    assert len(jobs) == 1 + 6 * 3 + 1
    summary = read_csv(sweep / "report_summary.csv")
    assert summary[0] == ["group", "model", "n", "forget_quality_mean", "forget_quality_std", "model_utility_mean",
                          "model_utility_std"]
    assert [row[:3] for row in summary[1:]] == [
        ["", "target", "3"], ["", "retain", "3"], ["method=grad_ascent", "unlearned", "3"],
        ["method=npo", "unlearned", "3"]]
    assert [float(value) for value in summary[4][3:]] == pytest.approx([0.03, 0.0007 ** 0.5, 0.6, 0.1])
    result = json.loads((sweep / "report.json").read_text())
    assert result["failed"] == ["method=simnpo,seed=0"]
    assert len(result["jobs"]) == 7 and result["jobs"][-1]["status"] == "failed"


def test_figures_are_valid_pngs_inlined_and_linked_in_the_html(sweep):
    page = (sweep / "report.html").read_text()
    for name in FIGURES:
        png = (sweep / "report_figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC)
        assert base64.b64encode(png).decode() in page
        assert f'href="report_figures/{name}.png"' in page
    assert "Not drawn" not in page
    assert "method=simnpo,seed=0: DataError: synthetic benchmark: unknown split &#x27;forget07&#x27;" in page
    assert json.loads((sweep / "report.json").read_text())["figures"] == {
        name: f"report_figures/{name}.png" for name in FIGURES}


def test_a_figure_without_data_is_left_out_with_a_note(tmp_path, capsys):
    """A single run with TOFU metrics only and no logged curves: only the forget quality / utility figure;
    a stale PNG of an earlier report goes; a job without results.json (crashed) is listed as failed."""
    tofu_only = {key: value for key, value in REAL_METRICS.items() if not key.startswith("lm_eval_")}
    fake_job(tmp_path / "run", models={"target": tofu_only, "retain": tofu_only, "unlearned": tofu_only})
    fake_job(tmp_path / "crashed")
    stale = tmp_path / "report_figures" / "lm_eval.png"
    stale.parent.mkdir()
    stale.write_bytes(PNG_MAGIC)
    report(tmp_path, "--models", "unlearned")
    out = capsys.readouterr().out
    assert "| run | unlearned | 5.95e-11 | 0.641 |" in out and "| run | target |" not in out
    assert "- crashed: no results.json (the job crashed, or is still running)" in out
    assert sorted(path.name for path in (tmp_path / "report_figures").iterdir()) == ["forget_quality_vs_utility.png"]
    page = (tmp_path / "report.html").read_text()
    assert f"Not drawn: {TITLES['eval_curves']}: no job evaluated during training" in page
    assert f"Not drawn: {html.escape(TITLES['lm_eval'])}: no lm-eval accuracy" in page
    assert set(json.loads((tmp_path / "report.json").read_text())["not_drawn"]) == {"eval_curves", "loss_curves",
                                                                                   "lm_eval"}


def test_tables_show_the_columns_the_experiment_names(tmp_path, capsys):
    """An experiment's `report.columns` (here WHP's) are the tables' columns unless --columns is given."""
    whp = {"familiarity_term_prob": 0.12, "heldout_ppl": 254.86, "forget_ppl": 3.68}
    fake_job(tmp_path / "run", models={"target": whp, "unlearned": {**whp, "familiarity_term_prob": 0.0}},
             columns=["familiarity_term_prob", "heldout_ppl"])
    main([str(tmp_path), "--no-wandb"])
    assert "| group | model | n | familiarity_term_prob | heldout_ppl |" in capsys.readouterr().out
    main([str(tmp_path), "--no-wandb", "--columns", "forget_ppl"])
    assert "| group | model | n | forget_ppl |" in capsys.readouterr().out


def test_across_spreads_one_override_over_the_columns(tmp_path, capsys):
    """open-unlearning's TOFU layout: a row per method, forget quality per split side by side; the target
    of each split (shared by its methods) in one row; LaTeX gets the same layout."""
    for split, target in (("forget01", 1e-3), ("forget10", 1e-17)):
        for method, unlearned in (("npo", 0.3), ("undial", 0.5)):
            fake_job(tmp_path / f"data.split={split},experiment=tofu,method={method}",
                     models={"target": model_metrics(target, 0.6), "unlearned": model_metrics(unlearned / (
                         100 if split == "forget10" else 1), 0.5)})
    main([str(tmp_path), "--no-wandb", "--columns", "forget_quality", "--across", "data.split"])
    out = capsys.readouterr().out
    assert "| group | model | forget01 forget_quality | forget10 forget_quality |" in out
    assert "|  | target | 0.001 | 1e-17 |" in out
    assert "| method=npo | unlearned | 0.3 | 0.003 |" in out
    assert "| method=undial | unlearned | **0.5** | **0.005** |" in out
    assert r"method=npo & unlearned & $0.3$ & $0.003$ \\" in (tmp_path / "report.tex").read_text()


def test_a_sequential_runs_requests_are_laid_end_to_end(tmp_path):
    """Each request counts steps from 0 (logs/request<i>/unlearn, request<i>/eval_during_training.json):
    request 2's curves come after request 1's last step (5), not over them; request 10 after request 2."""
    for request, loss in ((1, 4.0), (2, 2.0), (10, 1.0)):
        logs = tmp_path / "logs" / f"request{request}" / "unlearn" / "version_0"
        logs.mkdir(parents=True)
        (logs / "metrics.csv").write_text(f"epoch,step,train/forget_loss\n0,4,{loss}\n0,5,{loss / 2}\n")
        (tmp_path / f"request{request}").mkdir(exist_ok=True)
        (tmp_path / f"request{request}" / "eval_during_training.json").write_text(
            json.dumps([{"step": 0, "forget_prob": loss / 10}]))
    (tmp_path / "requests_notes").mkdir()  # not a request folder
    eval_curves, loss_curves = unlearning_curves(tmp_path)
    assert loss_curves == {"forget_loss": [(4, 4.0), (5, 2.0), (10, 2.0), (11, 1.0), (16, 1.0), (17, 0.5)]}
    assert eval_curves == {"forget_prob": [(0, 0.4), (6, 0.2), (12, 0.1)]}


def test_jobs_differing_only_in_seed_share_a_group(tmp_path):
    for label in ("method=npo,seed=1", "seed=2,x=1", "data.seed=3", "seeds/seed=4"):
        fake_job(tmp_path / label)
    groups = {job.label: job.group for job in collect(tmp_path)}
    assert groups == {"method=npo,seed=1": "method=npo", "seed=2,x=1": "x=1", "data.seed=3": "data.seed=3",
                      "seeds/seed=4": "seeds"}


def test_wandb_is_on_when_asked_or_when_the_runs_used_it(tmp_path):
    fake_job(tmp_path / "csv")
    assert not wandb_wanted(collect(tmp_path), None) and wandb_wanted(collect(tmp_path), True)
    fake_job(tmp_path / "wandb", logger=WANDB_LOGGER)
    assert wandb_wanted(collect(tmp_path), None) and not wandb_wanted(collect(tmp_path), False)


def test_wandb_offline_run_holds_the_tables_and_figures(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    output = tmp_path / "report"
    main([str(sweep), "--wandb", "--output", str(output)])
    (run,) = output.glob("wandb/offline-run-*/files")
    images = sorted(path.name.rsplit("_", 2)[0] for path in run.glob("media/images/report/*.png"))
    assert images == sorted(FIGURES)
    (summary,) = run.glob("media/table/report/summary_*.table.json")
    table = json.loads(summary.read_text())
    assert table["columns"][:3] == ["group", "model", "n"]
    assert [row[:2] for row in table["data"]] == [["", "target"], ["", "retain"], ["method=grad_ascent", "unlearned"],
                                                  ["method=npo", "unlearned"]]
    assert list(run.glob("media/table/report/jobs_*.table.json"))


def test_a_folder_without_runs_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"error: no run below .* \(a run folder holds \.hydra/config\.yaml\)"):
        main([str(tmp_path)])
