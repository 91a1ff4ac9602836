//! Partition tables (MBR with extended/logical partitions, GPT with its
//! backup header), read-only and bounds-checked through a `BlockSource`.

mod gpt;
pub mod lvm;
pub mod partition;
pub mod table;

pub use partition::{Partition, PartitionTable, TableKind, read_partitions};
