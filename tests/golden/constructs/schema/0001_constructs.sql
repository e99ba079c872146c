-- One schema for every construct case; each query file exercises one construct.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS ltree;

CREATE TYPE mood AS ENUM ('happy', 'sad', 'so-so');
COMMENT ON TYPE mood IS 'How someone feels.';

CREATE TYPE pair AS (a integer, b text);

CREATE TABLE authors (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    bio text,
    meta jsonb
);

CREATE TABLE books (
    id bigserial PRIMARY KEY,
    author_id bigint NOT NULL REFERENCES authors (id),
    title text NOT NULL,
    body text NOT NULL DEFAULT ''
);

COMMENT ON TABLE books IS 'Books, one row per edition. A comment longer than a line is re-flowed into the docstring, and one that ends in a quote (like "this") stays valid Python: "';

CREATE TABLE people (
    id integer PRIMARY KEY,
    mood mood NOT NULL,
    moods mood[] NOT NULL DEFAULT '{}',
    past mood[]
);

CREATE TABLE kinds (
    id integer PRIMARY KEY,
    addr inet,
    net cidr,
    span interval,
    at time,
    at_tz timetz,
    ids int4range,
    period tstzrange,
    attrs hstore,
    path ltree,
    flags bit(4),
    doc xml,
    pair pair,
    data json
);

-- A table no statement reads may hold a type with no mapping.
CREATE TABLE unused (spot point);

-- Names that are not Python names, or collide with Python and pydantic ones.
CREATE TABLE "x-venues" (
    id integer PRIMARY KEY,
    "from" text NOT NULL,
    model_config text,
    json text,
    rows integer,
    "Name" text,
    name text
);

CREATE TABLE campus (id integer PRIMARY KEY, title text NOT NULL);
CREATE TABLE author (id integer PRIMARY KEY);
CREATE TABLE users (id integer PRIMARY KEY, name text NOT NULL);
