-- sqlc.arg, sqlc.narg, sqlc.slice, sqlc.embed, block headers, and statements sqlc skips.

-- name: ByName :many
SELECT id FROM authors WHERE name = sqlc.arg(author_name) ORDER BY id;

-- name: SetBio :execrows
UPDATE authors SET bio = sqlc.narg('bio') WHERE id = sqlc.arg('id');

-- name: SomeAuthors :many
SELECT id FROM authors WHERE id IN (sqlc.slice(ids)) ORDER BY id;

-- name: BooksWithAuthors :many
SELECT sqlc.embed(books), sqlc.embed(authors), books.title AS shown
  FROM books JOIN authors ON authors.id = books.author_id
 ORDER BY books.id;

/* name: CountBooks :one */
SELECT count(*)::int AS n FROM books;

-- name: Search :many
-- A text-search operator is not a parameter; @q is.
SELECT id FROM books WHERE to_tsvector('simple', title) @@ to_tsquery('simple', @q) ORDER BY id;

-- name: SearchTight :many
SELECT id FROM books WHERE to_tsvector('simple', title) @@to_tsquery('simple', @q) ORDER BY id;

-- name: AddBook :one
INSERT INTO books (author_id, title) VALUES (@author_id, @title) RETURNING id;
-- A second statement in a block has no name of its own: skipped, with a warning.
SELECT 'skipped';
