//! Secondary keys built after the rows. A large InnoDB table's plain `KEY`s are left out of
//! its `CREATE TABLE` and added back by one `ALTER TABLE` once all its rows are in: InnoDB
//! then builds each index by sorting its entries once, instead of inserting every row's
//! entry into a B-tree that outgrows the buffer pool. The keys come back in their order,
//! after the kept ones (which sort before plain keys anyway), so `SHOW CREATE TABLE` is
//! the source's; the drill compares its digest with the dump's.
//!
//! Only what is certain is changed: a `CREATE TABLE` in `SHOW CREATE TABLE` form (one
//! definition per line), InnoDB, not system-versioned, no foreign keys, no FULLTEXT,
//! SPATIAL or other index kinds, and an AUTO_INCREMENT column that keeps its key.
//! Anything else is replayed as it is.

/// What to do with a `CREATE TABLE`.
#[derive(Debug, PartialEq, Eq)]
pub enum Create {
    /// Create `create` (the table without its plain keys) now; once its rows are in,
    /// `ALTER TABLE <table> ADD <key>, ...` with `keys` in their order.
    Defer {
        create: Vec<u8>,
        /// The table's name as written (a quoted identifier).
        table: String,
        keys: Vec<String>,
    },
    /// As it is.
    Keep,
    /// As it is; the table has foreign keys (the caller stops deferring keys: a foreign
    /// key needs its referenced columns' index to exist).
    ForeignKeys,
}

/// The `ALTER TABLE` that adds `keys` to `db`.`table` (`table` quoted as written).
pub fn alter(db: &str, table: &str, keys: &[String]) -> String {
    let adds: Vec<String> = keys.iter().map(|k| format!("ADD {k}")).collect();
    format!(
        "ALTER TABLE {}.{table} {}",
        backup_core::format::quote_ident(db),
        adds.join(", ")
    )
}

/// A quoted identifier at the start of `s` and what follows it.
fn quoted_ident(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('`')?;
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'`' {
            if b.get(i + 1) == Some(&b'`') {
                i += 2;
                continue;
            }
            return Some((&s[..i + 2], &rest[i + 1..]));
        }
        i += 1;
    }
    None
}

pub fn split_keys(stmt: &[u8]) -> Create {
    let Ok(s) = std::str::from_utf8(stmt) else {
        return Create::Keep;
    };
    let Some(rest) = s.strip_prefix("CREATE TABLE ") else {
        return Create::Keep;
    };
    let Some((table, rest)) = quoted_ident(rest) else {
        return Create::Keep;
    };
    let Some(body) = rest.strip_prefix(" (\n") else {
        return Create::Keep;
    };
    let mut lines: Vec<&str> = Vec::new();
    let mut tail = None;
    for (i, line) in body.split('\n').enumerate() {
        if line.starts_with(')') {
            tail = Some(body.split('\n').skip(i).collect::<Vec<_>>().join("\n"));
            break;
        }
        lines.push(line);
    }
    let Some(tail) = tail else {
        return Create::Keep;
    };
    let options = tail.lines().next().unwrap_or("");
    if !options.contains(" ENGINE=InnoDB") || s.contains("SYSTEM VERSIONING") {
        return Create::Keep;
    }
    // Every definition on a line of its own, every line but the last ending in a comma.
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with("  ") || (i + 1 < n) != l.ends_with(',') {
            return Create::Keep;
        }
    }
    let mut keep: Vec<&str> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    // Columns that may be AUTO_INCREMENT (a comment may say so too: then both must
    // keep a key, which only makes this more careful).
    let mut auto_increment: Vec<&str> = Vec::new();
    for l in &lines {
        let d = l[2..].trim_end_matches(',');
        if d.starts_with('`') {
            if d.contains(" AUTO_INCREMENT") {
                match quoted_ident(d) {
                    Some((name, _)) => auto_increment.push(name),
                    None => return Create::Keep,
                }
            }
            keep.push(d);
        } else if d.starts_with("KEY `") {
            keys.push(d.to_string());
        } else if d.starts_with("PRIMARY KEY (") || d.starts_with("UNIQUE KEY `") {
            keep.push(d);
        } else if d.starts_with("CONSTRAINT `") && !d.contains(" FOREIGN KEY ") {
            // A CHECK constraint.
            keep.push(d);
        } else if d.starts_with("CONSTRAINT `") {
            return Create::ForeignKeys;
        } else {
            return Create::Keep;
        }
    }
    if keys.is_empty() {
        return Create::Keep;
    }
    for col in auto_increment {
        // It must stay the first column of a kept key.
        let first = format!("({col}");
        if !keep
            .iter()
            .any(|d| key_columns(d).is_some_and(|c| c.starts_with(&first)))
        {
            return Create::Keep;
        }
    }
    let create = format!("CREATE TABLE {table} (\n  {}\n{tail}", keep.join(",\n  "));
    Create::Defer {
        create: create.into_bytes(),
        table: table.to_string(),
        keys,
    }
}

/// The column list of a key definition, from its opening parenthesis.
fn key_columns(d: &str) -> Option<&str> {
    let rest = if let Some(r) = d.strip_prefix("PRIMARY KEY ") {
        r
    } else {
        let r = d.strip_prefix("UNIQUE KEY ")?;
        quoted_ident(r)?.1.trim_start()
    };
    rest.starts_with('(').then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defer(s: &str) -> (String, String, Vec<String>) {
        match split_keys(s.as_bytes()) {
            Create::Defer {
                create,
                table,
                keys,
            } => (String::from_utf8(create).unwrap(), table, keys),
            other => panic!("not deferred: {other:?}"),
        }
    }

    #[test]
    fn plain_keys_move_to_an_alter_in_their_order() {
        let (create, table, keys) = defer(
            "CREATE TABLE `orders` (\n  `id` bigint(20) NOT NULL AUTO_INCREMENT,\n  `customer_id` int(11) NOT NULL,\n  `ref` char(64) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `ref` (`ref`),\n  KEY `customer_id` (`customer_id`),\n  KEY `both` (`customer_id`,`ref`(10)) COMMENT 'KEY `x`',\n  CONSTRAINT `pos` CHECK (`customer_id` > 0)\n) ENGINE=InnoDB AUTO_INCREMENT=7 DEFAULT CHARSET=latin1 COLLATE=latin1_swedish_ci",
        );
        assert_eq!(
            create,
            "CREATE TABLE `orders` (\n  `id` bigint(20) NOT NULL AUTO_INCREMENT,\n  `customer_id` int(11) NOT NULL,\n  `ref` char(64) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `ref` (`ref`),\n  CONSTRAINT `pos` CHECK (`customer_id` > 0)\n) ENGINE=InnoDB AUTO_INCREMENT=7 DEFAULT CHARSET=latin1 COLLATE=latin1_swedish_ci"
        );
        assert_eq!(table, "`orders`");
        assert_eq!(
            keys,
            [
                "KEY `customer_id` (`customer_id`)",
                "KEY `both` (`customer_id`,`ref`(10)) COMMENT 'KEY `x`'"
            ]
        );
        assert_eq!(
            alter("shop`s", &table, &keys),
            "ALTER TABLE `shop``s`.`orders` ADD KEY `customer_id` (`customer_id`), ADD KEY `both` (`customer_id`,`ref`(10)) COMMENT 'KEY `x`'"
        );
        // The last line of the body may be a key: the comma before it goes.
        let (create, _, keys) = defer(
            "CREATE TABLE `a``b` (\n  `id` int(11) NOT NULL,\n  `v` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`),\n  KEY `v` (`v`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4\n PARTITION BY HASH (`id`)\nPARTITIONS 4",
        );
        assert_eq!(create, "CREATE TABLE `a``b` (\n  `id` int(11) NOT NULL,\n  `v` int(11) DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4\n PARTITION BY HASH (`id`)\nPARTITIONS 4");
        assert_eq!(keys, ["KEY `v` (`v`)"]);
    }

    #[test]
    fn anything_uncertain_is_kept_as_it_is() {
        let t = |body: &str, options: &str| format!("CREATE TABLE `t` (\n{body}\n) {options}");
        let inno = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";
        for (body, options) in [
            // No plain key.
            ("  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)", inno),
            // Another engine.
            ("  `id` int(11) NOT NULL,\n  `v` int(11),\n  PRIMARY KEY (`id`),\n  KEY `v` (`v`)", "ENGINE=MyISAM"),
            ("  `id` int(11) NOT NULL,\n  `v` int(11),\n  PRIMARY KEY (`id`),\n  KEY `v` (`v`)", "ENGINE=Aria"),
            // Versioned.
            ("  `id` int(11) NOT NULL,\n  `v` int(11),\n  PRIMARY KEY (`id`),\n  KEY `v` (`v`)", "ENGINE=InnoDB WITH SYSTEM VERSIONING"),
            // Other index kinds.
            ("  `id` int(11) NOT NULL,\n  `v` text,\n  PRIMARY KEY (`id`),\n  KEY `i` (`id`),\n  FULLTEXT KEY `v` (`v`)", inno),
            ("  `id` int(11) NOT NULL,\n  `g` point NOT NULL,\n  PRIMARY KEY (`id`),\n  KEY `i` (`id`),\n  SPATIAL KEY `g` (`g`)", inno),
            // The AUTO_INCREMENT column's only key is a plain one.
            ("  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL,\n  PRIMARY KEY (`k`),\n  KEY `id` (`id`)", inno),
            ("  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL,\n  PRIMARY KEY (`k`,`id`),\n  KEY `id` (`id`)", inno),
            // Not one definition a line.
            ("  `id` int(11) NOT NULL, `v` int(11),\n  PRIMARY KEY (`id`)\n  KEY `v` (`v`)", inno),
        ] {
            assert_eq!(split_keys(t(body, options).as_bytes()), Create::Keep, "{body} {options}");
        }
        assert_eq!(
            split_keys(t("  `id` int(11) NOT NULL,\n  `p` int(11),\n  PRIMARY KEY (`id`),\n  KEY `p` (`p`),\n  CONSTRAINT `fk` FOREIGN KEY (`p`) REFERENCES `parent` (`id`)", inno).as_bytes()),
            Create::ForeignKeys
        );
        for s in [
            "CREATE TABLE IF NOT EXISTS `t` (\n  `v` int,\n  KEY `v` (`v`)\n) ENGINE=InnoDB",
            "CREATE TABLE `t` LIKE `u`",
            "CREATE TABLE `t` (\n  `v` int,\n  KEY `v` (`v`)",
        ] {
            assert_eq!(split_keys(s.as_bytes()), Create::Keep, "{s}");
        }
        // An AUTO_INCREMENT column first in a kept key keeps the deferral.
        assert!(matches!(
            split_keys(t("  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL,\n  PRIMARY KEY (`id`,`k`),\n  KEY `k` (`k`)", inno).as_bytes()),
            Create::Defer { .. }
        ));
    }
}
