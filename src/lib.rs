//! vmfinal: finalize and compact VM disk images.
//!
//! The library holds every piece the `vmfinal` binary ties together; `main.rs`
//! only parses arguments, dispatches to `commands`, and maps errors to exit codes.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod artifact;
pub mod bytes;
pub mod cli;
pub mod commands;
pub mod convert;
pub mod crc;
pub mod disk;
pub mod estimate;
pub mod extent;
pub mod fs;
pub mod guest;
pub mod image;
pub mod inspect;
pub mod interrupt;
pub mod output;
pub mod owner;
pub mod pipeline;
pub mod pkgdb;
pub mod profile;
pub mod progress;
pub mod reclaim;
pub mod report;
pub mod session;
pub mod spool;
pub mod text;
pub mod view;
pub mod workspace;
