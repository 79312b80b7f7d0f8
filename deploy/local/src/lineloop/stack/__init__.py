"""The embedded real stack on 127.0.0.1: SeaweedFS (S3 API), Tansu (Kafka API), Triton.

`EmbeddedStack(StackConfig.from_env()).up()` starts it under `$LINELOOP_STATE_DIR`;
`lineloop stack up|down|status` and `lineloop up|down` drive it from the command line;
`lineloop.stack.pytest_plugin` gives tests their own stack on free ports.
"""

from lineloop.stack.config import BUCKETS, StackConfig, WeedPorts
from lineloop.stack.embedded import EmbeddedStack, StackError

__all__ = ["BUCKETS", "EmbeddedStack", "StackConfig", "StackError", "WeedPorts"]
