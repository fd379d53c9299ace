//! Command-line arguments: clap types for each `warren` command and their conversion to
//! library types. Parsing only; `main.rs` runs the commands.

mod node_args;

pub use node_args::NodeArgs;
