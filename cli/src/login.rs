//! `zserver serve`, `zserver user ...` and `zserver client ...`: the login server on its
//! embedded store, its operator commands, and a client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use zserver_login::{
    ClusterConfig, Event, LoginClient, LoginConfig, LoginError, LoginServer, PasswordParams, Store,
    TokenConfig, WhenFull,
};

use crate::bench::{run_on, BoxError};
use crate::known_servers::{self, Trust};
use crate::metrics::{Exporter, Figures};
use crate::options::{init_logs, CompressionArg, ServeOps};

/// Arguments of `zserver serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Data directory (database, server key, users' files); created on first start.
    #[arg(long, default_value = "zserver-data")]
    pub data: PathBuf,
    /// Network back end.
    #[arg(long, default_value = "tokio", value_parser = ["tokio", "async-std", "smol"])]
    pub backend: String,
    /// Most MiB of files one user may store.
    #[arg(long, default_value_t = 1024)]
    pub quota_mib: u64,
    /// Most sessions one user may hold at once (devices), in the whole cluster; each gets
    /// the user's pushes.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_sessions: u32,
    /// One session per user (`--max-sessions 1`): a second login ends the first.
    #[arg(long, conflicts_with = "max_sessions")]
    pub single_session: bool,
    /// Refuse a login past the most sessions (default: end the user's oldest session).
    #[arg(long, alias = "refuse-second-login")]
    pub refuse_extra_login: bool,
    /// Accounts and offline messages: `embedded` (SQLite in the data directory) or a
    /// `postgres://user@host:port/db` URL.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// Run as one node of a cluster whose nodes share presence through this NATS server
    /// (`nats://host:port`); needs a `--store postgres://...` shared by all nodes.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The cluster's name (prefix of its NATS subjects), for several clusters on one NATS.
    #[arg(long, default_value = "zserver")]
    pub cluster_name: String,
    #[command(flatten)]
    pub ops: ServeOps,
    #[command(flatten)]
    pub api: crate::api_args::ApiArgs,
    /// Also listen for WebSocket connections (browsers) on this address, with the same
    /// sessions as `--listen`.
    #[arg(long)]
    pub listen_ws: Option<SocketAddr>,
    /// A web page origin (`https://chat.example.com`) allowed to connect over WebSocket
    /// besides pages served from the WebSocket port itself; repeatable; `*` allows any.
    #[arg(long = "allowed-origin", value_name = "URL", requires = "listen_ws")]
    pub allowed_origins: Vec<String>,
    /// Serve the files of this directory to plain HTTP GETs on the WebSocket port (`/`
    /// gives `index.html`).
    #[arg(long, value_name = "DIR", requires = "listen_ws")]
    pub web: Option<PathBuf>,

    /// Serve TLS on the WebSocket port (`wss://`, and `https://` for --web) and on --api
    /// (`https://`) with the PEM certificate chain in this file (the server's certificate
    /// first); SIGHUP reloads it.
    #[arg(long, value_name = "FILE", requires_all = ["listen_ws", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A proxy in front of the server (TLS terminator, load balancer) whose word on the
    /// client's address is believed: an address or CIDR range (`10.0.0.0/8`); repeatable.
    /// Its connections are known (limits, logs) by the address it announces: in a PROXY
    /// header with --proxy-protocol, or in a WebSocket upgrade's Forwarded or
    /// X-Forwarded-For header. Nobody else's word is taken.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<zserver::proxy::Cidr>,
    /// Every connection from a --trusted-proxy, on --listen and --listen-ws alike, starts
    /// with a PROXY protocol header (version 1 or 2, as HAProxy's send-proxy and nginx's
    /// proxy_protocol send it); one without is closed.
    #[arg(long, requires = "trusted_proxies")]
    pub proxy_protocol: bool,
    /// Most password hashes computed at once (default: the number of cores). Each holds
    /// --argon2-memory-kib of memory while it runs.
    #[arg(long)]
    pub hash_concurrency: Option<usize>,
    /// Most logins/registrations waiting for a hashing slot; beyond, refused as busy.
    #[arg(long, default_value_t = 64)]
    pub hash_queue: usize,
    /// Most logins/registrations in progress from one address; beyond, refused as busy.
    #[arg(long, default_value_t = 4)]
    pub hash_per_address: usize,
    /// Failed logins allowed per (address, account) per minute: one user's typos lock out
    /// no one else behind the same address.
    #[arg(long, default_value_t = 5)]
    pub max_failed_logins: usize,
    /// Failed logins allowed per address per minute, over all accounts (stops credential
    /// stuffing from one address).
    #[arg(long, default_value_t = 50)]
    pub max_failed_per_address: usize,
    /// Failed logins allowed per account per minute, from all addresses (bounds a guesser
    /// spread over many addresses).
    #[arg(long, default_value_t = 20)]
    pub max_failed_per_account: usize,
    /// Registrations allowed per address per minute.
    #[arg(long, default_value_t = 10)]
    pub max_registrations: usize,
    /// Argon2id memory per password hash, KiB (19456 = 19 MiB); new hashes only.
    #[arg(long, default_value_t = PasswordParams::default().memory_kib)]
    pub argon2_memory_kib: u32,
    /// Argon2id passes over that memory (time cost); new hashes only.
    #[arg(long, default_value_t = PasswordParams::default().iterations)]
    pub argon2_iterations: u32,
    /// Argon2id lanes (parallelism); new hashes only.
    #[arg(long, default_value_t = PasswordParams::default().parallelism)]
    pub argon2_parallelism: u32,
    /// Accept signed login tokens (JWT: HS256, HS384, HS512) checked with the shared
    /// secret in this file (at least 32 bytes, trailing newlines ignored).
    #[arg(long, value_name = "FILE", group = "token_key")]
    pub token_secret_file: Option<PathBuf>,
    /// Accept signed login tokens checked with this PEM public key: RSA (RS256 ...), EC
    /// (ES256, ES384) or Ed25519 (EdDSA).
    #[arg(long, value_name = "FILE", group = "token_key")]
    pub token_public_key: Option<PathBuf>,
    /// Accept signed login tokens checked with the keys of this JWKS file (a token names
    /// its key by `kid`).
    #[arg(long, value_name = "FILE", group = "token_key")]
    pub token_jwks: Option<PathBuf>,
    /// Login tokens must carry this issuer (`iss`).
    #[arg(long, requires = "token_key")]
    pub token_issuer: Option<String>,
    /// Login tokens must carry this audience (`aud`).
    #[arg(long, requires = "token_key")]
    pub token_audience: Option<String>,
}

impl ServeArgs {
    /// The token settings the flags ask for, the key file read (`None`: no token logins).
    fn tokens(&self) -> Result<Option<TokenConfig>, BoxError> {
        let mut tokens = match (
            &self.token_secret_file,
            &self.token_public_key,
            &self.token_jwks,
        ) {
            (Some(f), _, _) => TokenConfig::secret_file(f)?,
            (_, Some(f), _) => TokenConfig::public_key_file(f)?,
            (_, _, Some(f)) => TokenConfig::jwks_file(f)?,
            _ => return Ok(None),
        };
        tokens.issuer = self.token_issuer.clone();
        tokens.audience = self.token_audience.clone();
        Ok(Some(tokens))
    }
}

/// Arguments of `zserver user`.
#[derive(clap::Args, Debug)]
pub(crate) struct UserArgs {
    /// Data directory of the server.
    #[arg(long, default_value = "zserver-data", global = true)]
    pub data: PathBuf,
    /// The server's store: `embedded` (in the data directory) or a `postgres://` URL.
    #[arg(long, default_value = "embedded", global = true)]
    pub store: String,
    #[command(subcommand)]
    pub action: UserAction,
}

/// What `zserver user` does.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum UserAction {
    /// Creates an account.
    Add {
        /// The user name.
        name: String,
        /// The password (or set ZSERVER_PASSWORD).
        #[arg(long, env = "ZSERVER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Deletes an account, its stored messages and its files; a running server ends the
    /// user's sessions within a second.
    Del {
        /// The user name.
        name: String,
    },
    /// Sets an account's password (no old one needed); a running server ends the user's
    /// sessions within a second.
    Passwd {
        /// The user name.
        name: String,
        /// The new password (or set ZSERVER_PASSWORD).
        #[arg(long, env = "ZSERVER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Lists the accounts.
    List,
}

/// Arguments of `zserver client`.
#[derive(clap::Args, Debug)]
pub(crate) struct ClientArgs {
    /// The server's address: `HOST:PORT`, a host name or an IP address.
    #[arg(long, global = true, default_value = "127.0.0.1:7100")]
    pub server: String,
    /// The user to act as (every action but `known`).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// The password (or set ZSERVER_PASSWORD).
    #[arg(long, global = true, env = "ZSERVER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Log in with this signed token (a JWT the app's back end minted, or `zserver token`)
    /// instead of a user and password (or set ZSERVER_TOKEN).
    #[arg(
        long,
        global = true,
        env = "ZSERVER_TOKEN",
        hide_env_values = true,
        conflicts_with = "password"
    )]
    pub token: Option<String>,
    /// Refuse a server whose key fingerprint (printed by `zserver serve`) is not this one;
    /// without it, the key recorded in the known-servers file at first use is required.
    #[arg(long, global = true)]
    pub pin: Option<String>,
    /// The known-servers file (default: known_servers in the user's config directory,
    /// such as ~/.config/zserver/known_servers).
    #[arg(
        long,
        global = true,
        env = "ZSERVER_KNOWN_SERVERS",
        value_name = "FILE"
    )]
    pub known_servers: Option<PathBuf>,
    /// Payload compression to ask the server for (used if the server offers it too).
    #[arg(long, global = true, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Network back end.
    #[arg(long, global = true, default_value = "tokio", value_parser = ["tokio", "async-std", "smol"])]
    pub backend: String,
    /// Connect over WebSocket (`--server` is then the server's `--listen-ws` address).
    #[arg(long, global = true)]
    pub ws: bool,
    #[command(subcommand)]
    pub action: ClientAction,
}

/// What `zserver client` does (every action but `register` logs in first).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum ClientAction {
    /// Creates the account.
    Register,
    /// Logs in and prints the messages stored while offline.
    Login,
    /// Uploads a file.
    Put {
        /// The local file.
        file: PathBuf,
        /// Name on the server (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Go on from what the server kept of an upload of this name that broke off (if it
        /// is this file's start, checked by hash).
        #[arg(long)]
        resume: bool,
    },
    /// Downloads a file: into OUT.part, renamed to OUT once complete and verified (resume a
    /// broken one with --resume).
    Get {
        /// Name on the server.
        name: String,
        /// Local path (default: the same name in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Go on from the partial download left by an earlier `get` (`OUT.part`), if its
        /// bytes are the server's (checked by hash).
        #[arg(long)]
        resume: bool,
        /// Replace the local file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Lists the user's files.
    Ls,
    /// Deletes a file.
    Rm {
        /// Name on the server.
        name: String,
    },
    /// Sends a message to a user (stored if they are offline).
    Push {
        /// The recipients: a user, several separated by commas (`ann,bob`), or `*` for
        /// everyone online.
        to: String,
        /// The text, or `-` to read it from standard input.
        text: String,
    },
    /// Lists the users online.
    Who,
    /// Stays connected and prints messages as they arrive.
    Listen,
    /// Channels: subscribe, publish, presence, history.
    #[command(flatten)]
    Channel(crate::channel_actions::ChannelAction),
    /// Lists the servers whose keys are recorded (trust on first use), or forgets one.
    Known {
        /// Forget this address's key (to accept a new one at the next connection).
        #[arg(long, value_name = "ADDR")]
        forget: Option<String>,
    },
}

/// The login server's settings `args` ask for, with the key and certificate files read.
pub(crate) fn login_config(args: &ServeArgs) -> Result<LoginConfig, BoxError> {
    let mut config = LoginConfig::new(&args.data);
    config.quota_bytes = args.quota_mib << 20;
    config.max_sessions = match args.single_session {
        true => 1,
        false => args.max_sessions as usize,
    };
    if args.refuse_extra_login {
        config.when_full = WhenFull::Refuse;
    }
    config.store = args.store.clone();
    if let Some(n) = args.hash_concurrency {
        config.hash_concurrency = n;
    }
    config.hash_queue = args.hash_queue;
    config.hash_per_address = args.hash_per_address;
    config.max_failed_logins = args.max_failed_logins;
    config.max_failed_per_address = args.max_failed_per_address;
    config.max_failed_per_account = args.max_failed_per_account;
    config.max_registrations = args.max_registrations;
    config.password = PasswordParams {
        memory_kib: args.argon2_memory_kib,
        iterations: args.argon2_iterations,
        parallelism: args.argon2_parallelism,
    };
    if let Some(nats) = &args.cluster {
        let mut cluster = ClusterConfig::new(nats);
        cluster.name = args.cluster_name.clone();
        config.cluster = Some(cluster);
    }
    config.connection.compression = args.ops.compression.compression();
    config.connection.trusted_proxies = args
        .trusted_proxies
        .iter()
        .fold(zserver::proxy::TrustedProxies::new(), |t, range| {
            t.trust(*range)
        })
        .with_proxy_protocol(args.proxy_protocol);
    config.observe_calls = args.ops.metrics.is_some();
    config.ws_listen = args.listen_ws;
    config.ws_options.allowed_origins = args.allowed_origins.clone();
    config.ws_options.web_root = args.web.clone();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.ws_options.tls = Some(zserver::tls::Certificates::load(cert, key)?);
    }
    config.tokens = args.tokens()?;
    if let Some(path) = &args.ops.config {
        if let Some(channels) = crate::channel_config::from_file(path)? {
            config.channels = channels;
        }
        if let Some(rate) = crate::rate_config::from_file(path)? {
            config.rate = rate;
        }
    }
    Ok(config)
}

pub(crate) fn serve(args: ServeArgs) -> Result<(), BoxError> {
    init_logs(args.ops.log_format);
    let transport = zserver::transport(&args.backend).ok_or("unknown back end")?;
    let config = login_config(&args)?;
    let runtime = transport.runtime();
    let server = Arc::new(run_on(
        &runtime,
        LoginServer::start(transport, args.listen, config.clone()),
    )?);

    println!(
        "zserver listening on {} ({})",
        server.local_addr(),
        args.backend
    );
    if let Some(ws) = server.ws_addr() {
        let (ws_scheme, http) = match &config.ws_options.tls {
            Some(_) => ("wss", "https"),
            None => ("ws", "http"),
        };
        println!("WebSocket on {ws_scheme}://{ws}/");
        if let Some(web) = &args.web {
            println!("web page from {} on {http}://{ws}/", web.display());
        }
    }
    println!("data directory: {}", args.data.display());
    println!(
        "password hashing: {} at once ({} MiB each), {} waiting, {} per address",
        config.hash_concurrency,
        config.password.memory_kib / 1024,
        config.hash_queue,
        config.hash_per_address
    );
    if !args.trusted_proxies.is_empty() {
        let ranges: Vec<String> = args.trusted_proxies.iter().map(|r| r.to_string()).collect();
        let header = match args.proxy_protocol {
            true => "PROXY header expected",
            false => "forwarding headers on WebSocket",
        };
        println!("trusted proxies: {} ({header})", ranges.join(", "));
    }
    println!("server key fingerprint: {}", server.fingerprint());
    let api = args
        .api
        .start(&server, &runtime, config.ws_options.tls.as_ref())?;
    if let (Some(cluster), Some(node)) = (&config.cluster, server.node_id()) {
        println!(
            "cluster `{}` on {}: node {node:016x}",
            cluster.name,
            cluster.nats_url_redacted()
        );
    }
    let exporter = match args.ops.metrics {
        Some(addr) => {
            let exporter = Exporter::start(addr, Figures::new(server.clone()))?;
            println!("metrics on http://{}/metrics", exporter.local_addr());
            Some(exporter)
        }
        None => None,
    };
    // Until Ctrl-C or SIGTERM; on Unix, each SIGHUP reloads the settings meanwhile.
    #[cfg(unix)]
    crate::reload::until_stopped(&server, &crate::reload::Started::of(&args))?;
    #[cfg(not(unix))]
    {
        let (tx, rx) = std::sync::mpsc::channel();
        ctrlc::set_handler(move || {
            let _ = tx.send(());
        })?;
        let _ = rx.recv();
    }
    eprintln!("shutting down");
    if let Some(exporter) = &exporter {
        exporter.shutting_down();
    }
    if args.ops.drain_secs > 0.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(args.ops.drain_secs));
    }
    if let Some(api) = &api {
        api.shutdown();
    }
    run_on(&runtime, async move { server.shutdown().await });
    drop((exporter, api));
    Ok(())
}

pub(crate) fn user(args: UserArgs) -> Result<(), BoxError> {
    if args.store == "embedded" && !args.data.join("zserver.db").exists() {
        return Err(format!(
            "no server data in `{}`: start `zserver serve --data {}` there once, or pass \
             --data with the server's directory",
            args.data.display(),
            args.data.display()
        )
        .into());
    }
    let store = Store::open_spec(&args.store, &args.data)?;
    match args.action {
        UserAction::Add { name, password } => {
            store.add_user(&name, &password)?;
            println!("added `{name}`");
        }
        UserAction::Del { name } => {
            store.delete_user(&name)?;
            let _ = std::fs::remove_dir_all(args.data.join("files").join(&name));
            println!("deleted `{name}`");
        }
        UserAction::Passwd { name, password } => {
            store.set_password(&name, &password)?;
            println!("changed the password of `{name}`");
        }
        UserAction::List => {
            for name in store.users()? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn progress_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn track(bar: &ProgressBar) -> impl FnMut(u64, Option<u64>) + Send + 'static {
    let bar = bar.clone();
    move |done, total| {
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(done);
    }
}

pub(crate) fn client(args: ClientArgs) -> Result<(), BoxError> {
    if let ClientAction::Known { forget } = &args.action {
        return known_servers::command(args.known_servers.as_deref(), forget.as_deref());
    }
    let mut transport = zserver::transport(&args.backend).ok_or("unknown back end")?;
    if args.ws {
        transport = Arc::new(zserver::WsTransport::new(transport));
    }
    let runtime = transport.runtime();
    run_on(&runtime, async move {
        client_action(transport, args).await.map_err(plain)
    })
}

/// A failed connect, worded for the command line: the address, and what it likely means.
fn connect_failed(e: zserver::Error, addr: SocketAddr, ws: bool, trust: &Trust) -> BoxError {
    let text = e.to_string();
    if ws && (text.contains("WebSocket protocol error") || text.contains("httparse")) {
        return format!(
            "{addr} did not answer as a WebSocket server: is it the server's --listen port \
             rather than its --listen-ws one? ({text})"
        )
        .into();
    }
    match e {
        zserver::Error::Io(why) => format!(
            "cannot connect to {addr}: {why} (is `zserver serve` running there, and is it the \
             port it listens on?)"
        )
        .into(),
        other => trust.explain(other),
    }
}

/// What a failed action prints: the server's own message for a refusal, without the
/// library's wording around it.
fn plain(e: BoxError) -> BoxError {
    match e.downcast_ref::<zserver::Error>() {
        Some(zserver::Error::Remote(message)) => message.clone().into(),
        _ => e,
    }
}

/// Asks for `user`'s password on the terminal (not echoed); without a terminal, says how
/// to give it.
fn ask_password(user: &str) -> Result<String, BoxError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(
            "no password: pass --password or set ZSERVER_PASSWORD (or run on a \
                    terminal to be asked)"
                .into(),
        );
    }
    rpassword::prompt_password(format!("password for `{user}`: "))
        .map_err(|e| format!("reading the password: {e}").into())
}

/// The addresses `server` (`HOST:PORT`) names, IPv4 first (a name such as `localhost`
/// may name `::1` too, where the server need not listen).
fn resolve(server: &str) -> Result<Vec<SocketAddr>, BoxError> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<SocketAddr> = server
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --server `{server}` (HOST:PORT): {e}"))?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    match addrs.is_empty() {
        true => Err(format!("--server `{server}` names no address").into()),
        false => Ok(addrs),
    }
}

/// A refusal, worded for the command line: a busy server says when to retry.
fn explain(e: LoginError) -> BoxError {
    match e {
        LoginError::Busy { retry_after } => format!(
            "the server is busy checking other passwords (nothing was checked); retry in {} s",
            retry_after.as_secs()
        )
        .into(),
        other => other.into(),
    }
}

/// How `zserver client` logs in.
enum Login {
    /// A user and their password.
    Password(String, String),
    /// A signed token.
    Token(String),
}

async fn client_action(
    transport: Arc<dyn zserver::Transport>,
    args: ClientArgs,
) -> Result<(), BoxError> {
    let login = match (&args.token, &args.user) {
        (Some(token), _) => Login::Token(token.clone()),
        (None, Some(user)) => {
            let password = match &args.password {
                Some(password) => password.clone(),
                None => ask_password(user)?,
            };
            Login::Password(user.clone(), password)
        }
        (None, None) => return Err("--user is required (or --token)".into()),
    };
    let addr = args.server.clone();
    let server = resolve(&addr)?;
    let mut trust = Trust::new(&addr, args.pin.as_deref(), args.known_servers.as_deref())?;
    let mut config = zserver::Config::default();
    config.compression = args.compression.compression();
    let mut connected = None;
    for (i, addr) in server.iter().enumerate() {
        let attempt = LoginClient::connect_with(
            transport.clone(),
            *addr,
            trust.pin.as_deref(),
            config.clone(),
        )
        .await;
        match attempt {
            Ok(client) => {
                connected = Some(client);
                break;
            }
            // Nothing listening there: the next address the name gives, if any.
            Err(zserver::Error::Io(_)) if i + 1 < server.len() => {}
            Err(e) => return Err(connect_failed(e, *addr, args.ws, &trust)),
        }
    }
    let client = connected.ok_or("no address of --server answered")?;
    let key = client
        .client()
        .connection()
        .peer_key()
        .ok_or("the server's key is unknown")?;
    trust.connected(&zserver::fingerprint(&key))?;
    if args.compression != CompressionArg::None {
        let codec = client.client().connection().compression().unwrap_or("none");
        eprintln!("zserver: payload compression {codec}");
    }
    let offline = match (&login, &args.action) {
        (Login::Token(_), ClientAction::Register) => {
            return Err("register makes a password account: pass --user and --password".into())
        }
        (Login::Password(user, password), ClientAction::Register) => {
            client.register(user, password).await.map_err(explain)?;
            println!("registered `{user}`");
            return Ok(());
        }
        (Login::Password(user, password), _) => client.login(user, password).await,
        (Login::Token(token), _) => client.login_token(token).await,
    };
    let offline = offline.map_err(explain)?;
    for m in &offline {
        println!("message from {}: {}", m.from, m.text);
    }
    match args.action {
        ClientAction::Register | ClientAction::Known { .. } => unreachable!("handled above"),
        ClientAction::Login => match &login {
            Login::Password(user, _) => println!("logged in as `{user}`"),
            Login::Token(_) => println!("logged in with the token"),
        },
        ClientAction::Put { file, name, resume } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or("the file has no usable name; pass --name")?
                    .to_owned(),
            };
            let bar = progress_bar(&format!("put {name}"));
            let put = client.put(&file, &name, resume, track(&bar)).await;
            bar.finish_and_clear();
            let put = put?;
            if put.restarted {
                eprintln!(
                    "the server's partial `{name}` was not the start of {}: uploaded it again \
                     from the start",
                    file.display()
                );
            }
            match put.resumed_from {
                0 => println!("stored `{name}` ({} bytes)", put.written),
                from => println!(
                    "stored `{name}` ({} bytes after the {from} the server had, checked)",
                    put.written
                ),
            }
        }
        ClientAction::Get {
            name,
            out,
            resume,
            force,
        } => {
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            if out.exists() && !force {
                return Err(format!(
                    "{} exists: pass --force to replace it, or --out another path",
                    out.display()
                )
                .into());
            }
            let mut part = out.clone().into_os_string();
            part.push(".part");
            let part = PathBuf::from(part);
            let bar = progress_bar(&format!("get {name}"));
            let got = client.get(&name, &part, resume, track(&bar)).await;
            bar.finish_and_clear();
            let got = match got {
                Ok(got) => got,
                Err(e) if std::fs::metadata(&part).is_ok_and(|m| m.len() > 0) => {
                    let e = plain(e.into());
                    return Err(format!(
                        "{e} (what arrived is in {}: `get {name} --resume` goes on from it)",
                        part.display()
                    )
                    .into());
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e.into());
                }
            };
            std::fs::rename(&part, &out)
                .map_err(|e| format!("renaming {} to {}: {e}", part.display(), out.display()))?;
            if got.restarted {
                eprintln!(
                    "the partial {} was not the server's `{name}`: downloaded it again from the start",
                    part.display()
                );
            }
            match got.resumed_from {
                0 => println!("wrote {} bytes to {}", got.written, out.display()),
                from => println!(
                    "wrote {} bytes to {} after the {from} it had (checked)",
                    got.written,
                    out.display()
                ),
            }
        }
        ClientAction::Ls => {
            for f in client.ls().await? {
                println!("{:>14}  {}", f.size, f.name);
            }
        }
        ClientAction::Rm { name } => {
            client.rm(&name).await?;
            println!("removed `{name}`");
        }
        ClientAction::Push { to, text } => {
            let text = match text.as_str() {
                "-" => std::io::read_to_string(std::io::stdin())
                    .map_err(|e| format!("reading the text from standard input: {e}"))?,
                _ => text,
            };
            if to == "*" {
                let report = client.push_all(&text).await?;
                println!(
                    "delivered to {} user(s) online",
                    report.delivered_count.max(report.delivered.len() as u64)
                );
            } else {
                let users: Vec<&str> = to
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect();
                if users.is_empty() {
                    return Err("push: no recipient (`ann`, `ann,bob` or `*`)".into());
                }
                let report = client.push(&users, &text).await?;
                for user in users {
                    let said = if report.delivered.iter().any(|u| u == user) {
                        format!("delivered to `{user}`")
                    } else if report.unconfirmed.iter().any(|u| u == user) {
                        format!(
                            "handed to `{user}`'s node, which did not confirm in time: \
                             delivered or stored for their next login, once"
                        )
                    } else if report.stored.iter().any(|u| u == user) {
                        format!("`{user}` is offline: stored for their next login")
                    } else {
                        format!("`{user}`: no such user")
                    };
                    println!("{said}");
                }
            }
        }
        ClientAction::Who => {
            for user in client.who().await? {
                println!("{user}");
            }
        }
        ClientAction::Channel(action) => crate::channel_actions::run(&client, action).await?,
        ClientAction::Listen => {
            while let Some(event) = client.next_event().await {
                match event {
                    Event::Message(m) => println!("message from {}: {}", m.from, m.text),
                    Event::Kicked(why) => {
                        println!("kicked: {why}");
                        break;
                    }
                }
            }
        }
    }
    // Gracefully: what is queued (such as the answer confirming the login's stored
    // messages) is sent before the connection closes.
    client.close().await;
    Ok(())
}
