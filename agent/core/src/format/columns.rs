//! Which columns of a table hold data, how they are read and how their values are
//! written: the one definition the dumper (writing) and the drill (re-digesting on a
//! scratch server) share, so both see exactly the same columns and bytes.

use mysql_async::{Row, Value};

use super::{push_hex, push_quoted, qualified, quote_ident};

/// A row in the text protocol: each value as the bytes the server sent, NULL as None.
pub type RawRow = Vec<Option<Vec<u8>>>;

/// A row's values as the server sent them, kept where they are (no copy, no second
/// vector): read each with [`bytes_of`]. In the text protocol every value is bytes or
/// NULL; any other kind is replaced by its SQL text, as [`raw`] does.
pub fn values(row: Row) -> Vec<Option<Value>> {
    let mut v = row.unwrap_raw();
    for x in v.iter_mut() {
        match x {
            None | Some(Value::NULL) | Some(Value::Bytes(_)) => {}
            Some(other) => *x = Some(Value::Bytes(other.as_sql(true).into_bytes())),
        }
    }
    v
}

/// A value of [`values`]: its bytes, or None for NULL.
pub fn bytes_of(v: &Option<Value>) -> Option<&[u8]> {
    match v {
        Some(Value::Bytes(b)) => Some(b),
        _ => None,
    }
}

pub fn raw(row: Row) -> RawRow {
    row.unwrap_raw()
        .into_iter()
        .map(|v| match v {
            None | Some(Value::NULL) => None,
            Some(Value::Bytes(b)) => Some(b),
            Some(other) => Some(other.as_sql(true).into_bytes()),
        })
        .collect()
}

/// A value as text (lossy), for names and metadata.
pub fn text(v: &Option<Vec<u8>>) -> String {
    v.as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// How a column's values are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColKind {
    /// Integers, DECIMAL, YEAR: the server's text is a valid literal.
    Number,
    /// FLOAT/DOUBLE: as text, with negative zero kept negative.
    Float,
    Bits,
    /// Text in a charset whose bytes are valid in a utf8mb4 string literal.
    Utf8Text,
    /// Text in a single-byte charset (latin1, cp1251, ...): `_cs '...'`, the bytes as they
    /// are with the six special ones escaped (a value all ASCII: a plain string, but in
    /// swe7). Exact for the reason `Binary` is: the stream
    /// is lexed as utf8mb4, whose multi-byte characters never hold a quote or backslash
    /// byte, and the introducer takes the bytes as they are, unconverted; every byte is a
    /// character in a single-byte charset.
    SingleByteText(String),
    /// Text in a multi-byte charset (sjis, big5, gbk, utf16, ...): `_cs X'..'`, exact
    /// whatever the bytes.
    OtherText(String),
    /// Binary strings and geometry: `_binary '...'` with the six special bytes escaped.
    /// Exact because the stream's client charset is utf8mb4, whose lexer never takes an
    /// escaped byte as part of a multi-byte character; and smaller after gzip than hex.
    Binary,
    /// Temporal, INET, UUID and unknown types: an escaped string.
    Quoted,
}

pub fn classify(data_type: &str, charset: Option<&str>) -> ColKind {
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
        | "numeric" | "year" => ColKind::Number,
        "float" | "double" | "real" => ColKind::Float,
        "bit" => ColKind::Bits,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => ColKind::Binary,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "json" => match charset {
            None | Some("binary") => ColKind::Binary,
            Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii") => ColKind::Utf8Text,
            Some(cs) if SINGLE_BYTE_CHARSETS.contains(&cs) => {
                ColKind::SingleByteText(cs.to_string())
            }
            Some(cs) => ColKind::OtherText(cs.to_string()),
        },
        _ => ColKind::Quoted,
    }
}

/// MariaDB's charsets of one byte per character (`MAXLEN = 1` in
/// information_schema.CHARACTER_SETS, 10.11), but `ascii` and `binary`, written otherwise.
pub const SINGLE_BYTE_CHARSETS: &[&str] = &[
    "armscii8", "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866", "dec8",
    "geostd8", "greek", "hebrew", "hp8", "keybcs2", "koi8r", "koi8u", "latin1", "latin2", "latin5",
    "latin7", "macce", "macroman", "swe7", "tis620",
];

/// `0x..`: a hex literal, which in a BIT column's numeric context is the big-endian value.
pub fn push_hex_number(out: &mut Vec<u8>, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if v.is_empty() {
        out.push(b'0');
        return;
    }
    out.extend_from_slice(b"0x");
    for &b in v {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

pub fn push_value(out: &mut Vec<u8>, kind: &ColKind, v: &[u8]) {
    match kind {
        ColKind::Number => out.extend_from_slice(v),
        ColKind::Float => {
            out.extend_from_slice(v);
            // "-0" would parse as the integer 0; "-0e0" is the double negative zero.
            if v == b"-0" {
                out.extend_from_slice(b"e0");
            }
        }
        ColKind::Bits => push_hex_number(out, v),
        ColKind::Utf8Text | ColKind::Quoted => push_quoted(out, v),
        // ASCII is the same bytes in utf8mb4 and in every single-byte charset but swe7
        // (which puts letters at `[\]{|}` and others): the plain string converts exactly.
        ColKind::SingleByteText(cs) if v.is_ascii() && cs != "swe7" => push_quoted(out, v),
        ColKind::SingleByteText(cs) => {
            out.push(b'_');
            out.extend_from_slice(cs.as_bytes());
            out.push(b' ');
            push_quoted(out, v);
        }
        ColKind::OtherText(cs) => {
            out.push(b'_');
            out.extend_from_slice(cs.as_bytes());
            out.push(b' ');
            push_hex(out, v);
        }
        ColKind::Binary => {
            out.extend_from_slice(b"_binary ");
            push_quoted(out, v);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: ColKind,
    /// What the SELECT reads: the column, or for FLOAT `CAST(col AS DOUBLE)`, because the
    /// server prints FLOAT with 6 significant digits, which loses bits; the double's
    /// shortest form is exact and converts back to the same float on insert.
    pub select: String,
}

pub const COLUMNS_QUERY: &str =
    "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME, EXTRA, IS_GENERATED \
     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=";

/// The columns whose values are dumped, from a COLUMNS_QUERY row: generated columns and
/// system-versioning period columns are computed by the server, never inserted.
pub fn data_column(r: &RawRow) -> Option<(String, Column)> {
    let extra = text(&r[4]).to_ascii_uppercase();
    if text(&r[5]).eq_ignore_ascii_case("ALWAYS")
        || extra.contains("GENERATED")
        || extra.contains("ROW START")
        || extra.contains("ROW END")
    {
        return None;
    }
    let name = text(&r[1]);
    let data_type = text(&r[2]);
    let cs = r[3]
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let select = if data_type.eq_ignore_ascii_case("float") {
        format!("CAST({} AS DOUBLE)", quote_ident(&name))
    } else {
        quote_ident(&name)
    };
    Some((
        text(&r[0]),
        Column {
            kind: classify(&data_type, cs.as_deref()),
            name,
            select,
        },
    ))
}

pub fn select_rows_sql(db: &str, table: &str, cols: &[Column]) -> String {
    let list: Vec<&str> = cols.iter().map(|c| c.select.as_str()).collect();
    format!("SELECT {} FROM {}", list.join(","), qualified(db, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("bigint", None), ColKind::Number);
        assert_eq!(classify("varchar", Some("utf8mb4")), ColKind::Utf8Text);
        assert_eq!(
            classify("varchar", Some("latin1")),
            ColKind::SingleByteText("latin1".into())
        );
        assert_eq!(
            classify("text", Some("sjis")),
            ColKind::OtherText("sjis".into())
        );
        assert_eq!(classify("varbinary", None), ColKind::Binary);
        assert_eq!(classify("point", None), ColKind::Binary);
        assert_eq!(classify("inet6", None), ColKind::Quoted);
        let mut v = Vec::new();
        push_value(&mut v, &ColKind::Float, b"-0");
        assert_eq!(v, b"-0e0");
        v.clear();
        push_value(
            &mut v,
            &ColKind::SingleByteText("latin1".into()),
            b"caf\xE9 'x'\\",
        );
        assert_eq!(v, b"_latin1 'caf\xE9 \\'x\\'\\\\'");
        v.clear();
        push_value(&mut v, &ColKind::SingleByteText("latin1".into()), b"a'b");
        assert_eq!(v, b"'a\\'b'");
        v.clear();
        push_value(&mut v, &ColKind::SingleByteText("swe7".into()), b"a[b");
        assert_eq!(v, b"_swe7 'a[b'");
        v.clear();
        push_value(&mut v, &ColKind::OtherText("sjis".into()), &[0x95, 0x5C]);
        assert_eq!(v, b"_sjis X'955C'");
        v.clear();
        push_value(&mut v, &ColKind::Bits, &[1, 0xFF]);
        assert_eq!(v, b"0x01FF");
        v.clear();
        push_value(&mut v, &ColKind::Binary, b"a'\0");
        assert_eq!(v, b"_binary 'a\\'\\0'");
    }
}
