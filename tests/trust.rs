//! The zero-trust mesh across real processes, as a user sees it: a relay reads only
//! ciphertext, certificates of a mesh authority admit nodes (and expired, revoked or foreign
//! ones do not), nodes of another protocol version are refused with both versions named, and
//! a flood of half-open connections leaves a node serving its peers; a rotated key is
//! adopted live and followed by peers that pinned the old one.

mod caps;
mod certificates;
mod relay;
mod rotation;
mod versions;
