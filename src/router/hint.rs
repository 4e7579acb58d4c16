//! Routing hints in the comments that lead a query.
//!
//! Only two comments mean anything: Pgpool-II's `/*NO LOAD BALANCE*/` and our
//! `/* pgvigil: primary */`. Any other leading comment (ORM tags, sqlcommenter…) is
//! ignored; Pgpool-II sends every query with a leading comment to the primary.

/// Display form of the Pgpool-II hint.
pub(crate) const NO_LOAD_BALANCE: &str = "/*NO LOAD BALANCE*/";
/// Display form of our hint.
pub(crate) const PGVIGIL_PRIMARY: &str = "/* pgvigil: primary */";

/// The hint among the comments before the first token, if any.
pub(crate) fn leading_hint(sql: &str) -> Option<&'static str> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if rest.starts_with("/*") {
            let (body, after) = block_comment(rest)?;
            if let Some(hint) = hint_of(body) {
                return Some(hint);
            }
            rest = after;
        } else {
            return None;
        }
    }
}

/// Splits a leading block comment (nested, as PostgreSQL allows) into its body and
/// the text after it; `None` when it is not closed.
pub(crate) fn block_comment(s: &str) -> Option<(&str, &str)> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    // `i` is just past ASCII bytes, so both slices are on char boundaries.
                    return Some((&s[2..i - 2], &s[i..]));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Recognises a hint body, ignoring case and spacing.
fn hint_of(body: &str) -> Option<&'static str> {
    let words: Vec<String> = body
        .split(|c: char| c.is_whitespace() || c == ':')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["no", "load", "balance"] => Some(NO_LOAD_BALANCE),
        ["pgvigil", "primary"] if body.contains(':') => Some(PGVIGIL_PRIMARY),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/*NO LOAD BALANCE*/ SELECT 1", Some(NO_LOAD_BALANCE)),
            ("  /* no load balance */SELECT 1", Some(NO_LOAD_BALANCE)),
            ("/* pgvigil: primary */ SELECT 1", Some(PGVIGIL_PRIMARY)),
            ("/*pgvigil:primary*/ SELECT 1", Some(PGVIGIL_PRIMARY)),
            ("/* app=web */ /*NO LOAD BALANCE*/ SELECT 1", Some(NO_LOAD_BALANCE)),
            ("-- note\n/* pgvigil: primary */ SELECT 1", Some(PGVIGIL_PRIMARY)),
            ("/* outer /* nested */ still */ /*NO LOAD BALANCE*/ SELECT", Some(NO_LOAD_BALANCE)),
            ("/* app=web */ SELECT 1", None),
            ("SELECT 1 /*NO LOAD BALANCE*/", None),
            ("/* pgvigil primary */ SELECT 1", None),
            ("/* NO LOAD BALANCE", None),
            ("/* unterminated /* nested */", None),
            ("-- only a line comment", None),
            ("", None),
            ("/*é*/ /*NO LOAD BALANCE*/", Some(NO_LOAD_BALANCE)),
        ];
        for (sql, want) in cases {
            assert_eq!(leading_hint(sql), *want, "{sql:?}");
        }
    }
}
