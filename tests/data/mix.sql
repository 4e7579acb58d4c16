\pset pager off
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int CHECK (qty >= 0), note text);
INSERT INTO items (name, qty) SELECT 'item ' || g, g % 7 FROM generate_series(1, 50) g;
UPDATE items SET note = repeat('long text ', 5000) WHERE id = 3;
SELECT id, name, qty FROM items WHERE id <= 5 ORDER BY id;
SELECT length(note), md5(note) FROM items WHERE id = 3;
SELECT count(*) AS n, sum(qty) AS total FROM items \gset
\echo n is :n and total is :total
SELECT :n + 1 AS next;
INSERT INTO items (name, qty) VALUES ('bad', -1);
SELECT 1/0;
SELECT nonexistent FROM items;
BEGIN;
INSERT INTO items (name, qty) VALUES ('tx', 1);
SELECT oops;
SELECT 1;
ROLLBACK;
SELECT count(*) FROM items WHERE name = 'tx';
DO $$ BEGIN RAISE NOTICE 'a notice with %', 42; RAISE WARNING 'and a warning'; END $$;
SELECT 1 AS a \; SELECT 2 AS b \; SELECT 3 AS c;
SELECT 'one' AS first; SELECT 'two' AS second;
COPY items (name, qty) FROM STDIN;
copied 1	1
copied 2	2
\.
\copy items (name, qty) from 'data.tsv'
\copy (SELECT id, name FROM items WHERE name LIKE 'copied%' ORDER BY id) to 'out.tsv'
COPY (SELECT id, name, qty FROM items ORDER BY id LIMIT 5) TO STDOUT WITH (FORMAT csv, HEADER);
COPY items (name, qty) FROM STDIN;
broken line without qty
\.
SELECT length(repeat('abc', 1000000)), md5(repeat('abc', 1000000));
SELECT repeat('wide ', 2000) AS large_text;
CREATE TEMP TABLE tmp AS SELECT * FROM items WHERE qty = 0;
SELECT count(*) FROM tmp;
PREPARE q(int) AS SELECT name FROM items WHERE id = $1;
EXECUTE q(7);
DEALLOCATE q;
\d items
SET datestyle = 'German';
SELECT '2024-02-29'::date;
SHOW datestyle;
RESET datestyle;
SELECT E'tab\there', 'unicode: ü ✓', NULL AS nothing;
\x
SELECT id, name, qty FROM items WHERE id = 1;
\x
SELECT id, name FROM items WHERE id = $1 \bind 9 \g
SELECT 'empty result' WHERE false;
;
CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
SELECT add(2, 3);
DROP TABLE tmp;
TRUNCATE items;
SELECT count(*) FROM items;
