//! Function volatility from `pg_proc`, as a lookup the routing rules can use.
//!
//! Built from rows the monitor reads once per database (`FUNCTIONS_QUERY`); pure after
//! that. An unqualified name is looked up in every schema and an overloaded name answers
//! with its most volatile variant, so the answer errs towards the primary.

use std::collections::HashMap;

use super::functions::Volatility;
use super::types::FunctionRef;

/// The catalog query: schema, name and `provolatile` of every function.
pub const FUNCTIONS_QUERY: &str =
    "SELECT n.nspname::text, p.proname::text, p.provolatile::text FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// Volatility of every function of one database.
#[derive(Debug, Default, Clone)]
pub struct FunctionCatalog {
    by_name: HashMap<String, Vec<(String, Volatility)>>,
}

impl FunctionCatalog {
    /// Builds the catalog from (schema, name, provolatile) rows; unknown provolatile
    /// codes count as volatile.
    pub fn from_rows<I, S>(rows: I) -> Self
    where
        I: IntoIterator<Item = (S, S, S)>,
        S: Into<String>,
    {
        let mut by_name: HashMap<String, Vec<(String, Volatility)>> = HashMap::new();
        for (schema, name, code) in rows {
            let volatility = match code.into().as_str() {
                "i" => Volatility::Immutable,
                "s" => Volatility::Stable,
                _ => Volatility::Volatile,
            };
            by_name.entry(name.into()).or_default().push((schema.into(), volatility));
        }
        Self { by_name }
    }

    /// The most volatile function of that name (in that schema, when qualified).
    pub fn lookup(&self, f: &FunctionRef) -> Option<Volatility> {
        self.by_name
            .get(&f.name)?
            .iter()
            .filter(|(schema, _)| f.schema.as_ref().is_none_or(|s| s == schema))
            .map(|(_, v)| *v)
            .max_by_key(|v| match v {
                Volatility::Immutable => 0,
                Volatility::Stable => 1,
                Volatility::Volatile => 2,
            })
    }

    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(schema: Option<&str>, name: &str) -> FunctionRef {
        FunctionRef { schema: schema.map(str::to_string), name: name.to_string() }
    }

    #[test]
    fn overloads_and_schemas_answer_conservatively() {
        let c = FunctionCatalog::from_rows([
            ("pg_catalog", "now", "s"),
            ("pg_catalog", "abs", "i"),
            ("public", "report", "s"),
            ("audit", "report", "v"),
            ("public", "odd", "x"),
        ]);
        assert_eq!(c.lookup(&f(None, "now")), Some(Volatility::Stable));
        assert_eq!(c.lookup(&f(Some("pg_catalog"), "abs")), Some(Volatility::Immutable));
        assert_eq!(c.lookup(&f(Some("public"), "report")), Some(Volatility::Stable));
        assert_eq!(c.lookup(&f(None, "report")), Some(Volatility::Volatile), "any schema may be on the search_path");
        assert_eq!(c.lookup(&f(Some("other"), "report")), None);
        assert_eq!(c.lookup(&f(None, "missing")), None);
        assert_eq!(c.lookup(&f(None, "odd")), Some(Volatility::Volatile));
        assert_eq!(c.len(), 5);
    }
}
