"""The session `stack` fixture: every server answers at the addresses it reports, and
`env()` points a subprocess at them."""

import subprocess
import sys

import pytest

from lineloop.stack import probes


def test_servers_answer_at_reported_addresses(stack):
    assert probes.s3_ready(stack.s3_endpoint)
    assert probes.kafka_ready(stack.kafka_bootstrap)
    assert probes.triton_ready(stack.triton_http)
    assert stack.triton_repository == f"s3://{stack.s3_endpoint}/lineloop-triton"
    assert str(stack.state_dir) in " ".join(s.log for s in stack.status())
    assert all(s.running and s.healthy for s in stack.status())


def test_env_reaches_a_subprocess(stack):
    script = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('LINELOOP_')}))"
    out = subprocess.run([sys.executable, "-c", script], env=stack.env(), capture_output=True, text=True, check=True)
    seen = __import__("json").loads(out.stdout)
    assert seen["LINELOOP_KAFKA_BOOTSTRAP"] == stack.kafka_bootstrap
    assert seen["LINELOOP_S3_ENDPOINT"] == stack.s3_endpoint
    assert seen["LINELOOP_S3_ACCESS_KEY"] == stack.s3_access_key
    assert seen["LINELOOP_S3_SECRET_KEY"] == stack.s3_secret_key
    assert seen["LINELOOP_TRITON_GRPC"] == stack.triton_grpc
    assert seen["LINELOOP_STATE_DIR"] == str(stack.state_dir)


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_a_cuda_device():
    torch = pytest.importorskip("torch", reason="torch is needed to talk to CUDA")
    assert torch.cuda.device_count() > 0
    assert torch.cuda.get_device_name(0)
