-- A file-level comment before the first header is allowed.

-- name: get_item :one
-- One item by id; returns the table model.
SELECT * FROM shop.items WHERE id = @id;

-- name: list_items :many
-- Items cheaper than @max_price, among @ids, newest first.
SELECT id, name, price, tags, created_at
  FROM shop.items
 WHERE price <= @max_price AND id = ANY(@ids::int8[])
 ORDER BY created_at DESC;

-- name: price_summary :one
-- Aggregates are expressions: nullable unless overridden.
-- not-null: n
SELECT count(*) AS n, max(price) AS top, avg(ratio) AS mean FROM shop.items;

-- name: add_item :exec
-- Insert one item; the tags elements and the picture may be NULL.
-- nullable: picture, tags[]
-- prepare: server
INSERT INTO shop.items (id, name, price, tags, attrs, available_on, ref, picture)
VALUES (@id, @name, @price, @tags, @attrs, @available_on, @ref, @picture);

-- name: deactivate_older_than :execrows
-- Deactivate items created before @cutoff; returns how many.
UPDATE shop.items SET active = false WHERE created_at < @cutoff AND active;

-- name: item_name :one
-- A NOT NULL column read through a LEFT JOIN can still be NULL: say so.
-- nullable-column: name
SELECT v.sku, i.name
  FROM shop.variants AS v
  LEFT JOIN shop.items AS i ON i.id = v.item_id
 WHERE v.item_id = @item_id AND v.colour = @colour::shop.colour;

-- name: percent_off :many
-- A literal percent sign survives placeholder conversion: 10% off.
SELECT id, price * 0.9 AS discounted, '10%' AS label FROM shop.items WHERE name LIKE @pattern;
