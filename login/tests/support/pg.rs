//! A fresh PostgreSQL database per test, on the server named by `ZSERVER_TEST_POSTGRES`
//! (`source .ci/services.sh start` provides one).

use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh PostgreSQL database on the test server, dropped (best effort) when this is.
pub(crate) struct Postgres {
    /// The server's admin URL.
    pub admin_url: String,
    /// The database's name.
    pub db: String,
    /// The database's URL.
    pub url: String,
}

pub(crate) const PG_ENV: &str = "ZSERVER_TEST_POSTGRES";

/// The test server's URL (a superuser); panics if it is not set, so that asking for the
/// PostgreSQL tests without a server fails loudly instead of passing.
pub(crate) fn admin_url() -> String {
    std::env::var(PG_ENV).unwrap_or_else(|_| {
        panic!(
            "{PG_ENV} is not set: the PostgreSQL tests need a server, e.g. \
             `source .ci/services.sh start` (which exports it) or \
             {PG_ENV}=postgres://zserver@127.0.0.1:25432/postgres"
        )
    })
}

pub(crate) fn admin() -> ::postgres::Client {
    let url = admin_url();
    ::postgres::Client::connect(&url, ::postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}={url}: {e:?}"))
}

/// `url` with its database name replaced by `db` (query parameters kept).
pub(crate) fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    format!("{base}/{db}{query}")
}

impl Postgres {
    /// Creates database `zs_<pid>_<counter>_<test>` for the test `name`.
    pub(crate) fn new(name: &str) -> Postgres {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut db = format!("zs_{}_{n}_{name}", std::process::id()).to_lowercase();
        db.truncate(63);
        let admin_url = admin_url();
        admin()
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .unwrap();
        let url = with_db(&admin_url, &db);
        Postgres { admin_url, db, url }
    }

    /// Ends every connection to this test's database but the caller's.
    pub(crate) fn terminate_backends(&self) -> u64 {
        let mut admin = admin();
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.db],
            )
            .unwrap();
        rows.len() as u64
    }

    /// A direct connection to this test's database.
    pub(crate) fn raw(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls).unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut admin) = ::postgres::Client::connect(&self.admin_url, ::postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db
            ));
        }
    }
}

impl Postgres {
    /// Makes the database unreachable (its sessions cut, new ones refused), or reachable
    /// again: a PostgreSQL outage as its clients see it.
    pub(crate) fn set_reachable(&self, reachable: bool) {
        admin()
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {reachable}",
                self.db
            ))
            .unwrap();
        if !reachable {
            self.terminate_backends();
        }
    }
}
