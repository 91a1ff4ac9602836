//! The privileged part: loop devices, mounts (guards that undo them), the
//! guest's root and fstab, paths resolved inside the guest, and the
//! sandbox that runs commands chrooted in the guest.

pub mod root;
