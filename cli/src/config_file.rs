//! `zserver serve --config FILE`: a TOML file whose keys are the subcommand's flags.
//!
//! The file is read against the clap definition itself, so every flag of `serve` (those
//! added later included) is a key with nothing to list here: a key is a flag's long name
//! without the dashes (`quota-mib = 2048`), or its snake_case id (`quota_mib`). Each value
//! becomes that flag's default, so a flag given on the command line (or through its
//! environment variable) wins. An unknown key is an error that names the key and the file;
//! a value the flag refuses is reported by clap as for the flag (see [`parse_error`]).

use std::path::Path;

use clap::{ArgAction, Command};

use crate::bench::BoxError;

/// Flags that cannot be keys: the file itself, and clap's own.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// `cmd` with subcommand `sub`'s defaults taken from the TOML file at `path`.
pub(crate) fn apply(cmd: Command, sub: &str, path: &Path) -> Result<Command, BoxError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {shown}: {e}"))?;
    let sub_cmd = cmd
        .find_subcommand(sub)
        .ok_or_else(|| format!("no subcommand `{sub}`"))?;
    let defaults = defaults(sub_cmd, &text).map_err(|e| format!("{shown}: {e}"))?;
    Ok(cmd.mut_subcommand(sub, |mut sc| {
        for (id, values) in defaults {
            sc = sc.mut_arg(id, |arg| arg.default_values(values));
        }
        sc
    }))
}

/// The defaults `text` sets for `cmd`'s flags: (argument id, values).
fn defaults(cmd: &Command, text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        if (key == "channels" || key == "limits") && value.is_table() {
            // `[channels.NAME]`: the login server's channel namespaces (channel_config.rs);
            // `[limits.rate]`: its rate limits (rate_config.rs).
            continue;
        }
        let arg = cmd
            .get_arguments()
            .filter(|a| !NOT_KEYS.contains(&a.get_id().as_str()))
            .find(|a| a.get_id() == key.as_str() || a.get_long() == Some(key.as_str()))
            .ok_or_else(|| {
                let keys: Vec<&str> = cmd
                    .get_arguments()
                    .filter(|a| !NOT_KEYS.contains(&a.get_id().as_str()))
                    .filter_map(|a| a.get_long())
                    .collect();
                format!(
                    "unknown key `{key}` (the keys are `{}`'s flags: {})",
                    cmd.get_name(),
                    keys.join(", ")
                )
            })?;
        let values = scalars(value).ok_or_else(|| {
            format!("key `{key}`: give a string, a number, a boolean or a list of them")
        })?;
        if !takes_values(arg) && values.len() != 1 {
            return Err(format!("key `{key}`: give one value"));
        }
        out.push((arg.get_id().to_string(), values));
    }
    Ok(out)
}

/// Whether a flag can take a list (it appends, or splits on a delimiter).
fn takes_values(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append) || arg.get_value_delimiter().is_some()
}

/// A TOML value as flag values: a scalar gives one, an array of scalars several.
fn scalars(value: &toml::Value) -> Option<Vec<String>> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        scalar => one(scalar).map(|v| vec![v]),
    }
}

/// A parse error once the file's defaults are in: a refused value may be the file's, which
/// clap reports under the flag's name; this adds the file's name.
pub(crate) fn parse_error(error: clap::Error, path: &Path) -> clap::Error {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let text = error.render().to_string();
            clap::Error::raw(
                error.kind(),
                format!(
                    "{}\n  (the value may come from the config file {})\n",
                    text.trim_end().trim_start_matches("error: "),
                    path.display()
                ),
            )
        }
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::{Args, FromArgMatches, Parser, Subcommand};

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Serve(ServeLike),
    }

    #[derive(Args, Debug)]
    struct ServeLike {
        #[arg(long, default_value = "127.0.0.1:7100")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        quota_mib: u64,
        #[arg(long)]
        refuse_second_login: bool,
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    }

    fn parse(toml: &str, argv: &[&str]) -> Result<ServeLike, String> {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let sub = cmd.find_subcommand("serve").unwrap();
        let defaults = defaults(sub, toml)?;
        let cmd = cmd.mut_subcommand("serve", |mut sc| {
            for (id, values) in defaults {
                sc = sc.mut_arg(id, |a| a.default_values(values));
            }
            sc
        });
        let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        let Sub::Serve(args) = Cli::from_arg_matches(&matches)
            .map_err(|e| e.to_string())?
            .command;
        Ok(args)
    }

    #[test]
    fn keys_become_defaults_and_the_command_line_wins() {
        let file = "listen = \"127.0.0.1:9000\"\nquota-mib = 5\nrefuse_second_login = true\n\
                    tags = [\"a\", \"b\"]\n";
        let args = parse(file, &["z", "serve"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(args.quota_mib, 5);
        assert!(args.refuse_second_login);
        assert_eq!(args.tags, ["a", "b"]);
        let args = parse(file, &["z", "serve", "--quota-mib", "7", "--tags", "c"]).unwrap();
        assert_eq!((args.quota_mib, args.tags), (7, vec!["c".to_owned()]));
        assert_eq!(args.listen, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn the_example_file_sets_real_serve_flags() {
        let cmd = crate::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        let set = defaults(serve, include_str!("../zserver.example.toml")).unwrap();
        let keys: Vec<&str> = set.iter().map(|(id, _)| id.as_str()).collect();
        for key in ["listen", "data", "metrics", "compression", "log_format"] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn proxy_flags_parse() {
        let serve = |extra: &[&str]| {
            let argv = [&["zserver", "serve"], extra].concat();
            crate::command().try_get_matches_from(argv).map(|_| ())
        };
        assert!(serve(&["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"]).is_ok());
        assert!(serve(&["--trusted-proxy", "127.0.0.3", "--proxy-protocol"]).is_ok());
        // --proxy-protocol needs a proxy to trust; a range must be one.
        assert!(serve(&["--proxy-protocol"]).is_err());
        let err = serve(&["--trusted-proxy", "10.0.0.0/33"]).unwrap_err();
        assert!(err.to_string().contains("prefix length"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_keys() {
        let cmd = crate::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        let file = "trusted-proxy = [\"10.0.0.0/8\", \"::1\"]\nproxy-protocol = true\n";
        let mut set = defaults(serve, file).unwrap();
        set.sort();
        assert_eq!(
            set,
            [
                ("proxy_protocol".to_owned(), vec!["true".to_owned()]),
                (
                    "trusted_proxies".to_owned(),
                    vec!["10.0.0.0/8".to_owned(), "::1".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn unknown_keys_bad_values_and_bad_toml_are_refused_by_name() {
        let err = parse("lisen = \"x\"\n", &["z", "serve"]).unwrap_err();
        assert!(err.contains("unknown key `lisen`"), "{err}");
        assert!(err.contains("listen, quota-mib"), "{err}");
        let err = parse("listen = \"nowhere\"\n", &["z", "serve"]).unwrap_err();
        assert!(err.contains("'nowhere' for '--listen"), "{err}");
        let err = parse("quota-mib = [1, 2]\n", &["z", "serve"]).unwrap_err();
        assert!(err.contains("give one value"), "{err}");
        let err = parse("config = \"other.toml\"\n", &["z", "serve"]).unwrap_err();
        assert!(err.contains("unknown key `config`"), "{err}");
        let err = parse("listen = \n", &["z", "serve"]).unwrap_err();
        assert!(err.contains("not valid TOML"), "{err}");
        let err = parse("[listen]\nx = 1\n", &["z", "serve"]).unwrap_err();
        assert!(err.contains("key `listen`: give a string"), "{err}");
    }
}
