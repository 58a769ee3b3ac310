"""Hostile input, one table: every case is refused through the real error handler of a console script
with exit status != 0 and exactly one `error:` line naming the culprit (key, file and line, or
argument), no traceback, and nothing written to the run folder or the stage cache. Each case fails at
start-up, in process, before any training. Classes: values, templates, security, files, models,
data consistency, dictionaries, console-script arguments, state (see README "Runs that lose nothing").
Repairs that do not refuse (a corrupt cache entry, a corrupt job in a report) are tested below the table."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

from tests.conftest import compose_config, make_tiny_llama
from tests.test_faults import FAST
from unlearning import cli
from unlearning.command_line import RUN_LOCK
from unlearning.errors import MAX_QUOTED, ConfigError
from unlearning.pipeline import run, run_evaluation
from unlearning.planning.cli import main as plan_main
from unlearning.report import main as report_main
from unlearning.whp_terms import main as whp_terms_main

SECRET = "hostile-secret-0123456789"
BIG = 2**64  # past int64
LONG = "x" * 5000  # a pasted file: the error line quotes at most MAX_QUOTED characters of it


class Case:
    """Where a case runs: `tmp` (the case's folder), `tofu` (a breakable TOFU copy), `model` (a breakable
    tiny model folder), `run_dir`, `cache`."""

    def __init__(self, tmp: Path, data_dir: Path, model_folder: Path):
        self.tmp, self.run_dir, self.cache = tmp, tmp / "run", tmp / "cache"
        self.tofu = tmp / "tofu"
        self.tofu.mkdir()
        for file in (data_dir / "tofu").glob("*.jsonl"):
            self.tofu.joinpath(file.name).write_text("\n".join(file.read_text().splitlines()[:20]) + "\n")
        self.model = tmp / "model"
        shutil.copytree(model_folder, self.model)

    def run(self, *overrides: str, data: tuple[str, ...] = ()) -> Callable[[], None]:
        """`unlearn <overrides>` as its task function runs it (after Hydra composed the config)."""
        cfg = compose_config([*data, f"paths.cache_dir={self.cache}", *overrides], run_dir=self.run_dir)
        return lambda: cli._report_errors(run, cfg)

    def run_tofu(self, *overrides: str) -> Callable[[], None]:
        return self.run(*overrides, data=("data=tofu", f"data.path={self.tofu}", "data.split=forget01"))

    def run_model(self) -> Callable[[], None]:
        return self.run_tofu("model=local", f"model.name_or_path={self.model}")

    def command(self, entry: Callable, *arguments: str) -> Callable[[], None]:
        """A console script with its command line (Hydra commands read sys.argv)."""
        def call():
            saved = sys.argv
            sys.argv = ["prog", *arguments]
            try:
                return entry(list(arguments)) if entry in (report_main, whp_terms_main, plan_main) else entry()
            finally:
                sys.argv = saved
        return call


def edit_jsonl(file: Path, change: Callable[[list[dict]], None]) -> None:
    records = [json.loads(line) for line in file.read_text().splitlines()]
    change(records)
    file.write_text("\n".join(json.dumps(record) for record in records) + "\n")


def set_field(file: Path, index: int, field: str, value) -> None:
    def change(records):
        records[index][field] = value
    edit_jsonl(file, change)


def replace_line(file: Path, index: int, line: str) -> None:
    lines = file.read_text().splitlines()
    lines[index] = line
    file.write_text("\n".join(lines) + "\n")


def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def folder_instead(file: Path) -> None:
    file.unlink()
    file.mkdir()


def fake_checkpoint(folder: Path, config: bool = True, whole: bool = True) -> Path:
    """A `last.ckpt` in a checkpoints folder: with or without this project's CONFIG.json beside it."""
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "last.ckpt"
    torch.save({"state_dict": {}}, checkpoint)
    if not whole:
        truncate(checkpoint)
    if config:
        (folder / "CONFIG.json").write_text(json.dumps({"config": "0" * 16}))
    return checkpoint


def hold_run_lock(case: Case) -> Callable[[], None]:
    """Another run holds the run folder: the second `unlearn` on it is refused before Hydra starts."""
    case.run_dir.mkdir()
    lock = FileLock(str(case.run_dir / RUN_LOCK), timeout=0)
    lock.acquire()
    case.held = lock
    return case.command(cli.unlearn, f"hydra.run.dir={case.run_dir}", f"paths.cache_dir={case.cache}")


def with_secret(case: Case, monkeypatch, variable: str, *arguments: str) -> Callable[[], None]:
    monkeypatch.setenv(variable, SECRET)
    return case.command(cli.unlearn, *arguments, f"hydra.run.dir={case.run_dir}")


def evaluation(case: Case, *overrides: str) -> Callable[[], None]:
    """`unlearn-eval <overrides>` as its task function runs it."""
    cfg = compose_config(["model=stories260K", f"paths.cache_dir={case.cache}", *overrides], config_name="evaluate",
                         run_dir=case.run_dir)
    return lambda: cli._report_errors(run_evaluation, cfg)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def tofu_file(case: Case, name: str) -> Path:
    return case.tofu / f"{name}.jsonl"


# (case id, what the case does -> the call refused, culprit substring of the one error line)
R, T, M = Case.run, Case.run_tofu, Case.run_model
CASES: list[tuple[str, Callable, str]] = [
    # 1. values: non-finite numbers, integers past int64, long values quoted short
    *[(f"value {o}", (lambda c, mp, o=o: c.run(o)), o.split("=")[0] + "=") for o in [
        "optimizer.lr=inf", "optimizer.lr=nan", "optimizer.lr=-inf", "finetune.lr=inf", "finetune.lr=nan",
        "reinforce.lr=inf", "method.beta=inf", "method.gamma=nan", "method.gamma=inf", "retain.alpha=inf",
        "retain.alpha=nan", "optimizer.weight_decay=nan", "warmup_steps=inf", "seed=inf",
        f"seed={BIG}", f"data.batch_size={BIG}", f"finetune.batch_size={BIG}", f"trainer.max_steps={BIG}",
        f"checkpoint_every_n_steps={BIG}", f"max_length={BIG}", "max_length=inf", f"finetune.epochs={BIG}",
        "trainer.gradient_clip_val=inf", "finetune.max_steps=nan",
    ]],
    ("long value in a choice", lambda c, mp: c.run(f"eval.during_training.mode={LONG}"), "eval.during_training.mode="),
    ("long value of a number", lambda c, mp: c.run(f"optimizer.lr={LONG}"), "optimizer.lr="),
    ("long misspelt key", lambda c, mp: c.command(cli.unlearn, f"+method.{'g' * 300}=1"), "method.ggg"),
    # templates must hold their field, once
    ("prompt without its field", lambda c, mp: c.run("model.template.prompt='Tell me:'"), "model.template.prompt="),
    ("answer without its field", lambda c, mp: c.run("model.template.answer=' yes'"), "model.template.answer="),
    ("prompt with its field twice", lambda c, mp: c.run("model.template.prompt='{question} {question}'"),
     "model.template.prompt="),
    ("prompt with the answer field", lambda c, mp: c.run("model.template.prompt='{answer}'"), "model.template.prompt="),
    ("long template", lambda c, mp: c.run(f"model.template.prompt='{LONG}'"), "model.template.prompt="),
    # 6. security: secrets on the command line or in a value, '..' in a group, outputs outside the run folder
    ("HF_TOKEN pasted", lambda c, mp: with_secret(c, mp, "HF_TOKEN", f"model.name_or_path={SECRET}"),
     "model.name_or_path holds the value of $HF_TOKEN"),
    ("WANDB_API_KEY pasted", lambda c, mp: with_secret(c, mp, "WANDB_API_KEY", f"+logger.api_key={SECRET}"),
     "logger.api_key holds the value of $WANDB_API_KEY"),
    ("HUGGING_FACE_HUB_TOKEN pasted", lambda c, mp: with_secret(c, mp, "HUGGING_FACE_HUB_TOKEN", f"seed={SECRET}"),
     "seed holds the value of $HUGGING_FACE_HUB_TOKEN"),
    ("secret inside a longer value", lambda c, mp: with_secret(c, mp, "HF_TOKEN", f"data.path=/x/{SECRET}/y"),
     "data.path holds the value of $HF_TOKEN"),
    ("secret through oc.env", lambda c, mp: (mp.setenv("HF_TOKEN", SECRET),
                                             c.run("model=local", "model.name_or_path=${oc.env:HF_TOKEN}"))[1],
     "model.name_or_path holds the value of $HF_TOKEN"),
    ("group option with ..", lambda c, mp: c.command(cli.unlearn, "model=../../etc/passwd"), "model="),
    ("group option absolute", lambda c, mp: c.command(cli.unlearn, "method=/etc/passwd"), "method="),
    ("group option in a sweep list", lambda c, mp: c.command(cli.unlearn, "-m", "method=npo,../x"), "method="),
    ("hydra group option with ..", lambda c, mp: c.command(cli.unlearn, "hydra/launcher=../../x"), "hydra/launcher="),
    ("added group with ..", lambda c, mp: c.command(cli.unlearn, "+experiment=../../x"), "experiment="),
    ("config group set to null", lambda c, mp: c.command(cli.unlearn, "lm_eval=null"), "~lm_eval"),
    ("group option that does not exist", lambda c, mp: c.command(cli.unlearn, "method=npoo"), "method='npoo'"),
    # Hydra's own refusals, one line too
    *[(f"hydra refuses {' '.join(a)}", (lambda c, mp, a=a: c.command(cli.unlearn, *a, f"hydra.run.dir={c.run_dir}")),
       culprit) for a, culprit in [
        (("foo=bar",), "foo is not a key of the config"), (("method.nope=1",), "method.nope is not a key of method"),
        (("a=[1",), "'a=[1' is not a valid override"), (("method.beta=[1",), "'method.beta=[1'"),
        (("~nope",), "'nope' does not exist"), (("hydra/launcher=nope",), "hydra/launcher/nope"),
        (("+method=npo",), "method appears more than once"), (("-m", "method=npo", "foo=bar"), "foo is not a key"),
        (("trainer=default", "seed=1,2"), "seed=1,2"), (("experiment=nope",), "experiment='nope'"),
        (("--cfg", "nope"), "argument --cfg/-c: invalid choice: 'nope'"), (("--nope",), "--nope"),
    ]],
    ("unlearn-eval group with ..", lambda c, mp: c.command(cli.unlearn_eval, "model=../x"), "model="),
    ("unlearn-plan group with ..", lambda c, mp: c.command(plan_main, "data=../../x"), "data="),
    ("log folder above the run", lambda c, mp: c.run("logger.save_dir=../../x"), "logger.save_dir="),
    ("log folder elsewhere", lambda c, mp: c.run(f"logger.save_dir={c.tmp / 'elsewhere'}"), "logger.save_dir="),
    ("benchmark folder above the run", lambda c, mp: c.run("eval.groups.lm_eval.benchmark_dir=../b"),
     "eval.groups.lm_eval.benchmark_dir="),
    ("resume a missing checkpoint", lambda c, mp: c.run(f"resume={c.tmp / 'none.ckpt'}"), "none.ckpt"),
    ("resume a file of another tool", lambda c, mp: c.run(f"resume={write(c.tmp / 'w.ckpt', b'PK')}"), "w.ckpt"),
    ("resume without CONFIG.json", lambda c, mp: c.run(f"resume={fake_checkpoint(c.tmp / 'ck', config=False)}"),
     "last.ckpt"),
    ("resume a truncated checkpoint", lambda c, mp: c.run(f"resume={fake_checkpoint(c.tmp / 'ck', whole=False)}"),
     "last.ckpt"),
    ("resume a non-ckpt file", lambda c, mp: c.run(f"resume={write(c.tmp / 'ck' / 'model.bin', 'x')}"), "model.bin"),
    ("resume=true without a checkpoint", lambda c, mp: c.run("resume=true"), "last.ckpt"),
    ("resume=true with a corrupt CONFIG.json",
     lambda c, mp: (fake_checkpoint(c.run_dir / "checkpoints"), write(c.run_dir / "checkpoints" / "CONFIG.json", "{"),
                    c.run("resume=true"))[2], "CONFIG.json"),
    # 5. state: a run folder another run holds
    ("run folder in use", lambda c, mp: hold_run_lock(c), "hydra.run.dir="),
    # 3. files: TOFU files broken in every way a file can be
    ("TOFU file is a folder", lambda c, mp: (folder_instead(tofu_file(c, "forget01")), c.run_tofu())[1],
     "forget01.jsonl is a folder"),
    ("TOFU folder is a file", lambda c, mp: c.run("data=tofu", f"data.path={write(c.tmp / 'file', 'x')}",
                                                  "data.split=forget01"), "data.path="),
    ("TOFU folder missing", lambda c, mp: c.run("data=tofu", f"data.path={c.tmp / 'nowhere'}", "data.split=forget01"),
     "data.path="),
    ("TOFU relative folder missing", lambda c, mp: c.run("data=tofu", "data.path=./no/such/folder",
                                                         "data.split=forget01"), "data.path="),
    ("JSON array of lists", lambda c, mp: (write(tofu_file(c, "full"), '[["q", "a"]]'), c.run_tofu())[1],
     "full.jsonl is a JSON array"),
    ("JSON array cut short", lambda c, mp: (write(tofu_file(c, "full"), '[{"question": "q",\n "answer"'),
                                            c.run_tofu())[1], "full.jsonl is not valid JSON"),
    ("repeated key", lambda c, mp: (replace_line(tofu_file(c, "forget01"), 4,
                                                 '{"question": "a", "answer": "b", "answer": "c"}'), c.run_tofu())[1],
     "forget01.jsonl line 5 repeats the key 'answer'"),
    ("lone surrogate", lambda c, mp: (replace_line(tofu_file(c, "retain99"), 2,
                                                   '{"question": "\\ud800?", "answer": "b"}'), c.run_tofu())[1],
     "retain99.jsonl line 3 holds an invalid Unicode escape"),
    ("binary file", lambda c, mp: (write(tofu_file(c, "holdout01"), bytes(range(256))), c.run_tofu())[1],
     "holdout01.jsonl is not valid UTF-8"),
    ("truncated TOFU file", lambda c, mp: (truncate(tofu_file(c, "forget01_perturbed"), 0.97), c.run_tofu())[1],
     "forget01_perturbed.jsonl line"),
    ("line is a number", lambda c, mp: (replace_line(tofu_file(c, "full"), 0, "42"), c.run_tofu())[1],
     "full.jsonl line 1 is not a JSON object"),
    # 4. data consistency
    ("empty perturbed list", lambda c, mp: (set_field(tofu_file(c, "forget01_perturbed"), 1, "perturbed_answer", []),
                                            c.run_tofu())[1], "record 1 field 'perturbed_answer' is empty"),
    ("blank perturbed answer", lambda c, mp: (set_field(tofu_file(c, "retain_perturbed"), 0, "perturbed_answer",
                                                        ["a", " "]), c.run_tofu())[1],
     "record 0 field 'perturbed_answer' is empty"),
    ("empty question", lambda c, mp: (set_field(tofu_file(c, "forget01"), 2, "question", ""), c.run_tofu())[1],
     "split 'forget' record 2 field 'question' is empty"),
    ("blank answer", lambda c, mp: (set_field(tofu_file(c, "full"), 5, "answer", "  \n"), c.run_tofu())[1],
     "split 'full' record 5 field 'answer' is empty"),
    ("empty paraphrase", lambda c, mp: (set_field(tofu_file(c, "forget01_perturbed"), 0, "paraphrased_answer", ""),
                                        c.run_tofu())[1], "field 'paraphrased_answer' is empty"),
    ("perturbed file of another split",
     lambda c, mp: (shutil.copy(c.tofu / "forget05_perturbed.jsonl", tofu_file(c, "forget01_perturbed")),
                    edit_jsonl(tofu_file(c, "forget01_perturbed"), lambda r: r.__setitem__(0, {**r[0], "question": "Who?"})),
                    c.run_tofu())[2], "split 'forget_perturbed' record 0 asks a question that is not in split 'forget'"),
    ("perturbed file one short", lambda c, mp: (edit_jsonl(tofu_file(c, "forget01_perturbed"), lambda r: r.pop()),
                                                c.run_tofu())[1], "split 'forget_perturbed' has 19 records"),
    ("perturbed file one long", lambda c, mp: (edit_jsonl(tofu_file(c, "forget01"), lambda r: r.pop()),
                                               c.run_tofu())[1], "split 'forget_perturbed' has 20 records"),
    ("wrong answers not a list", lambda c, mp: (set_field(tofu_file(c, "world_facts_perturbed"), 0, "perturbed_answer",
                                                          "no"), c.run_tofu())[1], "field 'perturbed_answer'"),
    ("answer is null", lambda c, mp: (set_field(tofu_file(c, "holdout01"), 0, "answer", None), c.run_tofu())[1],
     "split 'holdout' record 0 has no field 'answer'"),
    # 4. objective_metric names a metric the run reports, checked before any training
    *[(f"objective {' '.join(o)}", (lambda c, mp, o=o: c.run(*o)), "objective_metric=" + culprit) for o, culprit in [
        (("objective_metric=forget_qualty",), "'forget_qualty'"),
        (("objective_metric=[forget_quality,nope]",), "'nope'"),
        (("objective_metric=mia_loss_auc",), "'mia_loss_auc'"),  # its group is not enabled
        (("mia=default", "eval.groups.mia.attacks=[loss]", "objective_metric=mia_zlib_auc"), "'mia_zlib_auc'"),
        (("objective_metric=lm_eval_mmlu_acc",), "'lm_eval_mmlu_acc'"),  # a harness task not run
        (("+eval.groups.tofu.generate=false", "objective_metric=model_utility"), "'model_utility'"),
        (("protocol=text", "data=text_corpus", "eval.groups.lm_eval=null", "objective_metric=forget_quality"),
         "'forget_quality'"),  # a text corpus has no forget quality
        (("experiment=wmdp_rmu", "objective_metric=lm_eval_wmdp_bio_acc"), "'lm_eval_wmdp_bio_acc'"),
    ]],
    # 4. anchored-term dictionaries, read at start-up
    *[(f"dictionary {name}", (lambda c, mp, name=name, text=text: c.run(
        "familiarity=default", f"eval.groups.familiarity.anchored_terms={write(c.tmp / name, text) if text is not None else c.tmp / name}")),
       name) for name, text in [
        ("missing.yaml", None), ("list.yaml", "- Holmes\n- Watson\n"), ("bad.yaml", "Holmes: [\n"),
        ("empty.yaml", ""), ("numbers.yaml", "Holmes: 3\n"), ("bad.json", '{"Holmes": '),
        ("latin1.yaml", b"Caf\xe9: Bar\n"), ("blank_term.yaml", "' ': Bar\n")]],
    # 3. model folders
    ("model folder missing", lambda c, mp: c.run("model=local", f"model.name_or_path={c.tmp / 'no_model'}"), "no_model"),
    ("model folder relative missing", lambda c, mp: c.run("model=local", "model.name_or_path=./no_model"), "no_model"),
    ("model folder is a file", lambda c, mp: c.run("model=local", f"model.name_or_path={write(c.tmp / 'm.bin', 'x')}"),
     "m.bin is a file"),
    ("truncated safetensors", lambda c, mp: (truncate(c.model / "model.safetensors"), c.run_model())[1],
     "model.safetensors is corrupt"),
    ("garbage safetensors", lambda c, mp: (write(c.model / "model.safetensors", b"\x00" * 64), c.run_model())[1],
     "model.safetensors is corrupt"),
    ("safetensors is a folder", lambda c, mp: (folder_instead(c.model / "model.safetensors"), c.run_model())[1],
     "model.safetensors"),
    ("truncated config.json", lambda c, mp: (truncate(c.model / "config.json"), c.run_model())[1], "config.json"),
    ("config.json is a folder", lambda c, mp: (folder_instead(c.model / "config.json"), c.run_model())[1],
     "config.json is a folder"),
    ("truncated tokenizer.json", lambda c, mp: (truncate(c.model / "tokenizer.json"), c.run_model())[1],
     "tokenizer.json"),
    ("garbage tokenizer_config.json", lambda c, mp: (write(c.model / "tokenizer_config.json", b"\xff\xfe{"),
                                                     c.run_model())[1], "tokenizer_config.json"),
    ("tokenizer larger than the embeddings", lambda c, mp: (shrink_model(c.model), c.run_model())[1],
     "more than the model's"),
    ("no tokenizer", lambda c, mp: ([p.unlink() for p in c.model.glob("tokenizer*")], c.run_model())[1],
     "has no tokenizer"),
    ("pickled weights only", lambda c, mp: ((c.model / "model.safetensors").rename(c.model / "pytorch_model.bin"),
                                            c.run_model())[1], "has no .safetensors weights"),
    ("unlearn-eval checkpoint missing", lambda c, mp: evaluation(c, f"checkpoint={c.tmp / 'gone'}"), "gone"),
    ("unlearn-eval checkpoint is a file", lambda c, mp: evaluation(c, f"checkpoint={write(c.tmp / 'f', 'x')}"),
     "checkpoint="),
    ("unlearn-eval value", lambda c, mp: evaluation(c, f"checkpoint={c.model}", "eval.groups.tofu.max_new_tokens=inf"),
     "eval.groups.tofu.max_new_tokens="),
    # 7. every console script validates its arguments
    *[(f"unlearn-whp-terms {' '.join(a)}", (lambda c, mp, a=a: c.command(
        whp_terms_main, "--baseline", str(c.model), "--reinforced", str(c.model),
        "--text", str(write(c.tmp / "book.txt", "Holmes said.")), "--output", str(c.tmp / "terms.yaml"), *a)), a[0].split("=")[0])
      for a in [("--top-k=-5",), ("--top-k=0",), ("--top-k=abc",), ("--min-count=0",), (f"--max-length={BIG}",),
                ("--block-words=-1",), ("--max-blocks=0",), ("--dtype=float8",)]],
    ("unlearn-whp-terms missing text", lambda c, mp: c.command(
        whp_terms_main, "--baseline", "a", "--reinforced", "b", "--text", str(c.tmp / "none.txt"), "--output", "o.yaml"),
     "--text="),
    ("unlearn-whp-terms output is a folder", lambda c, mp: c.command(
        whp_terms_main, "--baseline", "a", "--reinforced", "b", "--text", str(write(c.tmp / "t.txt", "x")),
        "--output", str(c.tmp)), "--output="),
    ("unlearn-whp-terms missing arguments", lambda c, mp: c.command(whp_terms_main), "--baseline"),
    ("unlearn-report missing folder", lambda c, mp: c.command(report_main, str(c.tmp / "none")), "none"),
    ("unlearn-report file for folder", lambda c, mp: c.command(report_main, str(write(c.tmp / "f", "x"))),
     "is not a folder"),
    ("unlearn-report output is a file", lambda c, mp: c.command(report_main, str(c.tmp), "--output",
                                                                str(write(c.tmp / "o", "x"))), "--output="),
    ("unlearn-report folder without runs", lambda c, mp: c.command(report_main, str(c.tmp)), str("")),
    ("unlearn-report unknown option", lambda c, mp: c.command(report_main, str(c.tmp), "--colums", "a"), "--colums"),
    ("unlearn-plan negative memory", lambda c, mp: c.command(plan_main, "--gpu-memory=-1"), "--gpu-memory"),
    ("unlearn-plan infinite memory", lambda c, mp: c.command(plan_main, "--gpu-memory=inf"), "--gpu-memory"),
    ("unlearn-plan NaN memory", lambda c, mp: c.command(plan_main, "--gpu-memory=nan"), "--gpu-memory"),
    ("unlearn-plan bad value", lambda c, mp: c.command(plan_main, "optimizer.lr=inf"), "optimizer.lr="),
]


def shrink_model(folder: Path) -> None:
    """The model's embeddings cut to 50 rows: its tokenizer (300 tokens) no longer fits."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(50)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("hostile_model")
    tokenizer.save_pretrained(folder)
    make_tiny_llama(tokenizer).save_pretrained(folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("make", "culprit"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_input_is_refused_with_one_line(make, culprit, tmp_path, data_dir, model_folder, monkeypatch, capsys):
    case = Case(tmp_path, data_dir, model_folder)
    call = make(case, monkeypatch)
    before = snapshot(case.run_dir) if case.run_dir.exists() else {}
    with pytest.raises(SystemExit) as ended:
        call()
    out, err = capsys.readouterr()
    line = ended.value.code
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, (line, err[-2000:])
    assert culprit in line, line
    assert len(line) < 3 * MAX_QUOTED + 400, len(line)  # a long value is quoted cut short
    assert "Traceback" not in out + err and "error:" not in out + err  # the handler's line is the only one
    assert SECRET not in line + out + err
    assert not case.cache.exists() or not any(case.cache.glob("*-*/STAGE_DONE.json"))
    after = snapshot(case.run_dir) if case.run_dir.exists() else {}
    assert {name: data for name, data in after.items() if name != RUN_LOCK} == {
        name: data for name, data in before.items() if name != RUN_LOCK}
    if getattr(case, "held", None) is not None:
        case.held.release()


def test_the_table_covers_every_class():
    assert len(CASES) >= 100
    assert len({case[0] for case in CASES}) == len(CASES)


def test_report_lists_a_corrupt_job_as_failed_and_still_writes(tmp_path, capsys):
    from tests.test_report import fake_job
    fake_job(tmp_path / "method=npo,seed=0", 0, {"unlearned": {"forget_quality": 0.5, "model_utility": 0.6}})
    fake_job(tmp_path / "method=npo,seed=1", 1, {"unlearned": {"forget_quality": 0.4, "model_utility": 0.6}})
    broken = tmp_path / "method=npo,seed=1" / "results.json"
    broken.write_text(broken.read_text()[:40])  # truncated
    report_main([str(tmp_path)])
    page = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.html").exists()
    assert f"{broken} is corrupt: not valid JSON" in json.dumps(page)


def test_corrupt_cache_entries_are_named_discarded_and_rebuilt(tmp_path, caplog):
    from unlearning.stages.cache import DONE_MARKER, StageCache
    cache = StageCache(tmp_path)
    built = []
    folder = cache.get_or_build("base", {"a": 1}, lambda tmp: built.append(tmp))
    (folder / DONE_MARKER).write_text('{"stage": "ba')  # truncated
    with caplog.at_level(logging.WARNING, logger="unlearning.stages.cache"):
        assert cache.get_or_build("base", {"a": 1}, lambda tmp: built.append(tmp)) == folder
    assert len(built) == 2 and json.loads((folder / DONE_MARKER).read_text())["stage"] == "base"
    assert caplog.messages == [f"{folder / DONE_MARKER} is corrupt: {folder} is discarded and built again"]


def test_a_complete_cache_on_a_read_only_filesystem_is_used(tmp_path, monkeypatch):
    import os
    from unlearning.stages import cache as cache_module
    cache = cache_module.StageCache(tmp_path / "cache")
    folder = cache.get_or_build("base", {"a": 1}, lambda tmp: None)
    (tmp_path / "cache" / f"{folder.name}.lock").unlink(missing_ok=True)
    (tmp_path / "cache").chmod(0o555)
    if os.access(tmp_path / "cache", os.W_OK):  # root writes anywhere: the cache answers as a read-only mount would
        monkeypatch.setattr(cache_module, "writable", lambda path: False)
    before = sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    try:
        assert cache.get_or_build("base", {"a": 1}, lambda tmp: pytest.fail("rebuilt")) == folder
        assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == before, "a read-only cache was written to"
    finally:
        (tmp_path / "cache").chmod(0o755)


def test_results_json_is_standard_json_with_null_for_non_finite(tmp_path):
    from unlearning.evaluation.evaluator import Results
    from unlearning.errors import NonFiniteMetric
    results = Results({"unlearned": {"forget_quality": float("nan"), "model_utility": 0.5}}, {}, {}, "")
    path = results.write(tmp_path, compose_config([], run_dir=tmp_path))
    assert json.loads(path.read_text(), parse_constant=pytest.fail)["models"]["unlearned"]["forget_quality"] is None
    with pytest.raises(NonFiniteMetric, match=r"metric unlearned\.forget_quality is not finite"):
        results.refuse_non_finite(path)


def start_unlearn(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, limit: float = 400) -> None:
    start = time.monotonic()
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() - start < limit, "the stage never started"
        time.sleep(0.2)


# (stage, what shows the run is inside it, overrides that keep it there a while)
STAGES = [
    ("finetune_target", lambda run_dir, cache: any(cache.glob("finetune_target-*.partial")), ["finetune.max_steps=-1", "finetune.epochs=2"]),
    ("unlearn", lambda run_dir, cache: (run_dir / "checkpoints" / "last.ckpt").exists(), ["trainer.max_steps=400"]),
    ("eval", lambda run_dir, cache: (run_dir / "unlearned" / "STAGE_DONE.json").exists(),
     ["eval.groups.tofu.max_examples=200"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "inside", "longer"), STAGES, ids=[stage for stage, _, _ in STAGES])
def test_sigterm_in_each_stage_ends_with_one_line_and_resumes(stage, inside, longer, tmp_path):
    """SIGTERM (SLURM's preemption) in a stage: exit status 1, the last line names the signal and the
    stage, no stage folder is taken as finished, and the run finishes when started again (`resume=true`
    once unlearning has a checkpoint)."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    arguments = [f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}", *FAST, "finetune.max_steps=3",
                 "checkpoint_every_n_steps=1", "logger=none", *longer]
    process = start_unlearn(*arguments)
    try:
        wait_for(lambda: inside(run_dir, cache), process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"error: interrupted by SIGTERM during stage {stage}"), err[-2000:]
    assert "Traceback" not in err and not (run_dir / "results.json").exists()
    # before unlearning there is no checkpoint: the same command again reuses the finished stages
    again = [] if stage.startswith("finetune") else ["resume=true"]
    resumed = subprocess.run([sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", *arguments,
                              *again], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["models"]["unlearned"]


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_sweep_with_one_line_naming_the_job(sent, tmp_path, monkeypatch):
    """A signal in a sweep's job ends the sweep: no later job runs (Hydra's launcher would keep the job's
    exception and go on, the Optuna sweeper would record a failed trial), and the one line names the
    signal, the stage and the job."""
    import os
    from unlearning import interrupts, pipeline
    monkeypatch.setattr(interrupts, "_stage", ["start-up"])
    jobs = []

    def run_interrupted(cfg):
        jobs.append(cfg.seed)
        interrupts.enter_stage("unlearn")
        os.kill(os.getpid(), sent)
        time.sleep(5)  # the handler raises here
        pytest.fail("the signal did not interrupt the job")

    monkeypatch.setattr(pipeline, "run", run_interrupted)
    monkeypatch.setattr(sys, "argv", ["unlearn", "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}"])
    with pytest.raises(SystemExit) as ended:
        cli.unlearn()
    assert ended.value.code.startswith(f"error: interrupted by {sent.name} during stage unlearn of sweep job seed=0; ")
    assert "\n" not in ended.value.code and jobs == [0]
    assert signal.getsignal(sent) is signal.default_int_handler or signal.getsignal(sent) == signal.SIG_DFL


@pytest.mark.slow
def test_a_second_launch_of_a_sweep_is_refused_before_any_job(tmp_path):
    """A sweep folder held by another launch (the same `unlearn -m experiment=...` started twice: the
    folder comes from the experiment, not the command line): one line, status 1, no job folder."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    held = FileLock(str(folder / RUN_LOCK), timeout=0)
    held.acquire()
    try:
        second = subprocess.run([sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", "-m",
                                 f"hydra.sweep.dir={folder}", f"paths.cache_dir={tmp_path / 'cache'}", "seed=0,1"],
                                capture_output=True, text=True, timeout=300)
    finally:
        held.release()
    assert second.returncode == 1
    assert (second.stdout + second.stderr).strip().splitlines() == [
        f"error: hydra.sweep.dir={folder} is in use by another sweep (it holds {folder / RUN_LOCK}); "
        "valid: a folder no running sweep writes to"]
    assert sorted(path.name for path in folder.iterdir()) == [RUN_LOCK]
    assert not (tmp_path / "cache").exists()


def test_two_runs_on_one_run_folder_and_on_one_cache(tmp_path):
    """Two runs at once: on one run folder the second is refused with one line and the first finishes
    untouched; on one stage cache (two run folders) both finish, each stage built once."""
    cache = tmp_path / "cache"
    first = start_unlearn(f"hydra.run.dir={tmp_path / 'a'}", f"paths.cache_dir={cache}", *FAST, "finetune.max_steps=3",
                          "logger=none")
    wait_for(lambda: (tmp_path / "a" / ".hydra" / "config.yaml").exists(), first)
    same_folder = subprocess.run([sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()",
                                  f"hydra.run.dir={tmp_path / 'a'}", f"paths.cache_dir={cache}", "seed=1"],
                                 capture_output=True, text=True, timeout=300)
    assert same_folder.returncode == 1
    assert same_folder.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={tmp_path / 'a'} is in use by another run (it holds {tmp_path / 'a' / RUN_LOCK}); "
        "valid: a folder no running run writes to"]
    second = start_unlearn(f"hydra.run.dir={tmp_path / 'b'}", f"paths.cache_dir={cache}", *FAST, "finetune.max_steps=3",
                           "logger=none")
    try:
        for process in (first, second):
            _, err = process.communicate(timeout=900)
            assert process.returncode == 0, err[-3000:]
    finally:
        first.kill()
        second.kill()
    assert "seed: 1" not in (tmp_path / "a" / ".hydra" / "config.yaml").read_text()
    assert not list(cache.glob("*.partial"))
    stages = [folder.name.rsplit("-", 1)[0] for folder in cache.glob("*-*") if (folder / "STAGE_DONE.json").exists()]
    assert sorted(stages) == sorted(set(stages))


def test_the_ranks_of_one_launch_share_the_run_folder_lock(tmp_path, monkeypatch):
    """torchrun and SLURM start every rank with the same command line: rank 0 holds the run folder, the
    others run in it; a second launch's rank 0 is still refused."""
    from unlearning.command_line import lock_run_folder
    arguments = [f"hydra.run.dir={tmp_path}"]
    with lock_run_folder(arguments):
        monkeypatch.setenv("RANK", "1")
        with lock_run_folder(arguments):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ConfigError, match="is in use by another run"):
            with lock_run_folder(arguments):
                pass
