//! `zserver serve --api ADDR --api-key-file F`: the server API and the admin page
//! (docs/API.md) on their own listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use zserver_login::api::{ApiKey, ApiServer};
use zserver_login::LoginServer;

use crate::bench::{run_on, BoxError};

/// `serve`'s server API flags (flattened into its arguments, so each is a config-file key
/// too).
#[derive(clap::Args, Debug)]
pub(crate) struct ApiArgs {
    /// Serve the HTTP server API (`/api/...`: publish, push, disconnect, users, info) and
    /// the admin page (`/admin`) on this address; plain HTTP, so loopback or a private
    /// network. Needs --api-key-file.
    #[arg(long, value_name = "ADDR", requires = "api_key_file")]
    pub api: Option<SocketAddr>,
    /// The API key every call must carry (`Authorization: Bearer KEY`): this file's
    /// contents, at least 16 bytes (trailing newlines ignored).
    #[arg(long, value_name = "FILE", requires = "api")]
    pub api_key_file: Option<PathBuf>,
}

impl ApiArgs {
    /// Starts the API listener for `server` on `runtime` if the flags ask for it, over TLS
    /// with `tls` (`--tls-cert`, the WebSocket listener's), and says where.
    pub(crate) fn start(
        &self,
        server: &LoginServer,
        runtime: &Arc<dyn zserver::Runtime>,
        tls: Option<&zserver::tls::Certificates>,
    ) -> Result<Option<ApiServer>, BoxError> {
        let (Some(addr), Some(file)) = (self.api, &self.api_key_file) else {
            return Ok(None);
        };
        let key = ApiKey::from_file(file)?;
        let admin = server.admin();
        let (api, scheme) = match tls.cloned() {
            Some(tls) => (
                run_on(runtime, async move {
                    ApiServer::start_tls(admin, addr, key, &tls).await
                })?,
                "https",
            ),
            None => (run_on(runtime, ApiServer::start(admin, addr, key))?, "http"),
        };
        let at = api.local_addr();
        println!("server API on {scheme}://{at}/api/, admin page on {scheme}://{at}/admin");
        Ok(Some(api))
    }
}
