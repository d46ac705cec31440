//! `check-config`: the configuration's keys, secrets, certificates and logins.

use std::process::ExitCode;

use backup_agent::check;
use backup_core::config::Config;

use super::EXIT_INVALID;

/// A configuration problem as JSON: the key, where in which file, and what is wrong.
pub fn problem_json(p: &backup_core::config::ConfigProblem) -> serde_json::Value {
    serde_json::json!({
        "key": p.key,
        "file": p.file,
        "line": p.position.map(|x| x.0),
        "column": p.position.map(|x| x.1),
        "message": p.message,
    })
}

pub fn check_config(cfg: &Config, json: bool) -> ExitCode {
    let mut r = check::check(cfg);
    let logins = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(check::check_sources(cfg));
    r.problems.extend(logins.problems);
    r.warnings.extend(logins.warnings);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "valid": r.problems.is_empty(),
                "file": cfg.file,
                "notes": r.notes,
                "warnings": r.warnings,
                "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
            }))
            .expect("serializable")
        );
        return if r.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_INVALID)
        };
    }
    for n in &r.notes {
        println!("ok: {n}");
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    if r.problems.is_empty() {
        println!("configuration {} is valid", cfg.file.display());
        ExitCode::SUCCESS
    } else {
        for p in &r.problems {
            println!("problem: {p}");
        }
        println!(
            "configuration {} has {} problem(s)",
            cfg.file.display(),
            r.problems.len()
        );
        ExitCode::from(EXIT_INVALID)
    }
}
