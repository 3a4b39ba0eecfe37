//! `backfill report RUN`: the postmortem in Markdown, JSON and HTML, from a real run.

use crate::support::{Workspace, copy_workspace};

/// A finished 3-day copy of 300 rows whose reason holds markup and a table pipe.
async fn finished(ws: &Workspace) -> String {
    copy_workspace(ws, 300, "batch_rows = 1000").await;
    let spec = std::fs::read_to_string(ws.path("spec.toml")).unwrap();
    ws.write(
        "spec.toml",
        &format!("{spec}\n[slo]\ncomplete_within = \"48h\"\nsuccess_rate = 0.99\n"),
    );
    let ran = ws.run(&[
        "--json",
        "run",
        "spec.toml",
        "--reason",
        "INC-7 <script>alert(1)</script> a|b",
    ]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    ran.json()["run_id"].as_str().unwrap().to_owned()
}

/// Each format carries the run's facts: who and why, partitions and rows, the timeline, the
/// throughput, reconciliation and the audit chain; HTML is one file with no external
/// resource, its text escaped; Markdown keeps its tables whole.
#[tokio::test]
async fn report_writes_the_postmortem_in_each_format() {
    let ws = Workspace::new();
    let run_id = finished(&ws).await;

    let json = ws.run(&["report", &run_id[..8], "--format", "json"]);
    assert_eq!(json.code, 0, "{json:#?}");
    let report = json.json();
    assert_eq!(report["status"]["run_id"], run_id.as_str());
    assert_eq!(report["status"]["state"], "succeeded");
    assert_eq!(
        report["status"]["reason"],
        "INC-7 <script>alert(1)</script> a|b"
    );
    let actions: Vec<&str> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"run.created"), "{actions:?}");
    assert!(actions.contains(&"run.succeeded"), "{actions:?}");
    assert!(
        actions.iter().all(|a| !a.starts_with("partition.")),
        "the timeline holds run-level events only: {actions:?}"
    );
    let rows: u64 = report["progress"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 300);
    assert_eq!(report["audit_chain"]["intact"], true, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!([]));
    assert_eq!(report["status"]["slo"]["on_track"], true, "{report:#}");

    let md = ws.run(&["report", &run_id]);
    assert_eq!(md.code, 0, "{md:#?}");
    for needle in [
        "# Backfill report: copy_events",
        "| Partitions | 3 done (of 3) |",
        "| Rows | 300 read, 300 inserted, 0 updated, 0 deleted, 0 unchanged |",
        "| Reconciliation | 3 verified, 0 mismatched, 0 not verified |",
        "| Audit chain | intact (",
        "| Reason | INC-7 &lt;script>alert(1)&lt;/script> a\\|b |",
        "## Timeline",
        "## Throughput (per minute)",
        "No failing partition.",
        "| Objective | complete by ",
        ": on track; error budget: 0 of 0.03 failed attempts allowed at 99% success (0% used)",
    ] {
        assert!(
            md.stdout.contains(needle),
            "{needle} missing:\n{}",
            md.stdout
        );
    }

    let html = ws.run(&[
        "report",
        &run_id,
        "--format",
        "html",
        "--output",
        "report.html",
    ]);
    assert_eq!(html.code, 0, "{html:#?}");
    assert!(html.stderr.contains("wrote "), "{}", html.stderr);
    let page = std::fs::read_to_string(ws.path("report.html")).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..80]);
    assert!(page.contains("<svg"), "no chart");
    assert!(page.contains("INC-7 &lt;script&gt;alert(1)&lt;/script&gt; a|b"));
    assert!(!page.contains("<script"), "unescaped markup in the page");
    for external in ["src=", "href=", "http://", "https://", "@import"] {
        assert!(
            !page.contains(external),
            "{external}: the page loads something"
        );
    }
}

/// An unknown run, an unwritable output: exit 2 with a hint, nothing written.
#[tokio::test]
async fn report_errors_name_the_fix() {
    let ws = Workspace::new();
    let run_id = finished(&ws).await;
    let unknown = ws.run(&["report", "ffffffff"]);
    assert_eq!(unknown.code, 2, "{unknown:#?}");
    assert!(
        unknown.stderr.contains("backfill runs"),
        "{}",
        unknown.stderr
    );
    let unwritable = ws.run(&["report", &run_id, "--output", "no/such/dir/report.md"]);
    assert_eq!(unwritable.code, 2, "{unwritable:#?}");
    assert!(
        unwritable.stderr.contains("cannot write the report"),
        "{}",
        unwritable.stderr
    );
    assert!(unwritable.stderr.contains("hint"), "{}", unwritable.stderr);
}
