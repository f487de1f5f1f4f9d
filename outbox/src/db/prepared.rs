//! Hand-written SQL that diesel-async keeps as a prepared statement.
//!
//! diesel's `sql_query` marks itself unsafe to cache, so diesel-async prepares it again on every
//! run: a Parse round trip, then Bind/Execute — two round trips for every statement, and a
//! parse and plan on the server each time. [`prepared`] takes the same SQL and binds but lets the
//! connection's statement cache keep it (keyed by the SQL text and the bind types), so after the
//! first run each statement is one round trip. On the writer's path that is one round trip less
//! per `publish`; on the relay's, one less per claim and per mark statement.
//!
//! Public for the `inbox` crate's statements, which use it the same way (PostgreSQL only).

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error, QueryResult};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// `sql` with `$1`, `$2`, ... placeholders; bind values in placeholder order with [`Prepared::bind`].
pub fn prepared(sql: &'static str) -> Prepared<()> {
    Prepared { sql, binds: () }
}

/// A statement built by [`prepared`].
#[must_use = "queries run only when executed"]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// One bound value on top of the earlier ones.
pub struct Bind<Prev, ST, V> {
    prev: Prev,
    value: V,
    sql_type: PhantomData<fn() -> ST>,
}

impl<B: Binds> Prepared<B> {
    /// Binds the value of the next placeholder (`$1` first).
    pub fn bind<ST, V>(self, value: V) -> Prepared<Bind<B, ST, V>>
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send,
    {
        Prepared { sql: self.sql, binds: Bind { prev: self.binds, value, sql_type: PhantomData } }
    }
}

/// The values bound so far; `$n` is the n-th.
pub trait Binds: Send {
    /// How many values are bound.
    const LEN: usize;

    /// Pushes the value of `$n`; `false` when there is none.
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<bool>;
}

impl Binds for () {
    const LEN: usize = 0;

    fn push<'b>(&'b self, _: usize, _: &mut AstPass<'_, 'b, Pg>) -> QueryResult<bool> {
        Ok(false)
    }
}

impl<Prev: Binds, ST, V> Binds for Bind<Prev, ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg> + Send,
{
    const LEN: usize = Prev::LEN + 1;

    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<bool> {
        if n == Self::LEN {
            out.push_bind_param::<ST, V>(&self.value)?;
            Ok(true)
        } else {
            self.prev.push(n, out)
        }
    }
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Each `$n` becomes a bind of the n-th value (PostgreSQL's query builder writes the
        // placeholder back); everything else is copied as is.
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
            out.push_sql(&rest[..at + usize::from(digits == 0)]);
            if digits > 0 {
                let placeholder = &rest[at..at + 1 + digits];
                let pushed = match placeholder[1..].parse::<usize>() {
                    Ok(n) => self.binds.push(n, &mut out)?,
                    Err(_) => false,
                };
                if !pushed {
                    return Err(Error::QueryBuilderError(format!("no value bound for {placeholder}").into()));
                }
            }
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    // Cached by SQL text and bind types instead of by Rust type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Integer, Text};

    use super::*;

    #[test]
    fn placeholders_become_binds_in_their_own_order() {
        let q = prepared("SELECT $2::text, $1 + 1, $1, '$x' AS d").bind::<Integer, _>(7).bind::<Text, _>("a");
        assert_eq!(
            diesel::debug_query::<Pg, _>(&q).to_string(),
            r#"SELECT $1::text, $2 + 1, $3, '$x' AS d -- binds: ["a", 7, 7]"#
        );
    }

    #[test]
    fn kept_in_the_statement_cache_unlike_sql_query() {
        let q = prepared("SELECT $1").bind::<Integer, _>(1);
        assert!(q.is_safe_to_cache_prepared(&Pg).expect("cacheable"));
        let plain = diesel::sql_query("SELECT $1").bind::<Integer, _>(1);
        assert!(!plain.is_safe_to_cache_prepared(&Pg).expect("answers"));
    }

    #[test]
    fn a_placeholder_without_a_value_is_an_error() {
        let q = prepared("SELECT $1, $2").bind::<Integer, _>(1);
        let err = q.to_sql(&mut diesel::pg::PgQueryBuilder::default(), &Pg).expect_err("$2 has no value");
        assert!(err.to_string().contains("no value bound for $2"), "{err}");
    }
}
