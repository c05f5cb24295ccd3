//! SQL assembled at run time (optional filters, multi-row inserts), on either backend.
//!
//! sqlx's `QueryBuilder<Any>` writes `?` placeholders whatever the backend, and PostgreSQL
//! refuses them (launchbadge/sqlx#3000). This builder writes the placeholder the backend in
//! use reads: `?` on SQLite (anonymous parameters are also the cheaper ones to bind there) and
//! `$n` on PostgreSQL. Only `&'static str` fragments reach the text; every value is bound.

use std::fmt::Write;

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::{Query, QueryAs};
use sqlx::{Any, Arguments, AssertSqlSafe, Encode, FromRow, Type};

use super::Backend;

pub(crate) struct SqlBuilder {
    sql: String,
    arguments: AnyArguments,
    backend: Backend,
    conditions: usize,
}

impl SqlBuilder {
    pub fn new(backend: Backend, sql: &'static str) -> Self {
        Self {
            sql: sql.to_string(),
            arguments: AnyArguments::default(),
            backend,
            conditions: 0,
        }
    }

    pub fn push(&mut self, sql: &'static str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Binds `value` where the text stands now.
    pub fn push_bind<'t, T: Encode<'t, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        // Encoding into `Any`'s owned values cannot fail for the types samvault binds
        // (integers, text, bytes); sqlx's own QueryBuilder makes the same assumption.
        self.arguments
            .add(value)
            .expect("a value encodes for the Any driver");
        match self.backend {
            Backend::Sqlite => self.sql.push('?'),
            Backend::Postgres => {
                write!(self.sql, "${}", self.arguments.len()).expect("writing to a String");
            }
        }
        self
    }

    /// Starts one more condition: ` WHERE ` the first time, ` AND ` after that.
    pub fn and_where(&mut self, sql: &'static str) -> &mut Self {
        self.conditions += 1;
        self.push(if self.conditions == 1 {
            " WHERE "
        } else {
            " AND "
        })
        .push(sql)
    }

    pub fn build(self) -> Query<'static, Any, AnyArguments> {
        sqlx::query_with(AssertSqlSafe(self.sql), self.arguments)
    }

    pub fn build_query_as<T>(self) -> QueryAs<'static, Any, T, AnyArguments>
    where
        T: for<'r> FromRow<'r, AnyRow>,
    {
        sqlx::query_as_with(AssertSqlSafe(self.sql), self.arguments)
    }

    #[cfg(test)]
    fn sql(&self) -> &str {
        &self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(backend: Backend) -> String {
        let mut sql = SqlBuilder::new(backend, "SELECT a FROM t");
        sql.and_where("a = ").push_bind("x");
        sql.and_where("(b, c) > (")
            .push_bind(1i64)
            .push(", ")
            .push_bind(2i64)
            .push(")");
        sql.push(" LIMIT ").push_bind(3i64);
        sql.sql().to_string()
    }

    #[test]
    fn each_backend_gets_its_own_placeholders() {
        assert_eq!(
            filtered(Backend::Sqlite),
            "SELECT a FROM t WHERE a = ? AND (b, c) > (?, ?) LIMIT ?"
        );
        assert_eq!(
            filtered(Backend::Postgres),
            "SELECT a FROM t WHERE a = $1 AND (b, c) > ($2, $3) LIMIT $4"
        );
    }

    #[tokio::test]
    async fn bound_values_arrive_in_order() {
        let url = secrecy::SecretString::from("sqlite::memory:");
        let db = super::super::Db::connect(&url).await.unwrap();
        let mut sql = SqlBuilder::new(db.backend(), "SELECT ");
        sql.push_bind(7i64)
            .push(" AS n, ")
            .push_bind("it's")
            .push(" AS s");
        let (n, s): (i64, String) = sql.build_query_as().fetch_one(db.pool()).await.unwrap();
        assert_eq!((n, s.as_str()), (7, "it's"));
    }
}
