//! `--as NEW`: one database restored under another name, beside the original.
//!
//! The dump writes tables, sequences, routines, triggers and events unqualified (after a
//! `USE`), but view bodies, column defaults (`nextval(db.seq)`) and whatever the
//! authors of routines, triggers and events wrote may name the database. Every such
//! reference must move to the new name, or the copy would read from (or write to) the
//! original.
//!
//! A statement is read as SQL tokens (strings, quoted and bare identifiers, comments,
//! executable comments as code). An identifier equal to the old name is a database
//! qualifier when it heads a dotted chain (`db.t`, `` `db`.`t`.`c` ``, `db.f(...)`) and is
//! rewritten; the statement is refused, naming the object, when the old name is also used
//! in it as a table, alias, column or variable name (a chain's tail, or alone), because
//! `name.x` could then mean either. In routines, triggers and events a string that names
//! the old database is refused as well (it may be SQL run by `PREPARE`). Row statements
//! are never rewritten: they are data, and unqualified.
//!
//! Pass 1 checks every statement of the database and refuses before anything is
//! restored; pass 2 rewrites.

use backup_core::format::quote_ident;

/// The old and the new name of the database restored under another name.
#[derive(Debug, Clone)]
pub struct Rename {
    pub from: String,
    pub to: String,
    /// The database the statements run in (the last `USE`).
    current: Option<String>,
    /// `ANSI_QUOTES` in the current SQL mode: `"x"` is an identifier.
    ansi_quotes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier: its name, and whether it was quoted.
    Ident(String, bool),
    Dot,
    /// A string literal's content (unescaped enough to search it).
    Str(String),
    LParen,
    /// Anything else that is code (operators, numbers, variables).
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The SQL tokens of a statement (comments and spaces dropped; the content of executable
/// comments `/*!...*/`, `/*M!...*/` read as code).
fn lex(s: &[u8], ansi_quotes: bool) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = s.len();
    let mut in_exec_comment = false;
    while i < n {
        let b = s[i];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if in_exec_comment && s[i..].starts_with(b"*/") {
            in_exec_comment = false;
            i += 2;
        } else if s[i..].starts_with(b"/*!") || s[i..].starts_with(b"/*M!") {
            i += if s[i + 2] == b'M' { 4 } else { 3 };
            while i < n && s[i].is_ascii_digit() {
                i += 1;
            }
            in_exec_comment = true;
        } else if s[i..].starts_with(b"/*") {
            i = s[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(n, |p| i + 2 + p + 2);
        } else if b == b'#'
            || (s[i..].starts_with(b"--") && s.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()))
        {
            i = s[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(n, |p| i + p + 1);
        } else if b == b'`' || (b == b'"' && ansi_quotes) {
            let (text, end) = quoted(s, i, b);
            out.push(Token {
                tok: Tok::Ident(text, true),
                start: i,
                end,
            });
            i = end;
        } else if b == b'\'' || b == b'"' {
            let (text, end) = quoted(s, i, b);
            out.push(Token {
                tok: Tok::Str(text),
                start: i,
                end,
            });
            i = end;
        } else if b == b'@' {
            // @var, @@var, @'quoted': a variable, never a database.
            let start = i;
            while i < n && s[i] == b'@' {
                i += 1;
            }
            if i < n && (s[i] == b'\'' || s[i] == b'"' || s[i] == b'`') {
                i = quoted(s, i, s[i]).1;
            } else {
                while i < n && is_word_byte(s[i]) {
                    i += 1;
                }
            }
            out.push(Token {
                tok: Tok::Other,
                start,
                end: i,
            });
        } else if is_word_byte(b) {
            let start = i;
            while i < n && is_word_byte(s[i]) {
                i += 1;
            }
            let word = &s[start..i];
            let tok = if word.iter().all(|c| c.is_ascii_digit()) {
                Tok::Other
            } else {
                Tok::Ident(String::from_utf8_lossy(word).into_owned(), false)
            };
            out.push(Token { tok, start, end: i });
        } else if b == b'.' {
            out.push(Token {
                tok: Tok::Dot,
                start: i,
                end: i + 1,
            });
            i += 1;
        } else if b == b'(' {
            out.push(Token {
                tok: Tok::LParen,
                start: i,
                end: i + 1,
            });
            i += 1;
        } else {
            out.push(Token {
                tok: Tok::Other,
                start: i,
                end: i + 1,
            });
            i += 1;
        }
    }
    out
}

/// A quoted token starting at `i` with quote `q`: its content (doubled quotes and
/// backslash escapes of strings undone) and where it ends.
fn quoted(s: &[u8], i: usize, q: u8) -> (String, usize) {
    let mut out = Vec::new();
    let mut j = i + 1;
    while j < s.len() {
        let c = s[j];
        if c == q {
            if s.get(j + 1) == Some(&q) {
                out.push(q);
                j += 2;
                continue;
            }
            return (String::from_utf8_lossy(&out).into_owned(), j + 1);
        }
        if c == b'\\' && q != b'`' && j + 1 < s.len() {
            out.push(s[j + 1]);
            j += 2;
            continue;
        }
        out.push(c);
        j += 1;
    }
    (String::from_utf8_lossy(&out).into_owned(), s.len())
}

/// What a statement creates, for messages: "view `v`", "procedure `p`", ...
fn object_of(toks: &[Token]) -> String {
    const KINDS: &[&str] = &[
        "TABLE",
        "VIEW",
        "PROCEDURE",
        "FUNCTION",
        "TRIGGER",
        "EVENT",
        "SEQUENCE",
        "PACKAGE",
    ];
    for (i, t) in toks.iter().enumerate().take(40) {
        let Tok::Ident(w, false) = &t.tok else {
            continue;
        };
        let upper = w.to_ascii_uppercase();
        if !KINDS.contains(&upper.as_str()) {
            continue;
        }
        // The name: the last identifier of the chain that follows (IF NOT EXISTS aside).
        let mut name = None;
        let mut j = i + 1;
        while let Some(t) = toks.get(j) {
            match &t.tok {
                Tok::Ident(w, false)
                    if name.is_none()
                        && ["IF", "NOT", "EXISTS", "BODY"]
                            .contains(&w.to_ascii_uppercase().as_str()) => {}
                Tok::Ident(w, _) => {
                    name = Some(w.clone());
                    if !matches!(toks.get(j + 1).map(|t| &t.tok), Some(Tok::Dot)) {
                        break;
                    }
                }
                Tok::Dot => {}
                _ => break,
            }
            j += 1;
        }
        if let Some(n) = name {
            return format!("{} {}", upper.to_ascii_lowercase(), quote_ident(&n));
        }
    }
    "a statement".into()
}

/// Whether `text` names `db` as a word (not inside a longer identifier).
fn names_word(text: &str, db: &str) -> bool {
    let (t, d) = (text.as_bytes(), db.as_bytes());
    if d.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(p) = text[from..].find(db) {
        let at = from + p;
        let before = at.checked_sub(1).map(|i| t[i]);
        let after = t.get(at + d.len()).copied();
        if before.is_none_or(|b| !is_word_byte(b)) && after.is_none_or(|b| !is_word_byte(b)) {
            return true;
        }
        from = at + 1;
        while !text.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

impl Rename {
    pub fn new(from: &str, to: &str) -> Rename {
        Rename {
            from: from.to_string(),
            to: to.to_string(),
            current: None,
            ansi_quotes: false,
        }
    }

    /// Follows the session: `USE` and `SET ... SQL_MODE='...'` statements (of any
    /// database).
    fn observe(&mut self, toks: &[Token]) {
        let word = |i: usize| match toks.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(w, _)) => Some(w.as_str()),
            _ => None,
        };
        match word(0).map(|w| w.to_ascii_uppercase()) {
            Some(w) if w == "USE" => self.current = word(1).map(String::from),
            Some(w) if w == "SET" => {
                for (i, t) in toks.iter().enumerate() {
                    if matches!(&t.tok, Tok::Ident(w, false) if w.eq_ignore_ascii_case("SQL_MODE"))
                    {
                        // SQL_MODE = '<modes>' (a saved @variable restores an unknown mode:
                        // assume the dump's own, without ANSI_QUOTES).
                        match toks.get(i + 2).map(|t| &t.tok) {
                            Some(Tok::Str(m)) => {
                                self.ansi_quotes = m
                                    .to_ascii_uppercase()
                                    .split(',')
                                    .any(|x| x == "ANSI_QUOTES" || x == "ANSI")
                            }
                            _ => self.ansi_quotes = false,
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The statement as it is replayed into the new database: `Ok(None)` when it is
    /// unchanged, `Err` (naming the object and the reason) when it cannot be rewritten
    /// safely. Row statements (`INSERT`) are never looked into.
    pub fn rewrite(&mut self, stmt: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let head = stmt.trim_ascii_start();
        if head.len() >= 7 && head[..7].eq_ignore_ascii_case(b"INSERT ") {
            return Ok(None);
        }
        let toks = lex(stmt, self.ansi_quotes);
        self.observe(&toks);
        let first = match toks.first().map(|t| &t.tok) {
            Some(Tok::Ident(w, false)) => w.to_ascii_uppercase(),
            _ => String::new(),
        };
        let second = match toks.get(1).map(|t| &t.tok) {
            Some(Tok::Ident(w, false)) => w.to_ascii_uppercase(),
            _ => String::new(),
        };
        // USE db, CREATE DATABASE db: the name itself.
        let named_db = match (first.as_str(), second.as_str()) {
            ("USE", _) => Some(1),
            ("CREATE", "DATABASE") | ("CREATE", "SCHEMA") => {
                let mut k = 2;
                while matches!(toks.get(k).map(|t| &t.tok), Some(Tok::Ident(w, false)) if ["IF", "NOT", "EXISTS"].contains(&w.to_ascii_uppercase().as_str()))
                {
                    k += 1;
                }
                Some(k)
            }
            _ => None,
        };
        if let Some(k) = named_db {
            return Ok(match toks.get(k) {
                Some(t) if matches!(&t.tok, Tok::Ident(w, _) if *w == self.from) => {
                    Some(self.splice(stmt, &[(t.start, t.end, true)]))
                }
                _ => None,
            });
        }
        // Statements of other databases (a backup of several) are not ours to rewrite.
        if self.current.as_deref() != Some(self.from.as_str()) {
            return Ok(None);
        }
        let code = ["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"];
        let is_code = first == "CREATE" && toks.iter().take(12).any(|t| matches!(&t.tok, Tok::Ident(w, false) if code.contains(&w.to_ascii_uppercase().as_str())));
        let mut spans = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let t = &toks[i];
            // `name`@`host`: an account (DEFINER=...), not a database.
            let account = toks
                .get(i + 1)
                .is_some_and(|n| stmt[n.start] == b'@' && n.start == t.end);
            if account {
                i += 1;
                continue;
            }
            match &t.tok {
                Tok::Ident(name, _) => {
                    let after_dot = i > 0 && toks[i - 1].tok == Tok::Dot;
                    let before_dot = matches!(toks.get(i + 1).map(|t| &t.tok), Some(Tok::Dot));
                    if *name == self.from {
                        if !after_dot && before_dot {
                            spans.push((t.start, t.end, matches!(t.tok, Tok::Ident(_, true))));
                        } else {
                            return Err(format!(
                                "{}: {} is also used there as a table, alias, column or variable name, so its references to the database cannot be told apart; restore it under its own name into another server",
                                object_of(&toks),
                                quote_ident(&self.from)
                            ));
                        }
                    }
                }
                Tok::Str(text) if is_code && names_word(text, &self.from) => {
                    return Err(format!(
                        "{}: a string in its body names the database {} (it may be SQL run by PREPARE or EXECUTE IMMEDIATE), which cannot be rewritten safely; restore it under its own name into another server",
                        object_of(&toks),
                        quote_ident(&self.from)
                    ));
                }
                _ => {}
            }
            i += 1;
        }
        Ok((!spans.is_empty()).then(|| self.splice(stmt, &spans)))
    }

    /// The statement with each span replaced by the new name: quoted where the old one
    /// was (or must be), bare where it was bare and may be.
    fn splice(&self, stmt: &[u8], spans: &[(usize, usize, bool)]) -> Vec<u8> {
        let quoted = quote_ident(&self.to);
        let bare_ok =
            self.to.bytes().all(is_word_byte) && !self.to.bytes().all(|b| b.is_ascii_digit());
        let mut out = Vec::with_capacity(stmt.len() + spans.len() * quoted.len());
        let mut at = 0;
        for &(s, e, was_quoted) in spans {
            out.extend_from_slice(&stmt[at..s]);
            if was_quoted || !bare_ok {
                out.extend_from_slice(quoted.as_bytes());
            } else {
                out.extend_from_slice(self.to.as_bytes());
            }
            at = e;
        }
        out.extend_from_slice(&stmt[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut Rename, s: &str) -> Result<String, String> {
        r.rewrite(s.as_bytes())
            .map(|o| String::from_utf8(o.unwrap_or_else(|| s.as_bytes().to_vec())).unwrap())
    }

    #[test]
    fn qualifiers_move_to_the_new_name() {
        let mut r = Rename::new("shop", "shop_copy");
        assert_eq!(
            run(
                &mut r,
                "CREATE DATABASE `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */"
            )
            .unwrap(),
            "CREATE DATABASE `shop_copy` /*!40100 DEFAULT CHARACTER SET utf8mb4 */"
        );
        assert_eq!(run(&mut r, "USE `shop`").unwrap(), "USE `shop_copy`");
        assert_eq!(
            run(&mut r, "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER VIEW `shop`.`v` AS select `shop`.`t`.`id` AS `id`,`f`(`shop`.`t`.`q`) AS `dq` from `shop`.`t` where `t`.`note` = 'shop.t'").unwrap(),
            "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER VIEW `shop_copy`.`v` AS select `shop_copy`.`t`.`id` AS `id`,`f`(`shop_copy`.`t`.`q`) AS `dq` from `shop_copy`.`t` where `t`.`note` = 'shop.t'"
        );
        assert_eq!(
            run(&mut r, "CREATE DEFINER=`root`@`localhost` TRIGGER tr BEFORE INSERT ON t FOR EACH ROW\nBEGIN\n  -- shop.t is ours\n  SET NEW.q = shop.f(NEW.q) + (SELECT COUNT(*) FROM shop . t);\nEND").unwrap(),
            "CREATE DEFINER=`root`@`localhost` TRIGGER tr BEFORE INSERT ON t FOR EACH ROW\nBEGIN\n  -- shop.t is ours\n  SET NEW.q = shop_copy.f(NEW.q) + (SELECT COUNT(*) FROM shop_copy . t);\nEND"
        );
        assert_eq!(
            run(&mut r, "  `id` int NOT NULL DEFAULT nextval(`shop`.`seq`)").unwrap(),
            "  `id` int NOT NULL DEFAULT nextval(`shop_copy`.`seq`)"
        );
        // A table of another database named like ours: refused, naming the view.
        assert!(run(
            &mut r,
            "CREATE VIEW `shop`.`w` AS select `other`.`shop`.`x` AS `x` from `other`.`shop`"
        )
        .unwrap_err()
        .starts_with("view `w`"));
        // Rows and unrelated words stay.
        assert_eq!(
            run(&mut r, "INSERT INTO `t` VALUES (1,'shop.t')").unwrap(),
            "INSERT INTO `t` VALUES (1,'shop.t')"
        );
        assert_eq!(
            run(&mut r, "CREATE TABLE `shopping` (`a` int) COMMENT 'shop'").unwrap(),
            "CREATE TABLE `shopping` (`a` int) COMMENT 'shop'"
        );
        assert_eq!(
            run(&mut r, "SET @x = @shop.y, @@session.sql_mode = ''").unwrap(),
            "SET @x = @shop.y, @@session.sql_mode = ''"
        );
        // In another database, nothing is touched.
        run(&mut r, "USE `other`").unwrap();
        assert_eq!(
            run(
                &mut r,
                "CREATE VIEW `other`.`v` AS select `shop`.`t`.`a` AS `a` from `shop`.`t`"
            )
            .unwrap(),
            "CREATE VIEW `other`.`v` AS select `shop`.`t`.`a` AS `a` from `shop`.`t`"
        );
    }

    #[test]
    fn what_cannot_be_told_apart_is_refused_with_the_object() {
        let mut r = Rename::new("shop", "x");
        run(&mut r, "USE `shop`").unwrap();
        let e = run(&mut r, "CREATE DEFINER=`a`@`%` PROCEDURE `p`()\nBEGIN\n  PREPARE s FROM 'SELECT * FROM shop.t';\n  EXECUTE s;\nEND").unwrap_err();
        assert!(e.starts_with("procedure `p`: a string"), "{e}");
        let e = run(
            &mut r,
            "CREATE VIEW `shop`.`v2` AS select `shop`.`id` AS `id` from `shop`.`shop`",
        )
        .unwrap_err();
        assert!(e.starts_with("view `v2`: `shop` is also used"), "{e}");
        // An account of the same name is not the database.
        assert_eq!(
            run(
                &mut r,
                "CREATE DEFINER=`shop`@`%` PROCEDURE `q`() SELECT 'x'"
            )
            .unwrap(),
            "CREATE DEFINER=`shop`@`%` PROCEDURE `q`() SELECT 'x'"
        );
        assert_eq!(
            run(
                &mut r,
                "CREATE DEFINER='shop'@'%' PROCEDURE `q2`() SELECT 1"
            )
            .unwrap(),
            "CREATE DEFINER='shop'@'%' PROCEDURE `q2`() SELECT 1"
        );
        let e = run(&mut r, "CREATE TABLE `shop` (`id` int)").unwrap_err();
        assert!(e.starts_with("table `shop`"), "{e}");
        // ANSI_QUOTES: "shop" is an identifier.
        run(&mut r, "SET SQL_MODE='ANSI_QUOTES'").unwrap();
        assert_eq!(run(&mut r, "CREATE DEFINER=`a`@`%` FUNCTION `f`() RETURNS int RETURN (SELECT COUNT(*) FROM \"shop\".t)").unwrap(), "CREATE DEFINER=`a`@`%` FUNCTION `f`() RETURNS int RETURN (SELECT COUNT(*) FROM `x`.t)");
        run(&mut r, "SET SQL_MODE=''").unwrap();
        assert!(run(
            &mut r,
            "CREATE DEFINER=`a`@`%` FUNCTION `g`() RETURNS text RETURN \"shop\""
        )
        .is_err());
    }
}
