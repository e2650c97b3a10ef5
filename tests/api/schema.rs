//! Schema parity: `migrations/sqlite` and `migrations/postgres` must build the same schema.
//!
//! Both databases are migrated by herd's own code (`Db::open` then `migrate`, nothing else
//! of herd's API) and then read back through catalogs with plain sqlx connections. Each
//! engine's schema becomes a map of facts (`table T`, `column T.c`, `index N`, `unique
//! constraint ...`) with an engine-neutral description, and the test fails with a fact-by-fact
//! diff when the maps differ.
//!
//! What is compared:
//! - the set of tables, and each table's primary key columns (in key order);
//! - each table's columns (by name; column order is not compared, `ALTER TABLE ADD COLUMN`
//!   appends on both engines anyway), each column's nullability and its type class
//!   (integer / text / real / boolean / blob / numeric), see [`sqlite_type_class`] and
//!   [`postgres_type_class`];
//! - each index by name, with its table, key columns in order, uniqueness and whether it is
//!   partial (the `WHERE` text is not compared: PostgreSQL re-renders it);
//! - indexes behind inline `UNIQUE` constraints, by table and columns (see below).
//!
//! What is ignored, and why:
//! - sqlx's `_sqlx_migrations` bookkeeping table: not part of herd's schema, and its rows
//!   (checksums of engine-specific files) differ by construction;
//! - SQLite's `sqlite_*` tables (`sqlite_sequence`, created by `AUTOINCREMENT`; `sqlite_stat*`
//!   after `ANALYZE`): engine internals with no PostgreSQL counterpart (an identity column's
//!   sequence is not a table);
//! - the indexes behind primary keys (SQLite `sqlite_autoindex_*` with origin `pk`, or none at
//!   all for an `INTEGER PRIMARY KEY`; PostgreSQL `*_pkey`, found by `indisprimary` rather than
//!   by name): their names are engine-generated, and the primary key itself is compared as the
//!   table's key columns instead;
//! - not ignored: SQLite autoindexes behind an inline `UNIQUE` constraint (origin `u`) and
//!   PostgreSQL indexes behind a `UNIQUE` constraint (`*_key`). Their names are engine-generated
//!   too, so they are compared under an engine-neutral key, `unique constraint T (cols)`; blindly
//!   dropping every autoindex would hide a uniqueness rule present on one engine only;
//! - triggers, functions, defaults, foreign keys and `CHECK`s: not compared. The device
//!   counters are kept by per-row triggers on SQLite and by statement-level triggers with
//!   PL/pgSQL functions on PostgreSQL (0006), so trigger sets differ on purpose.
//!
//! Nullability of primary key columns: PostgreSQL makes every primary key column `NOT NULL`.
//! SQLite reports `notnull = 0` for a key column not declared `NOT NULL`; an `INTEGER PRIMARY
//! KEY` cannot hold NULL anyway (it is the rowid), but in a rowid table a `TEXT PRIMARY KEY`
//! does accept NULL, a documented SQLite legacy quirk. Both migration sets declare the same
//! `id TEXT PRIMARY KEY`, so that is an engine difference, not drift between the files: the
//! test counts SQLite key columns as `NOT NULL` (herd always supplies the ids). Making SQLite
//! reject NULL ids would mean rebuilding every such table, not what this test is for.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Connection, Row};

use crate::helpers::{create_postgres_database, postgres_variant_runs};

/// One engine's schema: what a fact is about (`column devices.name`) -> its description.
type Schema = BTreeMap<String, String>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_build_the_same_schema() {
    // Comparing needs both engines: skipped locally without PostgreSQL, a failure under CI.
    if !postgres_variant_runs() {
        return;
    }

    let data_dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", data_dir.path().join("schema.db").display());
    migrate(&sqlite_url).await;
    let sqlite = sqlite_schema(&sqlite_url).await;

    let database = create_postgres_database().await;
    let postgres_url = database.url();
    migrate(&postgres_url).await;
    let postgres = postgres_schema(&postgres_url).await;

    // A catalog query that silently returns nothing would make any two schemas "equal".
    for (engine, schema) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        assert!(
            schema.contains_key("table devices") && schema.contains_key("column devices.tenant_id"),
            "the {engine} introspection found no devices table: {schema:#?}"
        );
    }

    let differences = diff(&sqlite, &postgres);
    assert!(
        differences.is_empty(),
        "migrations/sqlite and migrations/postgres build different schemas ({} difference(s)); \
         add a migration to the engine that lags (never edit an applied one):\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// Migrates the database at `url` with herd's own code. These are the test's only two calls
/// into herd, so that moving `herd::store` elsewhere changes nothing here but the path.
async fn migrate(url: &str) {
    let (db, _system) = herd::store::Db::open(url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    db.migrate().await.unwrap_or_else(|e| panic!("migrating {url} failed: {e}"));
}

/// The facts on which `sqlite` and `postgres` disagree, one readable block each.
fn diff(sqlite: &Schema, postgres: &Schema) -> Vec<String> {
    let keys: BTreeSet<&String> = sqlite.keys().chain(postgres.keys()).collect();
    keys.into_iter()
        .filter(|key| sqlite.get(*key) != postgres.get(*key))
        .map(|key| {
            let describe = |value: Option<&String>| value.map_or("(missing)".to_string(), Clone::clone);
            format!(
                "  {key}\n      sqlite:     {}\n      postgres:   {}",
                describe(sqlite.get(key)),
                describe(postgres.get(key))
            )
        })
        .collect()
}

fn nullability(not_null: bool) -> &'static str {
    if not_null {
        "not null"
    } else {
        "null"
    }
}

fn index_description(table: &str, columns: &[String], unique: bool, partial: bool) -> String {
    let mut description = format!("on {table} ({})", columns.join(", "));
    if unique {
        description.push_str(", unique");
    }
    if partial {
        description.push_str(", partial");
    }
    description
}

/// The type class of a SQLite declared type, by SQLite's own affinity rules (section 3.1 of
/// "Datatypes In SQLite"), except that `BOOL...` is told apart from the other numerics because
/// herd declares `BOOLEAN` on both engines.
fn sqlite_type_class(declared: &str) -> String {
    let upper = declared.to_ascii_uppercase();
    let class = if upper.contains("BOOL") {
        "boolean"
    } else if upper.contains("INT") {
        "integer"
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        "text"
    } else if upper.is_empty() || upper.contains("BLOB") {
        "blob"
    } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        "real"
    } else if upper.starts_with("NUMERIC") || upper.starts_with("DECIMAL") {
        "numeric"
    } else {
        // DATE, TIMESTAMP, JSON...: numeric affinity on SQLite, never equal to a PostgreSQL type.
        return format!("other ({declared})");
    };
    class.to_string()
}

/// The type class of a PostgreSQL `information_schema.columns.data_type`.
fn postgres_type_class(data_type: &str) -> String {
    let class = match data_type {
        "smallint" | "integer" | "bigint" => "integer",
        "text" | "character varying" | "character" => "text",
        "real" | "double precision" => "real",
        "boolean" => "boolean",
        "bytea" => "blob",
        "numeric" => "numeric",
        // timestamptz, jsonb, uuid...: herd stores times as integers and JSON and ids as text.
        other => return format!("other ({other})"),
    };
    class.to_string()
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut conn = sqlx::SqliteConnection::connect(url).await.expect("SQLite connection");
    let mut schema = Schema::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master
         WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations'
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("SQLite tables");

    for table in &tables {
        let columns = sqlx::query(r#"SELECT name, type, "notnull", pk FROM pragma_table_info($1) ORDER BY cid"#)
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .expect("SQLite columns");
        let mut key: Vec<(i64, String)> = Vec::new();
        for column in &columns {
            let name: String = column.get("name");
            let declared: String = column.get("type");
            let pk: i64 = column.get("pk");
            // Key columns count as NOT NULL; see the module documentation.
            let not_null = column.get::<i64, _>("notnull") != 0 || pk > 0;
            if pk > 0 {
                key.push((pk, name.clone()));
            }
            schema.insert(
                format!("column {table}.{name}"),
                format!("{}, {}", sqlite_type_class(&declared), nullability(not_null)),
            );
        }
        key.sort();
        schema.insert(format!("table {table}"), primary_key(key.into_iter().map(|(_, name)| name).collect()));

        let indexes = sqlx::query(r#"SELECT name, "unique", origin, partial FROM pragma_index_list($1)"#)
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .expect("SQLite indexes");
        for index in &indexes {
            let name: String = index.get("name");
            let origin: String = index.get("origin");
            if origin == "pk" {
                continue; // compared as the table's primary key
            }
            let columns: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&name)
                    .fetch_all(&mut conn)
                    .await
                    .expect("SQLite index columns");
            // An expression has no name; PostgreSQL renders it as text, so it differs: on purpose.
            let columns: Vec<String> =
                columns.into_iter().map(|c| c.unwrap_or_else(|| "<expression>".into())).collect();
            let unique = index.get::<i64, _>("unique") != 0;
            let partial = index.get::<i64, _>("partial") != 0;
            if origin == "u" {
                schema.insert(format!("unique constraint {table} ({})", columns.join(", ")), "present".into());
            } else {
                schema.insert(format!("index {name}"), index_description(table, &columns, unique, partial));
            }
        }
    }
    schema
}

async fn postgres_schema(url: &str) -> Schema {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("PostgreSQL connection");
    let mut schema = Schema::new();
    let tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("PostgreSQL tables")
    .into_iter()
    .collect();

    let columns = sqlx::query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name,
                data_type::text AS data_type, is_nullable::text AS is_nullable
         FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("PostgreSQL columns");
    for column in &columns {
        let table: String = column.get("table_name");
        if !tables.contains(&table) {
            continue; // a view's columns, or _sqlx_migrations
        }
        let name: String = column.get("column_name");
        let data_type: String = column.get("data_type");
        let not_null = column.get::<String, _>("is_nullable") == "NO";
        schema.insert(
            format!("column {table}.{name}"),
            format!("{}, {}", postgres_type_class(&data_type), nullability(not_null)),
        );
    }
    for table in &tables {
        schema.insert(format!("table {table}"), primary_key(Vec::new()));
    }

    // pg_indexes lists the indexes; pg_index says which back a primary key or a UNIQUE constraint
    // (not guessed from the `_pkey` / `_key` names) and which are partial, and renders each key
    // column on its own (no parsing of `indexdef`).
    let indexes = sqlx::query(
        "SELECT i.tablename::text AS table_name, i.indexname::text AS index_name,
                x.indisunique AS is_unique, x.indisprimary AS is_primary, x.indpred IS NOT NULL AS is_partial,
                EXISTS (SELECT 1 FROM pg_constraint k
                        WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid AND k.contype = 'u')
                    AS is_constraint,
                ARRAY(SELECT pg_get_indexdef(x.indexrelid, n, true)
                      FROM generate_series(1, x.indnkeyatts::int) AS n ORDER BY n) AS columns
         FROM pg_indexes i
         JOIN pg_class c ON c.relname = i.indexname AND c.relnamespace = 'public'::regnamespace
         JOIN pg_index x ON x.indexrelid = c.oid
         WHERE i.schemaname = 'public'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("PostgreSQL indexes");
    for index in &indexes {
        let table: String = index.get("table_name");
        if !tables.contains(&table) {
            continue; // _sqlx_migrations_pkey
        }
        let name: String = index.get("index_name");
        let columns: Vec<String> =
            index.get::<Vec<String>, _>("columns").into_iter().map(|c| c.trim_matches('"').to_string()).collect();
        if index.get::<bool, _>("is_primary") {
            schema.insert(format!("table {table}"), primary_key(columns));
        } else if index.get::<bool, _>("is_constraint") {
            schema.insert(format!("unique constraint {table} ({})", columns.join(", ")), "present".into());
        } else {
            let (unique, partial) = (index.get("is_unique"), index.get("is_partial"));
            schema.insert(format!("index {name}"), index_description(&table, &columns, unique, partial));
        }
    }
    schema
}

fn primary_key(columns: Vec<String>) -> String {
    if columns.is_empty() {
        "no primary key".into()
    } else {
        format!("primary key ({})", columns.join(", "))
    }
}
