"""`lineloop up` with LINELOOP_STACK_AUTH=required: the stack issues its own tokens and requires them."""

import json

import pytest

from .conftest import run


@pytest.mark.slow  # boots every service (training imports torch)
def test_up_with_auth_issues_tokens_and_refuses_calls_without_one(cli_env):
    config, env = cli_env
    env = {**env, "LINELOOP_STACK_AUTH": "required"}
    env.pop("LINELOOP_TOKEN", None)
    env.pop("LINELOOP_TOKEN_FILE", None)
    up = run(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    tokens = config.state_dir / "auth" / "tokens"
    assert f"export LINELOOP_TOKEN_FILE={tokens / 'admin.jwt'}" in " ".join(up.stdout.split())
    registry = ["--target", f"127.0.0.1:{env['LINELOOP_REGISTRY_GRPC_PORT']}"]

    anonymous = run(env, "models", "list", "--json", *registry)
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
    assert "set LINELOOP_TOKEN or LINELOOP_TOKEN_FILE" in anonymous.stderr
    admin = run({**env, "LINELOOP_TOKEN_FILE": str(tokens / "admin.jwt")}, "models", "list", "--json", *registry)
    assert admin.returncode == 0, admin.stderr
    assert json.loads(admin.stdout) == []
    # the services' own token (what training and the registry send each other) is accepted for reads
    service = run({**env, "LINELOOP_TOKEN_FILE": str(config.state_dir / "auth" / "service" / "token")},
                  "models", "list", "--json", *registry)
    assert service.returncode == 0, service.stderr
    annotator = run({**env, "LINELOOP_TOKEN_FILE": str(tokens / "annotator.jwt")},
                    "models", "rollback", "apples", *registry)
    assert annotator.returncode == 1 and "PERMISSION_DENIED" in annotator.stderr and "release-manager" in annotator.stderr
    down = run(env, "down")
    assert down.returncode == 0, down.stderr
