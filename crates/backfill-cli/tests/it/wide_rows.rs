//! Batches of wide rows are cut by bytes (`backfill_core::value::BATCH_BYTES`, 8 MiB) as well
//! as by `limits.batch_rows`: a cut batch is not mistaken for the end of its window, so
//! every row is written and the checkpoint ends on the window's last key.

use crate::support::{Workspace, exec, rows, sqlite};

/// Rows in the one partition, each with a 1 MiB text: 8 rows reach 8 MiB, so a batch of
/// `batch_rows = 1000` is cut after 8 rows and the window takes 3 batches (8, 8, 4).
const ROWS: i64 = 20;

fn spec(mode: &str) -> String {
    format!(
        r#"name = "wide_rows"
reason = "integration test"

[source]
url = "sqlite://source.db"
query = "SELECT id, ts, body FROM docs WHERE ts >= :start AND ts < :end"
time_column = "ts"

[target]
url = "sqlite://target.db"
table = "docs_copy"
key = ["id"]
pushdown = false
{mode}

[scope]
start = "2026-01-01T00:00:00Z"
end = "2026-01-02T00:00:00Z"
partition = "1d"

[limits]
concurrency = 1
batch_rows = 1000
"#
    )
}

#[tokio::test]
async fn wide_rows_are_batched_by_bytes_and_every_row_is_written() {
    for mode in [
        "mode = \"upsert\"",
        "mode = \"replace\"\nwindow_column = \"ts\"",
    ] {
        let ws = Workspace::new();
        let source = sqlite(&ws.path("source.db")).await;
        exec(
            &source,
            &[
                "CREATE TABLE docs (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, body TEXT NOT NULL)",
                // 1 MiB of text per row.
                &format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
                     INSERT INTO docs SELECT i, printf('2026-01-01T%02d:00:00Z', i), \
                     hex(zeroblob(524288)) || i FROM n"
                ),
            ],
        )
        .await;
        let target = sqlite(&ws.path("target.db")).await;
        exec(
            &target,
            &["CREATE TABLE docs_copy (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, body TEXT NOT NULL)"],
        )
        .await;
        ws.write("spec.toml", &spec(mode));
        let ran = ws.run(&["--json", "run", "spec.toml"]);
        assert_eq!(ran.code, 0, "{mode}: {ran:#?}");
        let report = ran.json();
        assert_eq!(report["rows"]["read"], ROWS, "{mode}: {report:#}");
        assert_eq!(report["rows"]["inserted"], ROWS, "{mode}: {report:#}");
        // The target holds every row, whole.
        let shape = "SELECT id, ts, length(body), substr(body, -3) FROM {} ORDER BY id";
        let copied = rows(&target, &shape.replace("{}", "docs_copy")).await;
        assert_eq!(copied.len(), ROWS as usize, "{mode}");
        assert_eq!(
            copied,
            rows(&source, &shape.replace("{}", "docs")).await,
            "{mode}"
        );
        // The partition's checkpoint is exact: every row read once, upsert ends on the last key.
        let state = sqlite(&ws.path("state.db")).await;
        let partitions = rows(
            &state,
            "SELECT state, rows_read, checkpoint FROM partitions",
        )
        .await;
        let checkpoint = if mode.contains("upsert") {
            Some(format!("t:[{{\"i\":{ROWS}}}]"))
        } else {
            None
        };
        assert_eq!(
            partitions,
            [[
                Some("t:done".to_owned()),
                Some(format!("i:{ROWS}")),
                checkpoint
            ]],
            "{mode}"
        );
    }
}
