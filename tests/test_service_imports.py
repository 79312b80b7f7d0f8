"""Start-up cost: no service imports torch to start; training and compiler load it when a run or
build first needs it (issue 14: health within seconds of the process start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from lineloop.contracts.catalogue import CATALOGUE

HEAVY = ("torch", "torchvision")


def test_no_service_imports_torch_to_start(tmp_path):
    # One process imports all six entry modules and wires the compiler (its build worker checks at
    # start which TensorRT targets this host can build): none of it may pull torch in. Then the
    # trainer, which needs torch: the probe must see it there, or it could not see it anywhere.
    probe = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    code = ("import json, sys\n" + "".join(f"import lineloop.{name}.main\n" for name in CATALOGUE.services)
            + "lineloop.compiler.main.build_service()\n"
            + probe + "import lineloop.training.trainer\n" + probe)
    env = {**os.environ, "LINELOOP_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    at_start, with_trainer = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert at_start == [], "a service's entry module imports torch"
    assert "torch" in with_trainer
