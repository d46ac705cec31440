//! Shell completions and manual pages, generated from the CLI definitions of both
//! binaries (the image installs them): the bash script loads and registers its command,
//! the manual page formats without a warning and names every subcommand and flag.

mod common;
use common::*;

use std::process::Command;

fn run(bin: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new(bin).args(args).output().unwrap();
    ok(&o, &format!("{} {args:?}", bin.display()));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn completions_and_man_pages_are_generated_for_both_binaries() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, name, completions, man, words) in [
        (
            agent_bin(),
            "backup-agent",
            vec!["completions", "bash"],
            vec!["man"],
            vec![
                "run",
                "backup",
                "healthcheck",
                "check-config",
                "prune",
                "scrub",
                "repair",
                "--config",
            ],
        ),
        (
            restore_bin(),
            "restore",
            vec!["--completions", "bash"],
            vec!["--man"],
            vec![
                "--into",
                "--verify",
                "--decrypt",
                "--accounts",
                "--jobs",
                "--until",
            ],
        ),
    ] {
        // Without a configuration file: generated from the definitions alone.
        let script = run(&bin, &completions);
        let f = dir.path().join(format!("{name}.bash"));
        std::fs::write(&f, &script).unwrap();
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!("source {f:?} && complete -p {name}"))
            .output()
            .unwrap();
        ok(&o, "bash loads the completion script");
        assert!(String::from_utf8_lossy(&o.stdout).contains(name));
        for w in &words {
            assert!(script.contains(w), "{name} completion lacks {w}");
        }
        let page = run(&bin, &man);
        assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
        let o = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(
                std::fs::File::open({
                    let p = dir.path().join(format!("{name}.1"));
                    std::fs::write(&p, &page).unwrap();
                    p
                })
                .unwrap(),
            )
            .output()
            .unwrap();
        ok(&o, "groff formats the manual page");
        assert!(
            o.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for w in &words {
            let escaped = w.replace('-', "\\-");
            assert!(page.contains(&escaped), "{name} manual lacks {w}");
        }
    }
    // The image installs them.
    let docker = std::fs::read_to_string(repo_root().join("compose/Dockerfile")).unwrap();
    for w in [
        "backup-agent completions \"$s\"",
        "restore --completions \"$s\"",
        "backup-agent man |",
        "restore --man |",
    ] {
        assert!(docker.contains(w), "the Dockerfile does not install {w}");
    }
}
