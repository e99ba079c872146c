"""Outbox with a SQLAlchemy 2 Session: the task commits or rolls back with the ORM's writes.

The push runs on the Session's own psycopg connection, so it joins the ORM transaction.

    python examples/sqlalchemy_outbox.py postgresql://user@host/db
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg
from pydantic import BaseModel
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from apalis_client import IdempotencyConflict, PostgresStorage, Task


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "example_sa_users"
    email: Mapped[str] = mapped_column(String, primary_key=True)


class WelcomeEmail(BaseModel):
    to: str


emails = PostgresStorage[WelcomeEmail]("welcome-emails")


def psycopg_connection(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under the Session's current transaction."""
    conn = session.connection().connection.driver_connection
    if not isinstance(conn, psycopg.Connection):
        raise TypeError("use the postgresql+psycopg:// dialect")
    return conn


def sign_up(session: Session, email: str) -> str:
    session.add(User(email=email))
    session.flush()
    task = Task(args=WelcomeEmail(to=email), idempotency_key=f"welcome:{email}")
    return emails.push_task_with_conn(psycopg_connection(session), task)


def main(url: str) -> None:
    # Any libpq URL or conninfo: SQLAlchemy's psycopg dialect, connections made by psycopg.
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        with session.begin():  # commits both the user and the task
            print("committed", sign_up(session, "ada@example.com"))
        session.begin()
        sign_up(session, "bob@example.com")
        session.rollback()  # neither the user nor the task stays
        print("rolled back bob")
        with session.begin():
            session.add(User(email="audit@example.com"))
            try:  # same key again: the push writes nothing, the session goes on
                emails.push_task_with_conn(
                    psycopg_connection(session),
                    Task(
                        args=WelcomeEmail(to="ada@example.com"),
                        idempotency_key="welcome:ada@example.com",
                    ),
                )
            except IdempotencyConflict as exc:
                print("conflict", exc.keys, "held by", exc.existing["welcome:ada@example.com"])
        print("users", session.scalars(select(User.email).order_by(User.email)).all())
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
