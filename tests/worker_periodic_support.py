"""A worker process with a periodic task: ``python worker_periodic_support.py URL SECONDS``.

Runs a Worker on ``ticks`` with ``periodic=[a once-a-second schedule]`` for SECONDS, then
prints how many ticks its handler ran, as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from apalis_client.periodic import Periodic
from apalis_client.worker import Worker, WorkerConfig


def main(url: str, seconds: float) -> None:
    ran: list[Any] = []
    worker = Worker(
        "ticks",
        ran.append,
        conninfo=url,
        config=WorkerConfig(poll_interval=0.05, max_poll_interval=0.5),
        periodic=[Periodic("* * * * * *", "ticks", {"tick": True}, name="tick")],
    )
    threading.Timer(seconds, worker.stop).start()
    stats = worker.run()
    print(json.dumps({"ran": len(ran), "done": stats.done}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
