-- name: variants_of :many
SELECT * FROM shop.variants WHERE item_id = @item_id ORDER BY colour;
