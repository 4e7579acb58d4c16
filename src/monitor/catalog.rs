//! Reads a database's function catalog for the routing rules.

use crate::router::{FunctionCatalog, FUNCTIONS_QUERY};

/// Loads the volatility of every function in the database `client` is connected to.
pub async fn load_functions(client: &tokio_postgres::Client) -> Result<FunctionCatalog, tokio_postgres::Error> {
    let rows = client.query(FUNCTIONS_QUERY, &[]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?, row.try_get::<_, String>(2)?));
    }
    Ok(FunctionCatalog::from_rows(out))
}
