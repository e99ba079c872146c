"""Outbox with a SQLAlchemy 2 AsyncSession on psycopg: the push joins the ORM transaction.

python examples/sqlalchemy_async_outbox.py postgresql://user@host/db
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import psycopg
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from apalis_client import AsyncPostgresStorage


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_sa_async_orders"
    ref: Mapped[str] = mapped_column(String, primary_key=True)


invoices = AsyncPostgresStorage[dict[str, str]]("invoices")


async def psycopg_connection(session: AsyncSession) -> psycopg.AsyncConnection[Any]:
    """The psycopg AsyncConnection under the AsyncSession's current transaction."""
    raw = await (await session.connection()).get_raw_connection()
    conn = raw.driver_connection
    if not isinstance(conn, psycopg.AsyncConnection):
        raise TypeError("use the postgresql+psycopg:// dialect")
    return conn


async def place_order(session: AsyncSession, ref: str) -> str:
    session.add(Order(ref=ref))
    await session.flush()
    return await invoices.push_with_conn(await psycopg_connection(session), {"order": ref})


async def main(url: str) -> None:
    # Any libpq URL or conninfo: SQLAlchemy's psycopg dialect, connections made by psycopg.
    engine = create_async_engine(
        "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(url)
    )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        async with session.begin():
            print("committed", await place_order(session, "A-1"))
        await session.begin()
        await place_order(session, "B-2")
        await session.rollback()
        print("rolled back B-2")
        print("orders", (await session.scalars(select(Order.ref))).all())
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
