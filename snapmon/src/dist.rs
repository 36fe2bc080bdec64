//! Files the packages ship that come from the command line itself: shell completions
//! (clap_complete) and man pages (clap_mangen), so they never drift from `--help`.

use std::path::Path;

use anyhow::Context as _;

/// Write `completions/{snapmon.bash,_snapmon,snapmon.fish}` and `man/snapmon*.1` under `out`
/// for the command line `full` (the CLI hands itself in: it calls this, not the other way).
pub fn generate(full: &clap::Command, out: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use clap_complete::Shell;
    let mut written = vec![];
    let comp = out.join("completions");
    let man = out.join("man");
    for d in [&comp, &man] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = public_command(full);
        let p = clap_complete::generate_to(shell, &mut cmd, "snapmon", &comp)
            .with_context(|| format!("{shell} completions in {}", comp.display()))?;
        written.push(p);
    }
    // One page for `snapmon`, one per subcommand (`snapmon-run.1`, `snapmon-policy-check.1` …).
    let mut cmd = public_command(full).disable_help_subcommand(true);
    cmd.build();
    write_pages(cmd, &man, &mut written)?;
    Ok(written)
}

/// The command line as users see it: clap_complete lists hidden subcommands (this generator)
/// too, so the tree is rebuilt without them.
fn public_command(full: &clap::Command) -> clap::Command {
    let mut cmd = clap::Command::new("snapmon")
        .version(crate::build_info::LONG)
        .subcommand_required(true)
        .arg_required_else_help(true);
    if let Some(a) = full.get_about() {
        cmd = cmd.about(a.clone());
    }
    cmd.subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// clap_mangen's `generate_to`, dated with the build date rather than left blank.
fn write_pages(
    cmd: clap::Command,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_pages(sub, dir, written)?;
    }
    let p = clap_mangen::Man::new(cmd)
        .date(crate::build_info::BUILD_DATE)
        .generate_to(dir)
        .with_context(|| format!("writing a man page in {}", dir.display()))?;
    written.push(p);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn completions_and_pages_cover_every_public_subcommand() {
        let dir = std::env::temp_dir().join(format!("snapmon-dist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = generate(&crate::cli::Cli::command(), &dir).unwrap();
        let bash = std::fs::read_to_string(dir.join("completions/snapmon.bash")).unwrap();
        assert!(
            bash.contains("verify-log") && bash.contains("--min-severity"),
            "bash"
        );
        let fish = std::fs::read_to_string(dir.join("completions/snapmon.fish")).unwrap();
        assert!(fish.contains("doctor"), "fish");
        assert!(dir.join("completions/_snapmon").exists(), "zsh");
        for page in [
            "snapmon.1",
            "snapmon-run.1",
            "snapmon-policy-check.1",
            "snapmon-doctor.1",
        ] {
            let t = std::fs::read_to_string(dir.join("man").join(page)).unwrap();
            assert!(
                t.starts_with(".ie") || t.contains(".TH"),
                "{page} is not roff"
            );
        }
        // The generator itself is not something users should be told about.
        for f in &files {
            let t = std::fs::read_to_string(f).unwrap();
            assert!(
                !t.contains("dist-assets"),
                "{} mentions the hidden command",
                f.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
