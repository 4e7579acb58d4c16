//! The shape of a query: its text with every literal constant replaced by `?`.
//!
//! Applications send the same statement with different constants (`WHERE id = 42`,
//! `WHERE id = 43`); parsing each costs tens of microseconds. Where a statement may run
//! never depends on a constant's value for reads and writes, so their classification can
//! be shared by every query of one shape. A small lexer finds string literals (standard,
//! `E''` with backslash escapes, `B''`, `X''`, `N''`, `U&''`), dollar-quoted strings and
//! numbers, and keeps everything else as written: identifiers, quoted identifiers,
//! parameters (`$1`), comments (hints live there), white space. Anything it is not sure
//! of gives no shape, and the text is classified on its own.

/// The query's shape, or `None` when it has no literal or the lexer is unsure.
pub(crate) fn shape_key(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut copied = 0; // b[copied..i] is still to be copied
    let mut replaced = false;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (_, after) = super::hint::block_comment(&sql[i..])?;
                i = sql.len() - after.len();
            }
            b'"' => {
                i = quoted_end(b, i + 1, b'"', false)?;
            }
            b'\'' => {
                // A prefix letter (E, B, X, N) or U& right before makes it one token.
                let free = |at: usize| at == 0 || !ident(b[at - 1]);
                let (start, escapes) = if i >= 1 && matches!(b[i - 1], b'e' | b'E') && free(i - 1) {
                    (i - 1, true)
                } else if i >= 1 && matches!(b[i - 1], b'b' | b'B' | b'x' | b'X' | b'n' | b'N') && free(i - 1) {
                    (i - 1, false)
                } else if i >= 2 && b[i - 1] == b'&' && matches!(b[i - 2], b'u' | b'U') && free(i - 2) {
                    (i - 2, false)
                } else if i >= 1 && ident(b[i - 1]) {
                    // Some other word directly before a quote: unusual, give up.
                    return None;
                } else {
                    (i, false)
                };
                if start < copied {
                    return None;
                }
                let end = quoted_end(b, i + 1, b'\'', escapes)?;
                out.push_str(&sql[copied..start]);
                out.push('?');
                copied = end;
                i = end;
                replaced = true;
            }
            b'$' if !ident(prev) => {
                // $1 is a parameter; $tag$…$tag$ a dollar-quoted string.
                let tag_end = b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_')).map(|n| i + 1 + n)?;
                if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i = tag_end;
                    continue;
                }
                if b[tag_end] != b'$' {
                    return None;
                }
                let tag = &sql[i..=tag_end];
                let body = tag_end + 1;
                let close = sql[body..].find(tag)? + body;
                out.push_str(&sql[copied..i]);
                out.push('?');
                i = close + tag.len();
                copied = i;
                replaced = true;
            }
            b'0'..=b'9' if !ident(prev) && prev != b'.' => {
                let start = i;
                while i < b.len() {
                    match b[i] {
                        b'0'..=b'9' | b'.' | b'_' => i += 1,
                        b'e' | b'E' if b.get(i + 1).is_some_and(|c| c.is_ascii_digit() || *c == b'+' || *c == b'-') => i += 2,
                        _ => break,
                    }
                }
                if i < b.len() && ident(b[i]) {
                    // 0x1F, 1abc…: not a plain number; leave it as written.
                    continue;
                }
                out.push_str(&sql[copied..start]);
                out.push('?');
                copied = i;
                replaced = true;
            }
            _ => i += 1,
        }
    }
    if !replaced {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// Index just past the closing quote of a quoted token whose body starts at `i`.
fn quoted_end(b: &[u8], mut i: usize, quote: u8, backslash_escapes: bool) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash_escapes => i += 2,
            c if c == quote => {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::shape_key;

    #[test]
    fn literals_become_placeholders() {
        let cases: &[(&str, Option<&str>)] = &[
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 4211;", Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")),
            ("SELECT * FROM t WHERE a = 'it''s' AND b = 1.5e-3", Some("SELECT * FROM t WHERE a = ? AND b = ?")),
            ("SELECT E'a\\'b', x FROM t", Some("SELECT ?, x FROM t")),
            ("SELECT $$ it's $$, $tag$ $$ $tag$", Some("SELECT ?, ?")),
            ("SELECT * FROM t WHERE id = $1", None),
            ("SELECT * FROM t2 WHERE c3 = $1 AND d = 7", Some("SELECT * FROM t2 WHERE c3 = $1 AND d = ?")),
            ("/*NO LOAD BALANCE*/ SELECT 1", Some("/*NO LOAD BALANCE*/ SELECT ?")),
            ("SELECT 1 -- it's 2\n", Some("SELECT ? -- it's 2\n")),
            ("SELECT \"it's\" FROM t WHERE x = 3", Some("SELECT \"it's\" FROM t WHERE x = ?")),
            ("SELECT U&'d\\0061t' , B'101', X'1F', N'x'", Some("SELECT ? , ?, ?, ?")),
            ("SELECT 'unterminated", None),
            ("SELECT 1 /* open", None),
            ("SELECT a1, t.col2 FROM t", None),
            ("SELECT 0x1F", None),
            ("SELECT pg_catalog.nextval('s'::regclass)", Some("SELECT pg_catalog.nextval(?::regclass)")),
            ("SELECT 'é' || 'ü'", Some("SELECT ? || ?")),
        ];
        for (sql, want) in cases {
            assert_eq!(shape_key(sql).as_deref(), *want, "{sql:?}");
        }
    }
}
