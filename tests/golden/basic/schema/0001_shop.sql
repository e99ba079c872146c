CREATE SCHEMA shop;

CREATE TABLE shop.items (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price numeric(10, 2) NOT NULL,
    tags text[],
    attrs jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    available_on date,
    ref uuid,
    ratio float8,
    active boolean NOT NULL DEFAULT true,
    picture bytea
);

CREATE TYPE shop.colour AS ENUM ('red', 'green');
CREATE DOMAIN shop.sku AS text CHECK (VALUE <> '');

CREATE TABLE shop.variants (
    item_id bigint NOT NULL REFERENCES shop.items (id),
    colour shop.colour NOT NULL,
    sku shop.sku NOT NULL,
    PRIMARY KEY (item_id, colour)
);
