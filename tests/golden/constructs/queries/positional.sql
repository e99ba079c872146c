-- $N parameters, named as sqlc names them from what surrounds them.

-- name: GetAuthor :one
SELECT * FROM authors WHERE id = $1;

-- name: CreateAuthor :one
INSERT INTO authors (name, bio) VALUES ($1, $2) RETURNING *;

-- name: RenameAuthor :execrows
UPDATE authors SET name = $2 WHERE id = $1;

-- name: PageAuthors :many
SELECT * FROM authors ORDER BY id LIMIT $1 OFFSET $2;

-- name: AuthorsIn :many
SELECT * FROM authors WHERE id = ANY($1::bigint[]) ORDER BY id;

-- name: AuthorOrBook :many
-- Two different parameters compared with columns of one name: id, then id_2.
SELECT a.id FROM authors AS a JOIN books AS b ON b.author_id = a.id
 WHERE a.id = $1 OR b.id = $2 ORDER BY a.id;

-- name: AuthorsAfter :many
SELECT id FROM authors WHERE $1 < id ORDER BY id;
