"""Real services on free loopback ports, for the tests, the load test and the soak.

- `processes`: ports, waiting, stopping, logs and memory of child processes.
- `servers`: `redis-server` and SeaweedFS (`weed mini`, an S3 server that checks signatures
  and expiry).
- `settings`: the `MUSICEDIT_*` values that wire a gateway and workers to those services.
- `gateway`: the gateway in its own process, or in a thread of the caller.
- `worker`: `musicedit worker` in its own process.
- `stack`: the whole stack (Redis, S3, gateway, workers) started and stopped together.
- `webhooks`: a receiver that records the webhooks sent to it.
- `browser`: headless Chromium (Debian's) driven by selenium, for the edit page's tests.

Nothing listens on anything but 127.0.0.1. Not part of the service: nothing in `musicedit/`,
`models/`, `service/` or `worker/` imports it.
"""

from local_stack.gateway import GatewayProcess, ThreadedGateway
from local_stack.processes import (
    ServiceNotReady,
    free_port,
    free_ports,
    log_events,
    rss_bytes,
    stop_process,
    wait_until,
)
from local_stack.servers import S3_ACCESS_KEY, S3_SECRET_KEY, RedisServer, S3Server
from local_stack.settings import API_KEYS, SMALL_LIMITS, child_env, stack_values
from local_stack.stack import LocalStack, result_and_codes, wait_terminal
from local_stack.webhooks import WebhookReceiver
from local_stack.worker import WorkerProcess

__all__ = [
    "API_KEYS", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SMALL_LIMITS", "GatewayProcess",
    "LocalStack", "RedisServer", "S3Server", "ServiceNotReady", "ThreadedGateway",
    "WebhookReceiver", "WorkerProcess", "child_env", "free_port", "free_ports", "log_events",
    "result_and_codes", "rss_bytes", "stack_values", "stop_process", "wait_terminal", "wait_until",
]
