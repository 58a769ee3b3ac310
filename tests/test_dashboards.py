"""A sweep logged to W&B (offline) lands in a form its dashboard compares methods by, with no hand work:
one `unlearn` run per job, grouped by the sweep, with sweep / method / split / seed as top-level config
keys, the final metrics in the summary and the method among the tags (issue 16)."""

from __future__ import annotations

import json

import pytest

from tests.test_sweeps import cache_dir, job_folders, unlearn, wandb_records  # noqa: F401  (cache_dir: a fixture)

METHODS = ("npo", "grad_ascent")


def values(records, field: str) -> dict:
    """The key -> value items of the config or summary records of one run."""
    return {item.key: json.loads(item.value_json) for record in records if record.HasField(field)
            for item in getattr(record, field).update}


@pytest.mark.slow
def test_a_wandb_sweep_is_one_comparable_run_per_job(cache_dir, tmp_path):  # noqa: F811
    unlearn("--multirun", f"method={','.join(METHODS)}", "data.split=forget05", "seed=0", "logger=wandb",
            f"hydra.sweep.dir={tmp_path}", f"paths.cache_dir={cache_dir}", env={"WANDB_MODE": "offline"})
    folders = job_folders(tmp_path)
    assert len(folders) == len(METHODS)
    seen = set()
    for folder in folders.values():
        runs = [list(wandb_records(path)) for path in folder.glob("wandb/offline-run-*/run-*.wandb")]
        unlearn_runs = [records for records in runs
                        if any(r.HasField("run") and r.run.job_type == "unlearn" for r in records)]
        assert len(unlearn_runs) == 1  # the finetune stages the sweep built once are runs of their own
        (records,) = unlearn_runs
        run = next(r.run for r in records if r.HasField("run"))
        config = values(records, "config")
        assert config["sweep"] == str(tmp_path) == run.run_group
        assert config["method"] in run.tags and config["method"] in METHODS
        assert (config["split"], config["seed"]) == ("forget05", 0)
        assert config["method_settings"]["_target_"].startswith("unlearning.methods.")
        unlearned = json.loads((folder / "results.json").read_text())["models"]["unlearned"]
        summary = values(records, "summary")
        assert summary["forget_quality"] == pytest.approx(unlearned["forget_quality"])
        assert summary["model_utility"] == pytest.approx(unlearned["model_utility"])
        assert "retain/forget_quality" in summary
        seen.add(config["method"])
    assert seen == set(METHODS)
