//! `zserver token`: mints a login token (HS256) for testing, as an app's back end would.

use std::path::PathBuf;
use std::time::Duration;

use zserver_login::tokens::{mint_hs256, read_secret, TokenClaims};

use crate::bench::BoxError;

/// Arguments of `zserver token`.
#[derive(clap::Args, Debug)]
pub(crate) struct TokenArgs {
    /// The shared secret's file (the server's --token-secret-file).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// The user (`sub`).
    #[arg(long)]
    pub user: String,
    /// How long it is valid: `90s`, `30m`, `1h`, `2d` (a bare number is seconds).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// What channel presence shows beside the user (`info`): a JSON value.
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    pub info: Option<serde_json::Value>,
    /// A private channel (such as `$team:red`) the token grants; repeatable.
    #[arg(long = "channel", value_name = "NAME")]
    pub channels: Vec<String>,
}

/// A duration such as `90s`, `30m`, `1h` or `2d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: a number and a unit (s, m, h, d), such as 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// Prints the token.
pub(crate) fn run(args: TokenArgs) -> Result<(), BoxError> {
    let secret = read_secret(&args.secret_file)?;
    let mut claims = TokenClaims::new(args.user, args.ttl);
    claims.info = args.info;
    claims.channels = args.channels;
    println!("{}", mint_hs256(&secret, &claims)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_with_their_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
