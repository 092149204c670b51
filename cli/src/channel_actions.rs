//! `zserver client sub|pub|presence|history`: the login server's channels from the command
//! line. Publications print as `EPOCH:OFFSET FROM: TEXT` (the position to resume from with
//! `sub --since`), or `-:- FROM: TEXT` in a channel without history.

use zserver::channels::{ChannelCalls, Event, Position, Publication};
use zserver_login::LoginClient;

use crate::bench::BoxError;

/// One of the channel actions of `zserver client`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum ChannelAction {
    /// Subscribes to a channel and prints each publication with its position until
    /// interrupted (or the server ends the subscription).
    Sub {
        /// The channel, such as `chat:lobby`.
        channel: String,
        /// Resume after this position (EPOCH:OFFSET, as printed): every publication missed
        /// since comes first, if the server still has it.
        #[arg(long, value_name = "EPOCH:OFFSET")]
        since: Option<Position>,
    },
    /// Publishes a text to a channel and prints its position.
    Pub {
        /// The channel.
        channel: String,
        /// The text.
        text: String,
    },
    /// Lists the users subscribed to a channel.
    Presence {
        /// The channel.
        channel: String,
    },
    /// Prints a channel's latest publications, oldest first.
    History {
        /// The channel.
        channel: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

fn line(channel_epoch: Option<u64>, p: &Publication) -> String {
    let position = match channel_epoch {
        Some(epoch) if p.offset > 0 => format!("{epoch}:{}", p.offset),
        _ => "-:-".to_owned(),
    };
    let from = if p.from.is_empty() {
        "(server)"
    } else {
        &p.from
    };
    format!("{position} {from}: {}", String::from_utf8_lossy(&p.data))
}

/// Runs `action` on a logged-in client.
pub(crate) async fn run(client: &LoginClient, action: ChannelAction) -> Result<(), BoxError> {
    let conn = client.client();
    match action {
        ChannelAction::Sub { channel, since } => {
            let mut sub = conn.subscribe_from(&channel, since).await?;
            let mut epoch = sub.position().map(|p| p.epoch);
            match (since, sub.position()) {
                (Some(_), _) if !sub.recovered() => {
                    eprintln!(
                        "zserver: could not recover from {}: publications were lost",
                        since.map_or_else(String::new, |p| p.to_string())
                    );
                }
                (_, Some(position)) => {
                    eprintln!("zserver: subscribed to `{channel}` at {position}")
                }
                (_, None) => eprintln!("zserver: subscribed to `{channel}` (no history)"),
            }
            while let Some(event) = sub.recv().await {
                match event {
                    Event::Publication(p) => println!("{}", line(epoch, &p)),
                    Event::Join(m) => eprintln!("zserver: {} joined", m.user),
                    Event::Leave(m) => eprintln!("zserver: {} left", m.user),
                    Event::Resubscribed { position, .. } => epoch = position.map(|p| p.epoch),
                    Event::Unsubscribed(why) => {
                        eprintln!("zserver: unsubscribed by the server: {why}");
                        break;
                    }
                    _ => {}
                }
            }
        }
        ChannelAction::Pub { channel, text } => match conn.publish(&channel, text).await? {
            Some(position) => println!("published at {position}"),
            None => println!("published"),
        },
        ChannelAction::Presence { channel } => {
            let mut users: Vec<String> = conn
                .presence(&channel)
                .await?
                .into_iter()
                .map(|m| m.user)
                .collect();
            users.sort();
            users.dedup();
            for user in users {
                println!("{user}");
            }
        }
        ChannelAction::History { channel, limit } => {
            let page = conn.history(&channel, None, limit).await?;
            for p in &page.publications {
                println!("{}", line(Some(page.position.epoch), p));
            }
            eprintln!("zserver: `{channel}` is at {}", page.position);
        }
    }
    Ok(())
}
