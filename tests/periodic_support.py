"""A periodic-service process for the tests: ``python periodic_support.py URL SECONDS``.

Runs ``run_periodic`` for a once-a-second schedule for SECONDS, then prints its stats as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from apalis_client.periodic import Periodic, run_periodic

QUEUE = "ticks"
NAME = "tick"


async def main(url: str, seconds: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    stats = await run_periodic(
        url, [Periodic("* * * * * *", QUEUE, {"tick": True}, name=NAME)], stop=stop
    )
    print(json.dumps(dataclasses.asdict(stats)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
