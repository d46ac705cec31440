//! What the agent asks of the operating system beyond plain I/O: its host name.

/// This host's name: `BACKUP_AGENT_HOSTNAME` if set, else /etc/hostname, else "unknown".
pub fn hostname() -> String {
    std::env::var("BACKUP_AGENT_HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
