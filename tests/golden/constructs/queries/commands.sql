-- The commands beyond :one/:many/:exec/:execrows.

-- name: DeleteBooksOf :execresult
DELETE FROM books WHERE author_id = $1;

-- name: CopyAuthors :copyfrom
INSERT INTO authors (name, bio, meta) VALUES ($1, $2, $3);

-- name: BatchRename :batchexec
UPDATE authors SET name = $2 WHERE id = $1;

-- name: BatchGet :batchone
SELECT * FROM authors WHERE id = $1;

-- name: BatchBooks :batchmany
SELECT id, title FROM books WHERE author_id = $1 ORDER BY id;
