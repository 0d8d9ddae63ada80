-- The API records a confirmed publish by setting published_at alone, which no
-- index covers: with free space on the page PostgreSQL updates the row in
-- place (HOT) instead of writing a new row version and five index entries.
ALTER TABLE jobs SET (fillfactor = 85);
