//! Partition tables (MBR, GPT).
//! TODO(helper): implement.
