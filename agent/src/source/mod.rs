//! Where backups come from: the dumper (a consistent logical dump of one server) and, for
//! Galera clusters, the choice of node, its desync during the dump and the cluster lease.

pub mod binlog;
pub mod dump;
pub mod galera;
pub mod split;
