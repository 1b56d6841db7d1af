"""The README's quick start and library example run as written (with fewer sampling steps)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.mark.slow
def test_quick_start_command_restores_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (line,) = [
        line for block in _code_blocks("bash") for line in block.splitlines()
        if line.startswith("./dev ddnm restore")
    ]  # fmt: skip
    argv = shlex.split(line)[2:]
    monkeypatch.chdir(REPO)
    output = tmp_path / "restored.png"
    argv[argv.index("-o") + 1] = str(output)
    assert main([*argv, "--steps", "5"]) == 0
    assert output.is_file()
    printed = capsys.readouterr().out
    assert "consistency" in printed and "PSNR" in printed


@pytest.mark.slow
def test_library_example_runs() -> None:
    (example,) = [block for block in _code_blocks("python") if "sample(" in block]
    exec(compile(example.replace("steps=50", "steps=5"), "README.md", "exec"), {})
