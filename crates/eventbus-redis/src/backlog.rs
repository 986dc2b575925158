//! A warning before `MAXLEN` trimming drops entries a group has not read yet.
//!
//! Publishers trim each stream to about `EVENT_BUS_REDIS_STREAM_MAX_LEN` entries, and Redis trims
//! whatever is oldest, read or not: a group that falls that far behind loses events for good.
//! The publisher cannot see groups cheaply, so each reader looks at its own group's lag
//! (`XINFO GROUPS`, Redis 7) on its claim schedule and warns when the unread entries reach 90 %
//! of the limit — and says so louder once Redis can no longer tell the lag, which after
//! trimming means entries are already gone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::StreamInfoGroupsReply;

/// At most one warning per stream in this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Watches one reader's group; see the [module documentation](self).
#[derive(Debug)]
pub(crate) struct BacklogWatch {
    max_len: usize,
    warned: HashMap<String, Instant>,
}

/// What the group's lag says about trimming.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Backlog {
    /// Far enough from the limit, or no limit.
    Fine,
    /// `lag` unread entries, at least 90 % of the limit: more publishing drops some.
    AtRisk { lag: usize },
    /// Redis cannot count the lag while the stream holds entries the group never read, which
    /// happens once entries the group had not read were trimmed (or deleted).
    Unknown,
}

impl BacklogWatch {
    /// A watch for streams trimmed to about `max_len` entries (0: never trimmed).
    pub(crate) fn new(max_len: usize) -> Self {
        Self {
            max_len,
            warned: HashMap::new(),
        }
    }

    /// Looks at `group`'s lag on `stream` and warns if trimming puts it at risk. Best effort:
    /// a failed look is logged at debug level and changes nothing.
    pub(crate) async fn check(&mut self, conn: &mut ConnectionManager, stream: &str, group: &str) {
        if self.max_len == 0 {
            return;
        }
        if let Some(last) = self.warned.get(stream) {
            if last.elapsed() < WARN_EVERY {
                return;
            }
        }
        let reply: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(conn)
            .await;
        let info = match reply {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(stream, error = %e, "XINFO GROUPS failed; backlog not checked");
                return;
            }
        };
        let Some(own) = info.groups.iter().find(|g| g.name == group) else {
            return;
        };
        let max_len = self.max_len;
        match judge(own.lag, own.entries_read, max_len) {
            Backlog::Fine => return,
            Backlog::AtRisk { lag } => tracing::warn!(
                stream,
                group,
                lag,
                max_len,
                "this group is {lag} entries behind and publishers trim the stream to about {max_len} (EVENT_BUS_REDIS_STREAM_MAX_LEN): entries it has not read yet are about to be dropped; raise the limit (0 keeps all) or add consumers"
            ),
            Backlog::Unknown => tracing::error!(
                stream,
                group,
                max_len,
                "Redis can no longer count this group's unread entries: entries it had not read were trimmed (EVENT_BUS_REDIS_STREAM_MAX_LEN={max_len}) or deleted, and are lost to it; raise the limit (0 keeps all) or add consumers"
            ),
        }
        self.warned.insert(stream.to_owned(), Instant::now());
    }
}

/// How `lag` (absent when Redis cannot count it) compares with a trimming limit of `max_len`.
/// A group that has read nothing has no lag either, and that is no loss.
pub(crate) fn judge(lag: Option<usize>, entries_read: Option<usize>, max_len: usize) -> Backlog {
    match lag {
        _ if max_len == 0 => Backlog::Fine,
        Some(lag) if lag.saturating_mul(10) >= max_len.saturating_mul(9) => Backlog::AtRisk { lag },
        Some(_) => Backlog::Fine,
        None if entries_read.is_some() => Backlog::Unknown,
        None => Backlog::Fine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_nine_tenths_of_the_limit_and_when_the_lag_is_lost() {
        assert_eq!(judge(Some(8_999), Some(1), 10_000), Backlog::Fine);
        assert_eq!(
            judge(Some(9_000), Some(1), 10_000),
            Backlog::AtRisk { lag: 9_000 }
        );
        assert_eq!(judge(None, Some(5), 10_000), Backlog::Unknown);
        assert_eq!(judge(None, None, 10_000), Backlog::Fine);
        assert_eq!(judge(Some(1_000_000), Some(1), 0), Backlog::Fine);
    }
}
