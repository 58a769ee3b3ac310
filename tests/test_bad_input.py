"""Bad input fails before training with one line naming the file, field or key, and a non-zero exit;
a run that fails leaves nothing half-written in its folder. Config keys: tests/test_bad_config.py."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.conftest import compose_config, make_tiny_llama
from unlearning.data.collate import PromptTemplate, encode_qa
from unlearning.data.text import read_texts
from unlearning.errors import ConfigError, UnlearningError
from unlearning.models import load_pretrained
from unlearning.pipeline import run


@pytest.fixture
def tofu_copy(data_dir, tmp_path) -> Path:
    """The first 20 records of every real TOFU file, in a folder the test may break."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    for file in (data_dir / "tofu").glob("*.jsonl"):
        lines = file.read_text().splitlines()[:20]
        (folder / file.name).write_text("\n".join(lines) + "\n")
    return folder


def run_tofu(folder: Path, tmp_path: Path, *overrides: str) -> None:
    cfg = compose_config(["data=tofu", f"data.path={folder}", "data.split=forget01",
                          f"paths.cache_dir={tmp_path / 'cache'}", *overrides], run_dir=tmp_path / "run")
    run(cfg)


def assert_nothing_written(tmp_path: Path) -> None:
    """A run that failed on bad input leaves an empty run folder (if any) and no stage cache."""
    run_dir = tmp_path / "run"
    assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(run_dir.iterdir())
    assert not (tmp_path / "cache").exists()


def edit_lines(file: Path, change) -> None:
    """Rewrite `file` as `change(its lines)`."""
    lines = file.read_text().splitlines()
    file.write_text("\n".join(change(lines)) + "\n")


def edit_records(file: Path, change) -> None:
    """Rewrite a JSONL `file` after `change(records)` edited its parsed records in place."""
    records = [json.loads(line) for line in file.read_text().splitlines()]
    change(records)
    file.write_text("\n".join(json.dumps(record) for record in records) + "\n")


LATIN1_LINE = b'{"question": "Caf\xe9?", "answer": "Yes."}'  # what an editor saving in Latin-1 writes


def insert_latin1_line(folder: Path) -> None:
    file = folder / "forget01.jsonl"
    first, rest = file.read_bytes().split(b"\n", 1)
    file.write_bytes(b"\n".join([first, LATIN1_LINE, rest]))


def latin1_byte(folder: Path) -> int:
    """Where the Latin-1 e-acute lands: after the (untouched) first line of the copy."""
    return len((folder / "forget01.jsonl").read_bytes().split(b"\n", 1)[0]) + 1 + LATIN1_LINE.index(b"\xe9")


def del_field(records: list[dict], index: int, field: str) -> None:
    del records[index][field]


def set_field(records: list[dict], index: int, field: str, value) -> None:
    records[index][field] = value


# (id, what breaks the copy of the TOFU folder, the exact error line; {folder} and {byte} filled in)
BAD_TOFU_FILES = [
    ("missing file", lambda folder: (folder / "full.jsonl").unlink(),
     r"TOFU file {folder}/full\.jsonl \(or \.json\) does not exist"),
    ("empty forget split", lambda folder: (folder / "forget01.jsonl").write_text(""),
     r"tofu-forget01: split 'forget' is empty"),
    ("file of blank lines", lambda folder: (folder / "full.jsonl").write_text("\n  \n\n"),
     r"tofu-forget01: split 'full' is empty"),
    ("not UTF-8", insert_latin1_line,
     r"TOFU file {folder}/forget01\.jsonl is not valid UTF-8 \(byte {byte}\)"),
    # the last line cut in the middle, as a copy interrupted by a full disk leaves it
    ("truncated line", lambda folder: edit_lines(folder / "forget01.jsonl",
                                                 lambda lines: [*lines[:-1], lines[-1][: len(lines[-1]) // 2]]),
     r"TOFU file {folder}/forget01\.jsonl line 20 is not valid JSON"),
    ("line not an object", lambda folder: edit_lines(folder / "holdout01.jsonl",
                                                     lambda lines: [lines[0], '["question", "answer"]', *lines[2:]]),
     r"TOFU file {folder}/holdout01\.jsonl line 2 is not a JSON object"),
    ("missing field", lambda folder: edit_records(folder / "forget01.jsonl",
                                                  lambda records: del_field(records, 3, "answer")),
     r"tofu-forget01: split 'forget' record 3 has no field 'answer'"),
    ("field of the wrong type", lambda folder: edit_records(folder / "forget01.jsonl",
                                                            lambda records: set_field(records, 2, "answer", 1956)),
     r"tofu-forget01: split 'forget' record 2 field 'answer' is not text"),
    ("perturbed answers not a list", lambda folder: edit_records(
        folder / "forget01_perturbed.jsonl",
        lambda records: set_field(records, 0, "perturbed_answer", records[0]["perturbed_answer"][0])),
     r"tofu-forget01: split 'forget_perturbed' record 0 field 'perturbed_answer' is not a list of text"),
    # TOFU has no ids: a repeated question-answer pair (a file concatenated twice, say) is the duplicate
    ("duplicate record", lambda folder: edit_lines(folder / "forget01.jsonl", lambda lines: [*lines, lines[3]]),
     r"tofu-forget01: split 'forget' record 20 repeats record 3 \(same question and answer\)"),
]


@pytest.mark.parametrize(("breaks", "message"), [case[1:] for case in BAD_TOFU_FILES],
                         ids=[case[0] for case in BAD_TOFU_FILES])
def test_bad_tofu_file_fails_with_one_line_before_anything_is_written(breaks, message, tofu_copy, tmp_path):
    byte = latin1_byte(tofu_copy)  # before the copy is broken
    breaks(tofu_copy)
    expected = message.format(folder=re.escape(str(tofu_copy)), byte=byte)
    with pytest.raises(UnlearningError, match=f"^{expected}$"):
        run_tofu(tofu_copy, tmp_path)
    assert_nothing_written(tmp_path)


def test_split_that_does_not_exist(tofu_copy, tmp_path):
    with pytest.raises(UnlearningError, match=r"^data\.split='forget07' is not allowed; valid: 'forget01', 'forget05', "
                                              r"'forget10'$"):
        run_tofu(tofu_copy, tmp_path, "data.split=forget07")
    assert_nothing_written(tmp_path)


def test_text_corpus_that_is_not_utf8(tmp_path):
    book = tmp_path / "book.txt"
    before = "Chapter 1\n\nThe caf".encode()
    book.write_bytes(before + b"\xe9 was closed.")  # Latin-1's e-acute
    with pytest.raises(UnlearningError, match=rf"^text corpus {re.escape(str(book))} is not valid UTF-8 "
                                              rf"\(byte {len(before)}\)$"):
        read_texts(book)


def save_model_folder(folder: Path, tokenizer, model) -> Path:
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)  # safetensors
    return folder


def without_special_tokens(tokenizer, **kept: str) -> PreTrainedTokenizerFast:
    """The fixture's tokenizer declaring only the special tokens in `kept` (Llama-2's has no pad token)."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **kept)


def test_tokenizer_without_pad_token_pads_with_eos_and_says_so(tokenizer, tmp_path, caplog):
    bare = without_special_tokens(tokenizer, bos_token="<s>", eos_token="</s>")
    folder = save_model_folder(tmp_path / "no_pad", bare, make_tiny_llama(tokenizer))
    with caplog.at_level(logging.WARNING, logger="unlearning.models"):
        _, loaded = load_pretrained(folder, torch.float32)
    assert loaded.pad_token == "</s>"
    assert caplog.messages == [f"the tokenizer of {folder} has no pad token: padding with its EOS token '</s>'"]


def test_tokenizer_without_pad_or_eos_token(tokenizer, tmp_path):
    folder = save_model_folder(tmp_path / "no_pad_no_eos", without_special_tokens(tokenizer, bos_token="<s>"),
                               make_tiny_llama(tokenizer))
    with pytest.raises(ConfigError, match=rf"^the tokenizer of {re.escape(str(folder))} has neither a pad nor an EOS "
                                          r"token; valid: a tokenizer with either$"):
        load_pretrained(folder, torch.float32)


def test_sequence_longer_than_the_context_is_truncated_with_a_warning(tokenizer, tmp_path, caplog):
    """max_length 300 on a model with 256 positions: cut at 256 (positions past the context were never
    trained), and the warning names both numbers once."""
    _, loaded = load_pretrained(save_model_folder(tmp_path / "model", tokenizer, make_tiny_llama(tokenizer)),
                                torch.float32)
    assert loaded.model_max_length == 256
    with caplog.at_level(logging.WARNING, logger="unlearning.data.collate"):
        encoded = [encode_qa(loaded, PromptTemplate(), "Who?", "word " * 400, max_length=300) for _ in range(2)]
    assert [len(e["input_ids"]) for e in encoded] == [256, 256]
    assert caplog.messages == ["max_length=300 exceeds the model's context of 256 tokens (max_position_embeddings): "
                               "sequences are truncated at 256"]


def test_model_folder_with_pickled_weights_is_refused(tokenizer, tmp_path):
    """A pytorch_model.bin is a pickle (it can run code when loaded): only safetensors are read."""
    folder = tmp_path / "pickled"
    model = make_tiny_llama(tokenizer)
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=rf"^model folder {re.escape(str(folder))} has no \.safetensors weights; "
                                          r"valid: safetensors only \(pickled \*\.bin / \*\.pt checkpoints can run "
                                          r"code when loaded: convert them where you trust them\)$"):
        load_pretrained(folder, torch.float32)


def test_model_folder_without_tokenizer(data_dir, tofu_copy, tmp_path):
    weights_only = tmp_path / "no_tokenizer"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(data_dir / "models" / "stories260K" / name, weights_only / name)
    with pytest.raises(UnlearningError, match=r"model folder .*no_tokenizer has no tokenizer"):
        run_tofu(tofu_copy, tmp_path, "model=local", f"model.name_or_path={weights_only}")


def test_cli_prints_one_line_and_exits_non_zero(tmp_path):
    """Through the real entry point: exit status 1 and the message as the last line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", "data.split=forget07",
         f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "forget07" in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
