//! Every key Warren uses, in one place.
//!
//! - [`link`]: a node's static X25519 key pair: its identity on the mesh, used by the Noise
//!   handshakes of links and end-to-end sessions, and (through [`xeddsa`]) to sign the
//!   node's own adverts.
//! - [`signing`]: Ed25519 key pairs for signatures that are not a node's: component signers
//!   and mesh certificate authorities.
//! - [`xeddsa`]: signatures made and checked with X25519 keys (Signal's XEdDSA).
//! - [`succession`]: statements that retire a link key for a new one (`keygen --rotate`),
//!   signed by the retired key.
//! - [`rotation`]: `keygen --rotate` on disk: the retired key and the chain file.
//! - `file`: the private key file format shared by both kinds.
//!
//! A public key travels as one token naming its kind (`x25519:...`, `ed25519:...`), so one
//! kind is never taken for the other. Private keys live in mode-0600 files and never appear in
//! `Debug` output or logs.

pub(crate) mod file;
pub mod link;
pub mod rotation;
mod signature;
pub mod signing;
pub mod succession;
pub mod xeddsa;

pub use link::{KeyError, LINK_KEY_KIND, LinkKeypair, PublicKey};
pub use signature::{SIGNATURE_LEN, SignatureBytes};
pub use signing::{SIGNING_KEY_KIND, SignerKey, SigningKeyError, SigningKeypair, SigningPurpose};
pub use succession::{SignedSuccession, Succession, SuccessionError};
