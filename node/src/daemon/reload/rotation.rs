//! A reload after `warren keygen --rotate`: the key file holds a new key. It is adopted
//! live only when the node's own succession chain leads to it from the running key (so
//! every peer that pinned the running key can follow); any other new key needs a restart,
//! and is named with Receptor's "restart needed" code.

use crate::config::Config;
use crate::control::reply::ReloadReply;
use crate::control::reply::reload::{ERRORCODE_BAD_CONFIG, ERRORCODE_NOT_RELOADABLE};
use crate::keys::succession;
use crate::keys::{LinkKeypair, PublicKey, SignedSuccession, rotation};

/// The new key and the chain to adopt it with.
pub(super) type Rotation = (LinkKeypair, Vec<SignedSuccession>);

/// Reads `config`'s key file: `Ok(None)` when it still holds `running`; the new key and
/// its chain when a succession leads there from `running`; otherwise the refusal.
pub(super) fn plan(running: &PublicKey, config: &Config) -> Result<Option<Rotation>, ReloadReply> {
    let failed = |message: String, code| {
        tracing::warn!(%message, "reload: key not adopted; nothing applied");
        Err(ReloadReply::Failed { message, code })
    };
    let keys = match LinkKeypair::load(&config.key_file) {
        Ok(keys) => keys,
        Err(e) => return failed(e.to_string(), ERRORCODE_BAD_CONFIG),
    };
    if keys.public() == *running {
        return Ok(None);
    }
    let chain = match rotation::read_chain(&config.key_file) {
        Ok(chain) => chain,
        Err(e) => return failed(e.to_string(), ERRORCODE_BAD_CONFIG),
    };
    if !succession::leads(&chain, running, &keys.public()) {
        return failed(
            format!(
                "{} holds a new key {} that no key succession from the running key {running} \
                 leads to (changed settings cannot be applied while running: node.key); rotate \
                 with `warren keygen --rotate --out {}`, or restart the node (nothing was changed)",
                config.key_file.display(),
                keys.public(),
                config.key_file.display(),
            ),
            ERRORCODE_NOT_RELOADABLE,
        );
    }
    Ok(Some((keys, chain)))
}
