"""Start-up cost: no service imports torch to start; training and compiler load it when a run or
build first needs it (issue 14: health within seconds of the process start)."""

from __future__ import annotations

import json
import subprocess
import sys

from lineloop.contracts.catalogue import CATALOGUE

HEAVY = ("torch", "torchvision")


def test_no_service_imports_torch_to_start():
    # One process imports all six entry modules: none of them may pull torch in.
    code = (
        "import json, sys\n"
        + "".join(f"import lineloop.{name}.main\n" for name in CATALOGUE.services)
        + f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], "a service's entry module imports torch"


def test_the_check_sees_torch_when_a_module_imports_it():
    # The same probe after importing the trainer (which needs torch) must report it.
    code = f"import json, sys\nimport lineloop.training.trainer\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch" in json.loads(done.stdout.strip().splitlines()[-1])
