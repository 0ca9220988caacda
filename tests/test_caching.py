"""DVC reruns what changed, and only that: a stage depends on the code that computes its outputs and on the values
it reads (params.resolved.yaml), not on shared plumbing.

A project's stages are committed without running them (`dvc commit` over placeholder outputs: only the lock's
hashes matter here), then the project's own copy of the code is edited and `dvc repro resolve` (what `dvc repro`
runs first) rewrites the resolved values; `dvc status` then names exactly the stages whose inputs changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _project import init_project, sh

PARAMS = {"experiment": "cache", "seed": 0,
          "rounds": {"r1": {"algo": "dpo", "prev": "sft"}, "r2": {"algo": "dpo", "prev": "r1"}}}


def _status(root: Path) -> set[str]:
    out = sh(["dvc", "status", "--json"], root).stdout
    return set(json.loads(out or "{}"))


@pytest.fixture
def committed(tmp_path):
    root = init_project(tmp_path / "p", PARAMS)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = root / (entry if isinstance(entry, str) else next(iter(entry)))
            if path.exists():
                continue
            if path.suffix:  # a file output
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:  # a directory output (models, policies, the raw corpus)
                path.mkdir(parents=True)
                (path / "placeholder").write_text("x")
    sh(["dvc", "commit", "--force", "-q"], root)
    assert _status(root) == set()
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


def test_a_docstring_or_help_text_in_the_config_module_reruns_nothing(committed):
    config = committed / "alignloop/core/config.py"
    _edit(config, 'description="KL strength of DPO', 'description="The KL strength of DPO')  # a help text
    _edit(config, '"""When a round\'s candidate becomes champion.', '"""When a candidate becomes champion.')  # a docstring
    assert _status(committed) == {"resolve"}  # its code changed; its output will not
    sh(["dvc", "repro", "resolve"], committed)
    assert _status(committed) == set()


def test_a_changed_default_reruns_exactly_the_stages_that_read_it(committed):
    _edit(committed / "alignloop/core/config.py", "beta: float = Field(0.1,", "beta: float = Field(0.15,")
    sh(["dvc", "repro", "resolve"], committed)
    assert _status(committed) == {"dpo_r1", "dpo_r2"}


def test_a_line_in_one_stage_reruns_that_stage_only(committed):
    _edit(committed / "alignloop/pipeline/stages/pairs.py", "def run(params, args) -> None:",
          "def run(params, args) -> None:  # edited")
    assert _status(committed) == {"pairs_r1", "pairs_r2"}


def test_an_edited_shared_helper_reruns_nothing_but_its_users(committed):
    """The entry point and the file helpers are plumbing; the registry code is only register's."""
    _edit(committed / "alignloop/pipeline/entry.py", "def stage_main(", "# edited\ndef stage_main(")
    assert _status(committed) == set()
    _edit(committed / "alignloop/pipeline/registry.py", "from __future__ import annotations",
          "from __future__ import annotations  # edited")
    assert _status(committed) == {"register_r1", "register_r2"}
