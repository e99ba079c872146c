-- Enums, enum arrays, more types, json NULL, and a jsonb column read as a pydantic model.

-- name: AddPerson :exec
INSERT INTO people (id, mood, moods, past) VALUES (@id, @mood, @moods, @past);

-- name: GetPerson :one
SELECT * FROM people WHERE id = @id;

-- name: AddKinds :exec
INSERT INTO kinds (id, addr, net, span, at, at_tz, ids, period, attrs, path, flags, doc,
                   pair, data)
VALUES (@id, @addr, @net, @span, @at, @at_tz, @ids, @period,
        @attrs, @path, @flags, @doc, @pair, @data);

-- name: GetKinds :one
SELECT * FROM kinds WHERE id = @id;

-- name: DataIsNull :one
SELECT (data IS NULL) AS sql_null FROM kinds WHERE id = @id;

-- name: SetMeta :exec
-- type: meta = codegen_models.AuthorMeta
UPDATE authors SET meta = @meta WHERE id = @id;

-- name: GetMeta :one
-- type: meta = codegen_models.AuthorMeta
SELECT id, meta FROM authors WHERE id = @id;
