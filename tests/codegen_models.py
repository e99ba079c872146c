"""A pydantic model the codegen golden case reads a jsonb column as (``-- type:``)."""

from __future__ import annotations

from pydantic import BaseModel


class AuthorMeta(BaseModel):
    """What ``authors.meta`` holds."""

    twitter: str | None = None
    tags: list[str] = []
