//! The login crate's integration tests, in one test binary (built and linked once, instead
//! of once per file): a module per area. The cluster and PostgreSQL tests are ignored
//! unless asked for (`-- --ignored`): they need the services `bash .ci/test` starts.
//!
//! ```text
//! cargo test -p zserver-login --test login_suite            # everything but the ignored
//! cargo test -p zserver-login --test login_suite e2e::      # one area
//! ```

#[path = "../support/http.rs"]
mod http;
#[path = "../support/mod.rs"]
mod support;

mod accounts;
mod api;
mod api_cluster;
mod api_tls;
mod channels;
mod cluster;
mod e2e;
mod flood;
mod limiter;
mod login_doc;
mod offline_confirm;
mod postgres_retry;
mod proxy;
mod push_during_login;
mod rate;
mod reload;
mod resume_upload;
mod sessions;
mod slow_reader;
mod store;
mod tokens;
mod websocket;
