//! The per-table content digest written to the dump's trailer and recomputed by
//! `restore --verify` on the scratch server.
//!
//! Each row is hashed (sha256 over its values as the server returned them in the text
//! protocol, each value length-prefixed, NULL distinct from the empty string); the table
//! digest is the sum of the row hashes as 256-bit integers modulo 2^256. A sum does not
//! depend on row order, and unlike XOR it counts duplicates: three equal rows digest
//! differently from one.

pub mod table;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDigest {
    rows: u64,
    /// Big-endian 256-bit accumulator as four u64 limbs, most significant first.
    sum: [u64; 4],
}

impl TableDigest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one row. `values` are the row's column values in the dumped column order.
    pub fn add_row<'a, I>(&mut self, values: I)
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        // The bytes hashed are, per value, 0xFF (NULL) or 0x00, its length (u64 LE) and
        // its bytes. Short ones are gathered first and hashed in one call: a call per
        // piece cost as much again as the hashing on rows of short values.
        let mut h = Sha256::new();
        let mut small = [0u8; 512];
        let mut n = 0;
        for v in values {
            match v {
                None => {
                    if n == small.len() {
                        h.update(&small[..n]);
                        n = 0;
                    }
                    small[n] = 0xFF;
                    n += 1;
                }
                Some(b) => {
                    if n + 9 + b.len() > small.len() {
                        h.update(&small[..n]);
                        n = 0;
                    }
                    small[n] = 0;
                    small[n + 1..n + 9].copy_from_slice(&(b.len() as u64).to_le_bytes());
                    n += 9;
                    if n + b.len() <= small.len() {
                        small[n..n + b.len()].copy_from_slice(b);
                        n += b.len();
                    } else {
                        h.update(&small[..n]);
                        n = 0;
                        h.update(b);
                    }
                }
            }
        }
        h.update(&small[..n]);
        self.add_hash(&h.finalize().into());
    }

    fn add_hash(&mut self, hash: &[u8; 32]) {
        let mut part = [0u64; 4];
        for (limb, p) in part.iter_mut().enumerate() {
            *p = u64::from_be_bytes(hash[limb * 8..limb * 8 + 8].try_into().expect("8 bytes"));
        }
        self.add_sum(&part);
        self.rows += 1;
    }

    fn add_sum(&mut self, part: &[u64; 4]) {
        let mut carry = 0u128;
        for limb in (0..4).rev() {
            let s = self.sum[limb] as u128 + part[limb] as u128 + carry;
            self.sum[limb] = s as u64;
            carry = s >> 64;
        }
    }

    /// Adds the rows digested in `other`: a table read in parts (key ranges, over several
    /// connections) digests as if read whole, in any order.
    pub fn merge(&mut self, other: &TableDigest) {
        self.add_sum(&other.sum);
        self.rows += other.rows;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The digest as 64 hex digits.
    pub fn hex(&self) -> String {
        self.sum.iter().map(|l| format!("{l:016x}")).collect()
    }
}

/// sha256 of a table definition, with the AUTO_INCREMENT counter removed (it is data, and
/// it is compared through the rows).
pub fn definition_digest(create_table: &str) -> String {
    hex::encode(Sha256::digest(
        strip_auto_increment(create_table).as_bytes(),
    ))
}

fn strip_auto_increment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" AUTO_INCREMENT=") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " AUTO_INCREMENT=".len()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(rows: &[&[Option<&[u8]>]]) -> TableDigest {
        let mut d = TableDigest::new();
        for r in rows {
            d.add_row(r.iter().copied());
        }
        d
    }

    /// The row hash, one update per piece: what `add_row` must equal however it gathers.
    fn row_hash_piecewise(values: &[Option<Vec<u8>>]) -> [u8; 32] {
        let mut h = Sha256::new();
        for v in values {
            match v {
                None => h.update([0xFFu8]),
                Some(b) => {
                    h.update([0u8]);
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
            }
        }
        h.finalize().into()
    }

    proptest::proptest! {
        #[test]
        fn gathered_row_hash_equals_the_piecewise_one(
            rows in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)),
                    0..40,
                ),
                1..4,
            )
        ) {
            let mut d = TableDigest::new();
            let mut want = TableDigest::new();
            for r in &rows {
                d.add_row(r.iter().map(|v| v.as_deref()));
                want.add_hash(&row_hash_piecewise(r));
            }
            proptest::prop_assert_eq!(d.hex(), want.hex());
        }
    }

    proptest::proptest! {
        /// A table read in parts digests as if read whole: any split point, any number of
        /// rows (the sums carry across limbs and wrap past 2^256).
        #[test]
        fn parts_merged_equal_the_whole(
            rows in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 0..300),
            cut in 0usize..300,
        ) {
            let cut = cut.min(rows.len());
            let mut whole = TableDigest::new();
            let (mut a, mut b) = (TableDigest::new(), TableDigest::new());
            for (i, r) in rows.iter().enumerate() {
                whole.add_row([Some(r.as_slice())]);
                if i < cut { a.add_row([Some(r.as_slice())]) } else { b.add_row([Some(r.as_slice())]) }
            }
            b.merge(&a);
            proptest::prop_assert_eq!(&b, &whole);
        }
    }

    #[test]
    fn merge_carries_and_wraps() {
        let ones = TableDigest {
            rows: 1,
            sum: [u64::MAX; 4],
        };
        let mut d = TableDigest {
            rows: 2,
            sum: [0, 0, 0, 1],
        };
        d.merge(&ones);
        assert_eq!(
            d,
            TableDigest {
                rows: 3,
                sum: [0; 4]
            }
        );
    }

    #[test]
    fn order_independent_duplicate_sensitive() {
        let a: &[Option<&[u8]>] = &[Some(b"1"), None];
        let b: &[Option<&[u8]>] = &[Some(b"2"), Some(b"")];
        assert_eq!(digest(&[a, b]).hex(), digest(&[b, a]).hex());
        assert_ne!(digest(&[a]).hex(), digest(&[a, a, a]).hex());
        assert_ne!(
            digest(&[a, a]).hex(),
            digest(&[]).hex(),
            "pairs must not cancel like XOR"
        );
        // NULL differs from empty string, and value boundaries matter.
        assert_ne!(digest(&[&[None]]).hex(), digest(&[&[Some(b"")]]).hex());
        assert_ne!(
            digest(&[&[Some(b"ab"), Some(b"c")]]).hex(),
            digest(&[&[Some(b"a"), Some(b"bc")]]).hex()
        );
        // Swapping values between rows changes the digest.
        let r1: &[Option<&[u8]>] = &[Some(b"x"), Some(b"1")];
        let r2: &[Option<&[u8]>] = &[Some(b"y"), Some(b"2")];
        let s1: &[Option<&[u8]>] = &[Some(b"x"), Some(b"2")];
        let s2: &[Option<&[u8]>] = &[Some(b"y"), Some(b"1")];
        assert_ne!(digest(&[r1, r2]).hex(), digest(&[s1, s2]).hex());
        assert_eq!(digest(&[a, b]).rows(), 2);
    }

    #[test]
    fn carry_propagates() {
        let mut d = TableDigest::new();
        d.add_hash(&[0xFF; 32]);
        d.add_hash(&{
            let mut x = [0u8; 32];
            x[31] = 1;
            x
        });
        assert_eq!(d.hex(), "0".repeat(64));
    }

    #[test]
    fn auto_increment_is_ignored() {
        assert_eq!(
            definition_digest(
                "CREATE TABLE t (a int) ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT CHARSET=x"
            ),
            definition_digest("CREATE TABLE t (a int) ENGINE=InnoDB DEFAULT CHARSET=x")
        );
        assert_ne!(
            definition_digest("CREATE TABLE t (a int)"),
            definition_digest("CREATE TABLE t (a bigint)")
        );
    }
}
