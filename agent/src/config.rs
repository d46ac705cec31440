//! The agent's configuration: the shared model (`backup_core::config`), loaded with the
//! check only the agent can make, that every source's cron schedule parses and fires.

use std::path::Path;

use backup_core::config::{Config, ConfigError, Env};

use crate::schedule::Schedule;

/// Reads and validates a configuration file, schedules included.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load_with(path, Some(Schedule::check))
}

/// Parses and validates configuration text, schedules included.
pub fn parse(file: &Path, text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
    Config::parse_with(file, text, env, Some(Schedule::check))
}
