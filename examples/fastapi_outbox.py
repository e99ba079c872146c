"""Outbox in a FastAPI app: one request writes a row and its task in one transaction.

The app holds an AsyncConnectionPool; each request takes a connection, opens a transaction,
writes the business row and pushes the task on the same connection. Run it with uvicorn, or
run this file to exercise it with FastAPI's TestClient:

    python examples/fastapi_outbox.py postgresql://user@host/db
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from apalis_client import AsyncPostgresStorage, IdempotencyConflict, Task


class Signup(BaseModel):
    email: str


class SendWelcome(BaseModel):
    to: str


welcome = AsyncPostgresStorage[SendWelcome]("welcome")


def create_app(url: str) -> FastAPI:
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        async with pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS example_fastapi_signups (email text PRIMARY KEY)"
            )
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/signup")
    async def signup(body: Signup) -> dict[str, str]:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO example_fastapi_signups VALUES (%s) ON CONFLICT DO NOTHING",
                (body.email,),
            )
            try:
                task_id = await welcome.push_task_with_conn(
                    conn, Task(args=SendWelcome(to=body.email), idempotency_key=body.email)
                )
            except IdempotencyConflict as exc:
                raise HTTPException(409, f"already signed up: {exc.keys[0]}") from exc
        return {"task_id": task_id}

    return app


def main(url: str) -> None:
    with TestClient(create_app(url)) as client:
        first = client.post("/signup", json={"email": "kim@example.com"})
        print("created", first.status_code, first.json()["task_id"])
        again = client.post("/signup", json={"email": "kim@example.com"})
        print("again", again.status_code, again.json()["detail"])


if __name__ == "__main__":
    main(sys.argv[1])
