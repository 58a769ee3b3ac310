"""Every install path carries the config folder: `pip install .` (a wheel, conf/ inside it as
unlearning/conf/) and `pip install -e .` (conf/ read in the checkout), each into a fresh virtual
environment, then `unlearn` from an unrelated folder. No network: the build reuses this environment's
setuptools and the new environment reuses its installed dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The smallest whole protocol of the default experiment (synthetic data, the tiny Llama built here).
TINY_RUN = ["finetune.max_steps=1", "trainer.max_steps=1", "eval.groups.tofu.max_examples=4",
            "eval.groups.tofu.max_new_tokens=8", "~lm_eval", "logger=none"]


def test_pyproject_lists_every_package_and_maps_conf():
    """Packages are listed, not discovered (discovery cannot map conf/ into unlearning): a new folder of
    Python files under unlearning/ must be added to [tool.setuptools] packages or the wheel lacks it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "unlearning").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert set(setuptools["packages"]) == folders | {"unlearning.conf"}
    assert setuptools["package-dir"] == {"unlearning.conf": "conf"}


def run(command: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_installed_unlearn_finds_its_config_folder(editable, tmp_path):
    # A checkout of the project as it is now, so that the build's files (build/, *.egg-info) stay out of it.
    source = (tmp_path / "checkout").resolve()
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".cache", "outputs", "multirun",
        "wandb", "lightning_logs"))
    # A fresh environment that sees this one's packages through a .pth line: a folder added that way is
    # not a site folder, so its .pth files (this environment's editable `unlearning`) are not run.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=os.environ.copy())
    python = venv / "bin" / "python"
    new_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path, env=os.environ.copy()).stdout.strip()).resolve()
    reused = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (new_site / "_reuse_dependencies.pth").write_text("".join(f"{path}\n" for path in reused))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", UNLEARNING_CACHE_DIR=str(tmp_path / "cache"),
               UNLEARNING_DATA_DIR=os.environ.get("UNLEARNING_DATA_DIR", str(REPO.parent / "shared" / "data")),
               WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert run([python, "-c", "import importlib.util; print(importlib.util.find_spec('unlearning'))"],
               cwd=elsewhere, env=env).stdout.strip() == "None"  # nothing of this checkout leaks in

    # pip from the reused packages; --ignore-installed: this environment's `unlearning` is left alone.
    install = run([python, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", "--ignore-installed",
                   *(["-e"] if editable else []), source], cwd=elsewhere, env=env)
    output = install.stdout + install.stderr
    assert "Successfully installed unlearning" in output
    assert "deprecat" not in output.lower(), [line for line in output.splitlines() if "eprecat" in line]

    where = run([python, "-c", "import unlearning, unlearning.cli as cli, unlearning.data.anchored_terms as terms; "
                               "print(unlearning.__file__, cli.CONFIG_DIR, terms.SHIPPED_DIR, sep='\\n')"],
                cwd=elsewhere, env=env).stdout.split()
    package, config_dir, shipped = (Path(path).resolve() for path in where)
    if editable:
        assert package == source / "unlearning" / "__init__.py" and config_dir == source / "conf"
    else:
        assert package == new_site / "unlearning" / "__init__.py"
        assert config_dir == new_site / "unlearning" / "conf"
        wanted = sorted(path.relative_to(source / "conf") for path in (source / "conf").rglob("*.yaml"))
        assert sorted(path.relative_to(config_dir) for path in config_dir.rglob("*.yaml")) == wanted
    assert shipped == config_dir / "anchored_terms" and any(shipped.glob("*.yaml"))

    shown = run([venv / "bin" / "unlearn", "--cfg", "job"], cwd=elsewhere, env=env).stdout
    assert "objective_metric: forget_quality" in shown and "finetune:" in shown
    assert "model:" in run([venv / "bin" / "unlearn-eval", "--cfg", "job"], cwd=elsewhere, env=env).stdout

    done = run([venv / "bin" / "unlearn", f"hydra.run.dir={tmp_path / 'run'}", *TINY_RUN], cwd=elsewhere, env=env,
               timeout=900)
    assert "results:" in done.stdout and (tmp_path / "run" / "results.json").is_file()
    assert (tmp_path / "run" / "unlearned" / "model.safetensors").is_file()
