-- SQL names that are not Python names, or would collide, become safe ones.

-- name: AddVenue :exec
INSERT INTO "x-venues" (id, "from", model_config, json, rows, "Name", name)
VALUES (@id, @from, @model_config, @json, @rows, @upper, @lower);

-- name: GetVenue :one
SELECT * FROM "x-venues" WHERE id = @id;

-- name: Signature :one
-- Parameters named like the generated signature's own names.
SELECT @conn::text AS conn, @params::text AS params;

-- name: Lookalike :one
-- Same names as users' columns, but typed differently and nullable: its own row.
SELECT 1::int AS id, NULL::text AS name;

-- name: User :one
SELECT * FROM users WHERE id = $1;

-- name: Any :many
SELECT * FROM campus ORDER BY id;

-- name: Singles :many
SELECT * FROM author ORDER BY id;
