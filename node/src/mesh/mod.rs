//! The overlay mesh: Noise-encrypted links between nodes, signed link-state routing across
//! relays, and flow-controlled streams between `(node, service)` endpoints, sealed end to end
//! inside a Noise session between the two nodes.
//!
//! Everything here but `driver` is sans-IO: time comes in as `now`, bytes move through
//! buffers, and decisions come back as events.

pub mod advert;
pub mod driver;
pub mod frame;
pub mod link;
pub mod lsdb;
pub mod message;
pub mod node;
pub mod noise;
pub mod peers;
pub mod route;
pub mod seal;
pub mod session;
pub mod stream;
pub mod succession;
pub mod transport;
pub mod trust;

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
