-- Round-trip test schema: every column type, edge value and object kind the dumper must
-- reproduce exactly. Load into an empty database:  mariadb DBNAME < testdata/schema.sql
-- (the tests do this with a unique database name). Object references are unqualified, so
-- they resolve to the database it is loaded into.
SET NAMES utf8mb4;
SET time_zone = '+00:00';
SET sql_mode = '';

-- Integers at their limits, signed and unsigned.
CREATE TABLE ints (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  bo BOOLEAN, y YEAR
) ENGINE=InnoDB;
INSERT INTO ints VALUES
 (1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, 0, 1901),
 (2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615, 1, 2155),
 (3, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, 0),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- Exact and approximate numbers.
CREATE TABLE nums (
  id INT PRIMARY KEY,
  d DECIMAL(65,30), d2 DECIMAL(10,0) UNSIGNED, f FLOAT, dbl DOUBLE, fp FLOAT(10,3), r REAL
) ENGINE=InnoDB;
INSERT INTO nums VALUES
 (1, '99999999999999999999999999999999999.999999999999999999999999999999', 9999999999, 3.4028234e38, 1.7976931348623157e308, 1234567.125, 2.2250738585072014e-308),
 (2, '-99999999999999999999999999999999999.999999999999999999999999999999', 0, -3.4028234e38, -1.7976931348623157e308, -1234567.125, -4.9e-324),
 (3, '0.000000000000000000000000000001', 1, 1.17549435e-38, 4.9e-324, 0.001, 0.1),
 (4, 0, 0, -0e0, -0e0, 0, -0e0),
 (5, 1.5, 2, 1.0000001, 0.30000000000000004, 1.5, 123456789.123456789),
 (6, NULL, NULL, 16777217, 9007199254740993, NULL, 1e-7),
 (7, -0.5, 3, 0.1, 0.1, -0.001, 1e22);

CREATE TABLE bits (
  id INT PRIMARY KEY, b1 BIT(1), b7 BIT(7), b8 BIT(8), b17 BIT(17), b64 BIT(64)
) ENGINE=InnoDB;
INSERT INTO bits VALUES
 (1, b'0', b'0', b'0', b'0', b'0'),
 (2, b'1', b'1111111', b'11111111', b'11111111111111111', b'1111111111111111111111111111111111111111111111111111111111111111'),
 (3, NULL, b'1010101', b'10000000', b'10000000000000001', b'1000000000000000000000000000000000000000000000000000000000000001');

-- Text in several charsets and collations; NULL versus empty; special characters.
CREATE TABLE texts (
  id INT PRIMARY KEY,
  c CHAR(10) CHARACTER SET utf8mb4,
  vc VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci,
  vbin VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  l1 VARCHAR(300) CHARACTER SET latin1,
  t TEXT CHARACTER SET utf8mb4,
  mt MEDIUMTEXT,
  lt LONGTEXT CHARACTER SET latin1 COLLATE latin1_bin,
  u3 VARCHAR(50) CHARACTER SET utf8mb3,
  asc1 VARCHAR(50) CHARACTER SET ascii,
  cp VARCHAR(50) CHARACTER SET cp1251
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO texts VALUES
 (1, 'abc', 'Grüße 😀 𝄞 中文', 'CaseSensitive', 'café naïve', 'line1\nline2\r\n\ttab', 'quote '' and "dq" and back\\slash', 'zzz', 'ümlaut', 'plain', 'Привет'),
 (2, '', '', '', '', '', '', '', '', '', ''),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 'nul\0byte', CONCAT('ctrl', CHAR(26), 'z', CHAR(0)), ';;', '-- not a comment', '/* not a comment */', 'DELIMITER ;;', CHAR(0xA9 USING latin1), '`backtick`', '%_', 'ё'),
 (5, ' trail  ', '🙂🙃', 'x', CONVERT(UNHEX('80818D8F909DA0FF') USING latin1), REPEAT('long text ', 5000), REPEAT('m', 70000), REPEAT(CONVERT(UNHEX('E9') USING latin1), 3), 'ß', 'tab\there', 'Ў');

-- Binary data: every byte value, NUL, a large value.
CREATE TABLE bins (
  id INT PRIMARY KEY,
  b BINARY(8), vb VARBINARY(300), tb TINYBLOB, bl BLOB, mb MEDIUMBLOB, lb LONGBLOB
) ENGINE=InnoDB;
INSERT INTO bins VALUES
 (1, UNHEX('0001027F80FEFF00'), UNHEX('000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F303132333435363738393A3B3C3D3E3F404142434445464748494A4B4C4D4E4F505152535455565758595A5B5C5D5E5F606162636465666768696A6B6C6D6E6F707172737475767778797A7B7C7D7E7F808182838485868788898A8B8C8D8E8F909192939495969798999A9B9C9D9E9FA0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3B4B5B6B7B8B9BABBBCBDBEBFC0C1C2C3C4C5C6C7C8C9CACBCCCDCECFD0D1D2D3D4D5D6D7D8D9DADBDCDDDEDFE0E1E2E3E4E5E6E7E8E9EAEBECEDEEEFF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF'),
     UNHEX('00'), UNHEX('27225C0A0D1A00'), UNHEX(REPEAT('00FF', 1000)), NULL),
 (2, '', '', '', '', '', ''),
 (3, NULL, NULL, NULL, NULL, NULL, NULL);

-- One row larger than 1 MiB (16 MiB): must get a statement of its own.
CREATE TABLE big (id INT PRIMARY KEY, payload LONGBLOB) ENGINE=InnoDB;
INSERT INTO big VALUES (1, REPEAT(UNHEX(SHA2('payload', 512)), 262144));
INSERT INTO big VALUES (2, 'small');

-- Temporal types with fractional seconds and zero dates (sql_mode '' allows them).
CREATE TABLE times (
  id INT PRIMARY KEY,
  d DATE, t TIME(6), t0 TIME, dt DATETIME(6), dt0 DATETIME, ts TIMESTAMP(3) NULL DEFAULT NULL, y YEAR
) ENGINE=InnoDB;
INSERT INTO times VALUES
 (1, '1000-01-01', '-838:59:59.000000', '838:59:59', '1000-01-01 00:00:00.000000', '9999-12-31 23:59:59', '1970-01-01 00:00:01.000', 1901),
 (2, '9999-12-31', '12:34:56.789012', '00:00:00', '2024-02-29 23:59:59.999999', '2000-01-01 00:00:00', '2038-01-19 03:14:07.999', 2155),
 (3, '0000-00-00', '00:00:00.000001', '-00:00:01', '0000-00-00 00:00:00.000000', '0000-00-00 00:00:00', '0000-00-00 00:00:00.000', 0000),
 (4, '2024-00-15', NULL, NULL, '2024-03-31 02:30:00.5', NULL, '2024-03-31 02:30:00.123', NULL);

-- ENUM, SET, JSON, INET4, INET6, UUID.
CREATE TABLE misc (
  id INT PRIMARY KEY,
  e ENUM('a','b','c d','é'), s SET('x','y','z'), j JSON,
  i4 INET4, i6 INET6, u UUID
) ENGINE=InnoDB;
INSERT INTO misc VALUES
 (1, 'a', 'x,z', '{"k": [1, 2.5, "s\\"q", null, true], "ü": {"n": -0.0}}', '0.0.0.0', '::', '00000000-0000-0000-0000-000000000000'),
 (2, 'é', '', '[]', '255.255.255.255', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'ffffffff-ffff-ffff-ffff-ffffffffffff'),
 (3, '', 'x,y,z', '"text"', '10.1.2.3', '::ffff:10.1.2.3', '123e4567-e89b-12d3-a456-426614174000'),
 (4, NULL, NULL, NULL, NULL, NULL, NULL);

-- Geometry of every kind, with a SPATIAL index.
CREATE TABLE geo (
  id INT PRIMARY KEY,
  g GEOMETRY NOT NULL, p POINT, ls LINESTRING, pg POLYGON,
  mp MULTIPOINT, mls MULTILINESTRING, mpg MULTIPOLYGON, gc GEOMETRYCOLLECTION,
  SPATIAL INDEX (g)
) ENGINE=InnoDB;
INSERT INTO geo VALUES
 (1, ST_GeomFromText('POINT(1 1)'), ST_GeomFromText('POINT(-1.5 2e10)'), ST_GeomFromText('LINESTRING(0 0,1 1,2 2)'),
  ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0),(1 1,2 1,2 2,1 1))'), ST_GeomFromText('MULTIPOINT(1 1,2 2)'),
  ST_GeomFromText('MULTILINESTRING((0 0,1 1),(2 2,3 3))'), ST_GeomFromText('MULTIPOLYGON(((0 0,1 0,1 1,0 0)))'),
  ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,1 1))')),
 (2, ST_GeomFromText('POINT(0 0)', 4326), NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- AUTO_INCREMENT beyond the rows, generated columns, invisible columns, CHECK constraints,
-- FULLTEXT index, a zero in an AUTO_INCREMENT column.
CREATE TABLE features (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  price DECIMAL(10,2) NOT NULL CHECK (price >= 0),
  qty INT NOT NULL DEFAULT 1,
  total DECIMAL(12,2) AS (price * qty) VIRTUAL,
  total_s DECIMAL(12,2) AS (price * qty) PERSISTENT,
  secret VARCHAR(20) INVISIBLE DEFAULT 'hidden',
  body TEXT,
  CONSTRAINT qty_positive CHECK (qty > 0),
  FULLTEXT KEY ft_body (body),
  KEY k_total (total_s)
) ENGINE=InnoDB AUTO_INCREMENT=1000;
INSERT INTO features (id, price, qty, secret, body) VALUES (0, 1.50, 2, 'zero id', 'zero row');
INSERT INTO features (price, qty, secret, body) VALUES (9.99, 3, 'not default', 'full text search body'), (0, 1, DEFAULT, NULL);
ALTER TABLE features AUTO_INCREMENT = 5000;

-- Foreign keys, including a self reference and a child loaded before its parent by name.
SET foreign_key_checks = 0;
CREATE TABLE a_child (
  id INT PRIMARY KEY, parent_id INT NOT NULL,
  CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES z_parent (id) ON DELETE CASCADE
) ENGINE=InnoDB;
CREATE TABLE z_parent (id INT PRIMARY KEY, manager_id INT NULL,
  CONSTRAINT fk_self FOREIGN KEY (manager_id) REFERENCES z_parent (id)) ENGINE=InnoDB;
INSERT INTO a_child VALUES (1, 1), (2, 1), (3, 2);
INSERT INTO z_parent VALUES (1, NULL), (2, 1);
SET foreign_key_checks = 1;

-- Partitions.
CREATE TABLE parts (id INT NOT NULL, created DATE NOT NULL, v VARCHAR(10), PRIMARY KEY (id, created))
ENGINE=InnoDB PARTITION BY RANGE (YEAR(created)) (
  PARTITION p2020 VALUES LESS THAN (2021), PARTITION p2021 VALUES LESS THAN (2022), PARTITION pmax VALUES LESS THAN MAXVALUE);
INSERT INTO parts VALUES (1, '2020-05-01', 'a'), (2, '2021-05-01', 'b'), (3, '2030-01-01', 'c');

-- System-versioned table: only current rows are dumped.
CREATE TABLE versioned (id INT PRIMARY KEY, v VARCHAR(10)) WITH SYSTEM VERSIONING ENGINE=InnoDB;
INSERT INTO versioned VALUES (1, 'old'), (2, 'keep');
UPDATE versioned SET v = 'new' WHERE id = 1;
DELETE FROM versioned WHERE id = 2;
INSERT INTO versioned VALUES (3, 'three');

-- A keyless table with duplicate rows (the digest must count them).
CREATE TABLE keyless (a INT, b VARCHAR(10)) ENGINE=InnoDB;
INSERT INTO keyless VALUES (1, 'dup'), (1, 'dup'), (1, 'dup'), (2, NULL), (NULL, NULL);

-- Non-transactional engines.
CREATE TABLE myisam_t (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=MyISAM;
INSERT INTO myisam_t VALUES (1, 'm');
CREATE TABLE aria_t (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=Aria;
INSERT INTO aria_t VALUES (1, 'a');
CREATE TABLE memory_t (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=MEMORY;
INSERT INTO memory_t VALUES (1, 'mem');

-- Many rows: several 1 MiB INSERT statements.
CREATE TABLE many (id INT PRIMARY KEY, name VARCHAR(64), amount DECIMAL(12,2), created DATETIME, flag BIT(1), data VARBINARY(32)) ENGINE=InnoDB;
INSERT INTO many SELECT seq, CONCAT('name-', seq, '-', SHA1(seq)), seq / 7, '2024-01-01' + INTERVAL seq SECOND, seq % 2, UNHEX(SHA2(seq, 256)) FROM seq_1_to_30000;

-- A table and a column whose names need quoting.
CREATE TABLE `odd name ``q`` é` (`col ; 1` INT PRIMARY KEY, `select` VARCHAR(10)) ENGINE=InnoDB;
INSERT INTO `odd name ``q`` é` VALUES (1, 'x');

-- Empty table.
CREATE TABLE empty_t (id INT PRIMARY KEY) ENGINE=InnoDB;

-- Sequences, one used as a DEFAULT.
CREATE SEQUENCE seq_orders START WITH 100 INCREMENT BY 5 CACHE 10;
DO NEXTVAL(seq_orders), NEXTVAL(seq_orders);
CREATE TABLE orders (id INT NOT NULL DEFAULT NEXTVAL(seq_orders) PRIMARY KEY, item VARCHAR(20)) ENGINE=InnoDB;
INSERT INTO orders (item) VALUES ('first'), ('second');

-- Routines: a function used by a view, a procedure with ';;' and quotes inside.
DELIMITER ;;
CREATE FUNCTION f_double(x INT) RETURNS INT DETERMINISTIC
BEGIN
  -- a comment; with a semicolon
  RETURN x * 2;
END ;;
CREATE PROCEDURE p_touch(IN n INT)
    SQL SECURITY INVOKER
    COMMENT 'proc with ;; and \'quotes\''
BEGIN
  DECLARE s VARCHAR(20) DEFAULT 'a;b';
  UPDATE keyless SET b = CONCAT(s, ';;') WHERE a = n;
END ;;
DELIMITER ;

-- Views that depend on each other in an order that is not alphabetical.
CREATE VIEW z_base AS SELECT id, f_double(qty) AS dq, price FROM features;
CREATE VIEW m_middle AS SELECT id, dq FROM z_base WHERE price > 0;
CREATE ALGORITHM=MERGE SQL SECURITY INVOKER VIEW a_top AS SELECT m.id, m.dq, p.v FROM m_middle m LEFT JOIN parts p ON p.id = m.id;
CREATE VIEW b_checked AS SELECT id, v FROM parts WHERE id > 0 WITH CASCADED CHECK OPTION;

-- Triggers, two on one table in a defined order.
DELIMITER ;;
CREATE TRIGGER trg_orders_bi BEFORE INSERT ON orders FOR EACH ROW
BEGIN
  SET NEW.item = UPPER(NEW.item);
END ;;
CREATE TRIGGER trg_orders_bi2 BEFORE INSERT ON orders FOR EACH ROW FOLLOWS trg_orders_bi
  SET NEW.item = CONCAT(NEW.item, '!') ;;
DELIMITER ;

-- Events (the scheduler is off on the test servers, so they never fire).
CREATE EVENT ev_cleanup ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00' ON COMPLETION PRESERVE DISABLE
  COMMENT 'nightly' DO DELETE FROM keyless WHERE a IS NULL;
CREATE EVENT ev_once ON SCHEDULE AT '2031-06-01 00:00:00' ON COMPLETION PRESERVE DO UPDATE orders SET item = 'x' WHERE id = 0;
