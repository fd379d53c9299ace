//! How many units each peer holds here: units it submitted to run on this node, until they
//! are released. A peer past [`CoreConfig::max_units_per_submitter`](super::CoreConfig)
//! is refused new ones, so that no submitter can grow the node's memory and disk without
//! bound by never releasing what it submitted. Units submitted on the local control socket,
//! and this node's mirrors of remote units, are not counted.

use super::{Core, WorkError};
use crate::keys::PublicKey;
use crate::work::status::UnitStatus;

impl Core {
    /// The peer a unit counts against: its proven submitter, when it runs here.
    fn holder(&self, status: &UnitStatus) -> Option<PublicKey> {
        (status.node == self.me)
            .then_some(status.submitter_key)
            .flatten()
    }

    /// Counts a unit taken in (created or found again at start).
    pub(super) fn count_held(&mut self, status: &UnitStatus) {
        if let Some(key) = self.holder(status) {
            *self.held.entry(key).or_default() += 1;
        }
    }

    /// Stops counting a unit removed.
    pub(super) fn uncount_held(&mut self, status: &UnitStatus) {
        if let Some(key) = self.holder(status)
            && let Some(n) = self.held.get_mut(&key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(&key);
            }
        }
    }

    /// Refuses a new unit from `key` to run here when it already holds its limit.
    ///
    /// # Errors
    /// [`WorkError::OverLimit`] naming the limit and what frees room.
    pub(super) fn check_held(&self, key: Option<&PublicKey>) -> Result<(), WorkError> {
        let Some(key) = key else {
            return Ok(());
        };
        let limit = self.config.max_units_per_submitter;
        if self.held.get(key).copied().unwrap_or(0) < limit {
            return Ok(());
        }
        Err(WorkError::OverLimit {
            node: self.me.clone(),
            what: "the number of units this submitter holds here (release finished units, \
                   or raise [work] max-units-per-submitter on that node)"
                .into(),
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        })
    }
}
