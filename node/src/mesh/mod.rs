//! The overlay mesh: Noise-encrypted links between nodes, link-state routing across relays,
//! datagrams and flow-controlled streams between `(node, service)` endpoints.
//!
//! Everything here but `driver` is sans-IO: time comes in as `now`, bytes move through
//! buffers, and decisions come back as events.

pub mod driver;
pub mod frame;
pub mod link;
pub mod lsdb;
pub mod message;
pub mod node;
pub mod noise;
pub mod peers;
pub mod route;
pub mod stream;
pub mod transport;
pub mod trust;

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
