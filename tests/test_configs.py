"""Every shipped YAML composes, and every object it describes instantiates (lightning-hydra-template's habit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import DATA_DIR, compose_config
from unlearning.cli import CONFIG_DIR
from unlearning.schema import prepare_config
from unlearning.settings import EvaluationSettings, RunSettings
from unlearning.sweeps import check_objective

CONF = Path(CONFIG_DIR)
DATA_FOLDERS = {"anchored_terms"}  # conf/ folders of data files (WHP dictionaries), not config groups
GROUP_OPTIONS = sorted(
    (path.parent.relative_to(CONF).as_posix(), path.stem)
    for path in CONF.glob("*/**/*.yaml") if path.relative_to(CONF).parts[0] not in DATA_FOLDERS
)
PRIMARY_GROUPS = {next(iter(entry)) for entry in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").defaults)
                  if isinstance(entry, dict)}
# Keys whose value a user must give; tests give a harmless one.
REQUIRED = {("model", "local"): [f"model.name_or_path={DATA_DIR}/models/stories260K"],
            ("selector", "classifier"): ["selector.model=some/classifier"],
            ("familiarity", "default"): ["eval.groups.familiarity.anchored_terms=sherlock_holmes"],
            # the text protocol reads a plain-text corpus, which the default harness tasks (QA pairs) cannot score
            ("protocol", "text"): ["data=text_corpus", "eval.groups.lm_eval=null"]}
# Paper-scale experiments read the hub or files a user supplies (books, MUSE / WMDP corpora): the real
# TOFU and the shared texts stand in, so that everything else they describe is built as written.
TEXT = f"{DATA_DIR}/text"
PAPER_TOFU = [f"data.path={DATA_DIR}/tofu"]
PAPER_TEXT = [f"data.benchmark.forget_path={TEXT}/sherlock_holmes_adventures_pg1661.txt",
              f"data.benchmark.retain_path={TEXT}/wikitext2_test_500.jsonl"]
REQUIRED |= {("experiment", name): PAPER_TOFU for name in (
    "paper_scale_tofu", "tofu_paper", "undial_stability_paper", "undial_sequential_paper", "undial_strength_paper",
    "relearning_paper", "chen2024_paper")}
REQUIRED |= {("experiment", "whp_paper"): [*PAPER_TEXT, "data.anchored_terms=sherlock_holmes"],
             ("experiment", "muse_paper"): PAPER_TEXT, ("experiment", "wmdp_rmu_paper"): PAPER_TEXT}


def instantiate_everything(cfg) -> dict:
    """Build every `_target_` node a run builds; the GPU trainer only where a GPU exists."""
    built = {"model": instantiate(cfg.model), "benchmark": instantiate(cfg.data.benchmark)}
    for key in ("method", "retain", "optimizer", "logger", "combiner"):
        built[key] = instantiate(cfg[key]) if cfg.get(key) else None
    built["metric_groups"] = {name: instantiate(node) for name, node in cfg.eval.groups.items()}
    if cfg.trainer.accelerator != "gpu" or torch.cuda.is_available():
        built["trainer"] = instantiate(cfg.trainer, logger=False)
    return built


def uses_real_data(cfg) -> bool:
    return "tofu" in cfg.data.benchmark._target_ or "stories260K" in str(cfg.model.get("name_or_path"))


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}/{o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_instantiates(group, option, tmp_path):
    # A group the primary config does not select by default is added with Hydra's `+`; Hydra's own
    # groups (hydra/sweeper, hydra/launcher) always have a default.
    choice = f"{group}={option}" if group in PRIMARY_GROUPS or group.startswith("hydra/") else f"+{group}={option}"
    overrides = [choice, *REQUIRED.get((group, option), [])]
    if group == "data" and option == "tofu":
        overrides.append(f"data.path={DATA_DIR}/tofu")
    cfg = compose_config(overrides, run_dir=tmp_path)
    prepare_config(cfg, RunSettings)  # the startup checks accept every shipped option
    check_objective(cfg)  # its objective_metric is a metric the run reports
    OmegaConf.resolve(cfg)
    if uses_real_data(cfg) and not (DATA_DIR / "tofu").is_dir():
        pytest.skip(f"needs the real data folder {DATA_DIR}")
    built = instantiate_everything(cfg)
    assert built["benchmark"].forget and built["model"].template.prompt
    if built["optimizer"] is not None:
        assert isinstance(built["optimizer"]([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)


def test_evaluate_config_composes(tmp_path):
    cfg = compose_config(["checkpoint=some/folder"], config_name="evaluate", run_dir=tmp_path)
    prepare_config(cfg, EvaluationSettings)
    assert cfg.checkpoint == "some/folder" and cfg.eval.groups.tofu.batch_size > 0


def test_unknown_choice_lists_valid_options():
    with pytest.raises(ConfigCompositionException, match="method/nope"):
        compose_config(["method=nope"])


def test_every_group_the_issue_names_exists():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert {"model", "data", "method", "retain", "optimizer", "trainer", "hardware", "eval", "logger",
            "paths", "experiment"} <= groups


# Each convention's value as the object it switches reads it: (ours, open_unlearning, paper), the README
# "Conventions" table.
CONVENTION_VALUES = {
    "kl_retain_positions": ("answer", "all", "all"),
    "ceu_ignore_first_n_answer_tokens": (0, 1, 1),
    "satimp_gamma": (1.0, 0.1, 1.0),
    "extraction_strength_last_miss_one_over_n": (False, True, False),
    "tofu_budget_counts_prompt": (False, False, True),
    "tofu_max_examples": (None, None, 300),
    "knowmem_stop": (("\n\n", "Question"), ("\n\n", "\nQuestion", "Question:"), ("\n\n", "\nQuestion", "Question:")),
}
CONVENTIONS = ("ours", "open_unlearning", "paper")


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_conventions_group_sets_every_switch(convention, tmp_path):
    base = [f"conventions={convention}", "memorization=default", "muse=default"]
    cfg = compose_config([*base, "method=ce_u", "retain=kl"], run_dir=tmp_path)
    ceu, kl = instantiate(cfg.method), instantiate(cfg.retain)
    groups = {name: instantiate(node) for name, node in cfg.eval.groups.items()}
    satimp = instantiate(compose_config([*base, "method=satimp"], run_dir=tmp_path).method)
    seen = {"kl_retain_positions": kl.positions,
            "ceu_ignore_first_n_answer_tokens": ceu.ignore_first_n_answer_tokens,
            "satimp_gamma": satimp.gamma,
            "extraction_strength_last_miss_one_over_n": groups["memorization"].last_miss_scores_one_over_n,
            "tofu_budget_counts_prompt": groups["tofu"].budget_counts_prompt,
            "tofu_max_examples": groups["tofu"].max_examples,
            "knowmem_stop": groups["muse"].knowmem_stop}
    column = CONVENTIONS.index(convention)
    assert seen == {key: values[column] for key, values in CONVENTION_VALUES.items()}
    assert set(CONVENTION_VALUES) == set(OmegaConf.load(CONF / "conventions" / f"{convention}.yaml")) - {"name"}


def test_a_plain_key_overrides_the_convention(tmp_path):
    cfg = compose_config(["conventions=open_unlearning", "retain=kl", "retain.positions=answer"], run_dir=tmp_path)
    assert instantiate(cfg.retain).positions == "answer"
    with pytest.raises(Exception, match="retain.positions='every'"):
        instantiate(compose_config(["retain=kl", "retain.positions=every"], run_dir=tmp_path).retain)
