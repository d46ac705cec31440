//! backup-agent: consistent MariaDB/Galera dumps, sealed with gzip and OpenPGP for the
//! DPO, kept in verified stores. The `backup-agent` binary is a thin layer on top; the
//! `restore` binary (restore-cli) uses the shared parts: config, dump format, digests,
//! manifest, stores.

pub mod alert;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod config;
pub mod copies;
pub mod crypto;
pub mod daemon;
pub mod digest;
pub mod dump;
pub mod format;
pub mod galera;
pub mod health;
pub mod inventory;
pub mod logging;
pub mod maintain;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod secret;
pub mod state;
pub mod store;
