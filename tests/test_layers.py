"""The layers import one way: ddnm <- pipeline <- {worker, cli}; contract <- everything above
ddnm; the service never touches torch. Each import is checked in a fresh interpreter, so that
nothing a test imported earlier hides a leak."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

SERVICE_LAYERS = ("pydantic", "contract", "pipeline", "service", "fastapi", "celery", "redis")


def imported_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after running `statement` in a fresh interpreter."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


@pytest.mark.parametrize(
    "module",
    ["ddnm.sampling", "ddnm.operators", "ddnm.models", "ddnm.results", "ddnm.schedules"],
)
def test_the_library_imports_no_service_layer(module: str) -> None:
    loaded = imported_after(f"import {module}; import ddnm.models.adapters, ddnm.models.loading")
    assert "torch" in loaded
    assert loaded.isdisjoint(SERVICE_LAYERS), sorted(loaded & set(SERVICE_LAYERS))


def test_the_service_imports_no_torch_library_or_worker() -> None:
    loaded = imported_after(
        "import service.main; from contract.settings import Settings; "
        "service.main.create_app(Settings())"
    )
    assert "fastapi" in loaded
    assert loaded.isdisjoint({"torch", "ddnm", "pipeline", "worker", "cli"}), sorted(
        loaded & {"torch", "ddnm", "pipeline", "worker", "cli"}
    )


def test_the_pipeline_imports_no_service_or_worker() -> None:
    loaded = imported_after("import pipeline.job, pipeline.models, pipeline.tasks")
    assert loaded.isdisjoint({"service", "worker", "cli", "fastapi", "celery"})


def long_functions(package: str, limit: int) -> list[str]:
    """Functions in `package` longer than `limit` lines (decorators and docstring included)."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length})")
    return found


@pytest.mark.parametrize("package", ["pipeline", "cli"])
def test_no_function_over_50_lines(package: str) -> None:
    assert long_functions(package, 50) == []
