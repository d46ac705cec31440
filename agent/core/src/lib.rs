//! What both binaries share: the `backup-agent` daemon/CLI writes backups and the
//! `restore` binary (the one program that holds the DPO's secret key) reads them. This
//! crate holds the common ground and nothing of either side's machinery: no scheduler,
//! no HTTP server, no dumper, and of OpenPGP only the check of manifest signatures (no
//! signing, no decryption). See docs/architecture.md for the map.

pub mod alert;
pub mod binlog;
pub mod catalog;
pub mod checksum;
pub mod config;
pub mod digest;
pub mod format;
pub mod gzip;
pub mod layout;
pub mod listing;
pub mod logging;
pub mod manifest;
pub mod os;
pub mod policy;
pub mod secret;
pub mod signature;
pub mod state;
pub mod store;
