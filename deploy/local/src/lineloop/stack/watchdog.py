"""The embedded stack's watchdog: `python -m lineloop.stack.watchdog`, started by `lineloop up`
and `lineloop stack up`, stopped first by `down`.

Every few seconds it restarts a server that died and the object store when it runs but refuses
writes (`EmbeddedStack.heal`): what a container restart policy and a liveness probe do for the
same servers in compose and Kubernetes. The stack's addresses come from the environment
(`StackConfig.from_env`), as for every `lineloop stack` command.
"""

from __future__ import annotations

import logging
import time

from lineloop.stack.config import StackConfig
from lineloop.stack.embedded import EmbeddedStack

INTERVAL_S = 5.0
log = logging.getLogger("lineloop.stack.watchdog")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stack = EmbeddedStack(StackConfig.from_env(), watchdog=True)
    log.info("watching the stack in %s every %.0f s", stack.state_dir, INTERVAL_S)
    while True:
        time.sleep(INTERVAL_S)
        try:
            stack.heal(report=log.warning)
        except Exception:  # a failed restart is retried at the next pass
            log.exception("watchdog pass failed")


if __name__ == "__main__":
    main()
