//! The protocol's own state, below the connection and everything that runs on it: no
//! I/O, no clock, no tasks.

mod command;

pub use command::CommandKind;
