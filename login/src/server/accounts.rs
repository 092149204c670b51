//! Accounts deleted, and passwords changed, elsewhere (`zserver user del` on the data
//! directory while the server runs, another node of the cluster, this node's own commands):
//! the store records each change in the transaction that makes it ([`AccountChange`]), and
//! every server polls for the changes newer than the last it saw, a cheap indexed query every
//! [`LoginConfig::account_watch`](super::LoginConfig::account_watch). On each, the sessions it
//! makes stale end here: a `kicked` event with the reason, then the connection closes.
//!
//! A session remembers the account's generation its login checked; a change numbered above
//! it makes it stale (a deletion, every session; a password change, all but the session that
//! made it, which its server tags). So a login with the new password, or of a new account of
//! the same name, is never ended by an older change, however late a node sees it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use zserver::Runtime;

use super::sessions::{ACCOUNT_DELETED, PASSWORD_CHANGED};
use super::State;
use crate::lock;
use crate::store::{AccountChange, ChangeKind};

impl State {
    /// This node's tag for its session on `connection`, as an account change names the
    /// session that stays.
    pub(super) fn session_tag(&self, connection: u64) -> String {
        format!("{:016x}:{connection}", self.instance)
    }

    /// The connection of a session `tag` names, if it is one of this node's.
    fn own_session(&self, tag: &str) -> Option<u64> {
        let (instance, connection) = tag.split_once(':')?;
        let ours = u64::from_str_radix(instance, 16).ok()? == self.instance;
        ours.then(|| connection.parse().ok()).flatten()
    }

    /// Has the watcher look in the store now, rather than at its next poll.
    pub(super) fn look_at_accounts(&self) {
        let _ = self.look.0.try_send(());
    }

    /// An account changed here: every node (this one too) looks in the store now.
    pub(super) fn changed_account(&self) {
        match &self.cluster {
            Some(cluster) => cluster.accounts_changed(),
            None => self.look_at_accounts(),
        }
    }

    /// Ends the sessions here that `change` makes stale, each told why.
    pub(super) async fn apply_change(&self, change: &AccountChange) {
        let (kept, why) = match &change.kind {
            ChangeKind::Deleted { kept } => (kept, ACCOUNT_DELETED),
            ChangeKind::PasswordChanged { kept } => (kept, PASSWORD_CHANGED),
        };
        let kept = kept.as_deref().and_then(|tag| self.own_session(tag));
        let stale = lock(&self.sessions).take_stale(&change.user, change.seq, kept);
        if !stale.is_empty() {
            tracing::info!(user = %change.user, sessions = stale.len(), "{why}: sessions ended");
        }
        self.kick_all(&change.user, stale, why).await;
    }
}

/// Starts watching `state`'s store for account changes numbered above `after`, until the
/// server shuts down or is dropped.
pub(super) fn watch(state: &Arc<State>, after: u64) {
    let (runtime, every) = (state.runtime.clone(), state.config().account_watch);
    let (weak, sleeper, look) = (Arc::downgrade(state), runtime.clone(), state.look.1.clone());
    runtime.spawn(Box::pin(async move {
        watching(weak, &*sleeper, look, every, after).await;
    }));
}

async fn watching(
    state: Weak<State>,
    runtime: &dyn Runtime,
    look: async_channel::Receiver<()>,
    every: Duration,
    mut after: u64,
) {
    let mut failing = false;
    loop {
        let asked = async {
            let _ = look.recv().await;
        };
        futures_lite::future::or(runtime.sleep(every), asked).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if state.closing.load(Ordering::SeqCst) {
            return;
        }
        let store = state.store.clone();
        match blocking::unblock(move || store.account_changes(after)).await {
            Ok(changes) => {
                if failing {
                    tracing::info!("account changes: the store answers again");
                    failing = false;
                }
                for change in changes {
                    after = after.max(change.seq);
                    state.apply_change(&change).await;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("account changes: cannot read them from the store: {e}");
                    failing = true;
                }
            }
        }
    }
}
