"""unlearn-report: rows from every job's results.json, failed jobs listed, files written."""

from __future__ import annotations

import json

from unlearning.report import main


def fake_job(folder, metrics=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if metrics is not None:
        (folder / "results.json").write_text(json.dumps({"models": metrics}))


def test_report_collects_jobs_and_failures(tmp_path, capsys):
    fake_job(tmp_path / "method=npo", {"target": {"forget_quality": 1e-17}, "unlearned": {"forget_quality": 0.04}})
    fake_job(tmp_path / "method=grad_ascent", {"unlearned": {"forget_quality": 0.5, "model_utility": 0.25}})
    fake_job(tmp_path / "method=broken")
    main([str(tmp_path), "--columns", "forget_quality", "model_utility", "--models", "unlearned"])
    out = capsys.readouterr().out
    assert "| method=grad_ascent | unlearned | 0.5 | 0.25 |" in out
    assert "| method=npo | unlearned | 0.04 | - |" in out
    assert "target" not in out and "failed jobs: method=broken" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["rows"]) == 2 and report["failed"] == ["method=broken"]
    assert (tmp_path / "report.csv").read_text().splitlines()[0] == "job,model,forget_quality,model_utility"
