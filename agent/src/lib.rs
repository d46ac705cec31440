//! backup-agent: consistent MariaDB/Galera dumps, sealed with gzip and OpenPGP for the
//! DPO, kept in verified stores. The `backup-agent` binary is a thin layer on top. What
//! the `restore` binary shares with it (config model, dump format, digests, manifest,
//! stores, alert channels, state) lives in the `backup-core` crate; this crate adds the
//! writing side: the source (dumper, Galera), the seal (gzip, OpenPGP, sha256), a backup
//! run, the upkeep of copies, health and metrics, and the daemon. See
//! docs/architecture.md.

pub mod archive;
pub mod backup;
pub mod check;
pub mod config;
pub mod copies;
pub mod daemon;
pub mod observe;
pub mod schedule;
pub mod seal;
pub mod source;
