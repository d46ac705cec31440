//! Sealing a dump: gzip, OpenPGP (signed by the agent, encrypted to the DPO), sha256, teed
//! to every store. The agent's only OpenPGP code is here, and none of it decrypts.

pub mod crypto;
pub mod pipeline;
