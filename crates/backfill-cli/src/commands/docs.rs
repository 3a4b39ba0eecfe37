//! `backfill docs`: regenerate docs/spec.md, docs/cli.md and docs/metrics.md from the
//! declarations.

use clap::CommandFactory;

use crate::Reported;
use crate::args::{Cli, DocsArgs};
use crate::output::Output;

pub(crate) fn run(args: &DocsArgs, out: Output) -> anyhow::Result<()> {
    let files = [
        ("spec.md", backfill_core::spec::schema::reference_markdown()),
        ("cli.md", cli_markdown()),
        ("metrics.md", crate::serve::metrics_reference()),
    ];
    let mut stale = Vec::new();
    for (name, content) in files {
        let path = args.out.join(name);
        if args.check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&args.out)?;
            std::fs::write(&path, content)?;
            out.line(format!("wrote {}", path.display()));
        }
    }
    if !stale.is_empty() {
        out.note(format!(
            "stale generated docs: {} (run `cargo run -p backfill-cli -- docs`)",
            stale.join(", ")
        ));
        return Err(Reported(1).into());
    }
    Ok(())
}

/// The CLI reference: the long help of every command.
pub(crate) fn cli_markdown() -> String {
    let mut cmd = Cli::command().term_width(100);
    let mut out = String::from(
        "# CLI reference\n\n<!-- Generated from crates/backfill-cli/src/args.rs by \
         `cargo run -p backfill-cli -- docs`; do not edit by hand. -->\n\n\
         Exit codes: 0 success, 1 the work failed or is unfinished, 2 the input is wrong.\n\n",
    );
    out.push_str(&format!(
        "## backfill\n\n```text\n{}\n```\n",
        cmd.render_long_help()
    ));
    for sub in cmd.get_subcommands_mut() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = sub.get_name().to_owned();
        let help = sub
            .clone()
            .bin_name(format!("backfill {name}"))
            .render_long_help();
        out.push_str(&format!("\n## backfill {name}\n\n```text\n{help}\n```\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed reference docs must match what the declarations generate.
    #[test]
    fn generated_docs_are_fresh() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let cases = [
            ("spec.md", backfill_core::spec::schema::reference_markdown()),
            ("cli.md", super::cli_markdown()),
            ("metrics.md", crate::serve::metrics_reference()),
        ];
        for (name, want) in cases {
            let have = std::fs::read_to_string(docs.join(name)).unwrap_or_default();
            assert!(
                have == want,
                "docs/{name} is stale: run `cargo run -p backfill-cli -- docs` and commit it"
            );
        }
    }
}
