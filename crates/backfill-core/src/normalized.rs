//! The normalised spec: the fields of a spec that decide a plan's partitions and the data a
//! run writes, in one canonical form. The plan hash is its hash, and it is stored with every
//! run, so a resume refused because the spec changed can name each field that changed.
//!
//! What it covers: the source and target databases as the spec names them (`${VAR}`
//! expanded, any password removed, a relative SQLite path kept relative), the source query,
//! both time formats, the target table, key, write mode (with its window column or statement)
//! and guard, the scope (bounds, partition size and time zone; or the key range; or the
//! explicit windows), `target.propagate_deletes` with its window column (only when true, so
//! older specs keep their hash) and the partitions the planner cut from it (their count and a digest of
//! their windows, so a planner that cuts the same scope differently is a different plan).
//!
//! What it deliberately leaves out: where the spec file lies (a folder of a spec and its
//! SQLite files can move), passwords (rotated credentials resume the same run), the spec's
//! name and reason, limits, throttle, partition order and splitting, `target.pushdown`,
//! `target.undo`, `source.time_column`, `[validate]` (what is checked after writing), source
//! readiness (`source.ready*`) and `[canary]` (when rows may be written and in which order,
//! not which). They change who runs it, how fast or in which order rows move, never which
//! rows are written where, so changing them never refuses a resume.
//!
//! Invariants: pure and deterministic, so the same spec text gives the same fields and the
//! same hash on any machine and in any folder (a golden test pins one); no field ever holds a
//! password.

use std::fmt;

use serde_json::{Value, json};

use crate::plan::{Scope, Step, Window, short_hash};
use crate::spec::{Spec, WriteMode};

/// Hashed first, so a future change of the normal form cannot collide with this one.
const FORM: &str = "backfill normalized spec v1";

/// The fields of a spec that decide its plan and the data a run writes, by dotted spec path
/// (`scope.end`), in a fixed order. See the module doc for what is in and out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizedSpec {
    fields: Vec<(String, Value)>,
}

/// One field that differs between the normalised spec a run was made from and the current
/// one. Neither value can hold a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    /// Dotted spec path (`scope.end`), or `partitions` for the planner's cut.
    pub field: String,
    /// The run's value; `None` when the run's spec did not have the field.
    pub old: Option<Value>,
    /// The current value; `None` when the current spec does not have the field.
    pub new: Option<Value>,
}

impl NormalizedSpec {
    /// The normalised form of `spec`, whose scope the planner cut into `count` partitions
    /// with `digest` over their windows (a [`Digest`](crate::plan::Digest) of each window's
    /// canonical text, in plan order: what [`plan`](crate::plan::plan) computes as it cuts).
    pub fn of(spec: &Spec, count: usize, digest: &str) -> NormalizedSpec {
        let target = &spec.target;
        let mut fields: Vec<(&str, Value)> = Vec::new();
        // In `sql` mode the statement reads its own rows: a source, when given, only counts
        // them for `plan`, so it decides nothing written and is not part of the plan.
        if let Some(source) = &spec.source
            && !matches!(target.mode, WriteMode::Sql { .. })
        {
            fields.push(("source.url", json!(source.url.identity())));
            fields.push(("source.query", json!(source.query)));
            fields.push(("source.time_format", json!(source.time_format.name())));
        }
        fields.extend([
            ("target.url", json!(target.url.identity())),
            ("target.table", json!(target.table)),
            ("target.key", json!(target.key)),
            ("target.mode", json!(target.mode.name())),
        ]);
        match &target.mode {
            WriteMode::Upsert => {}
            WriteMode::Replace { window_column } => {
                fields.push(("target.window_column", json!(window_column)));
            }
            WriteMode::Sql { statement } => fields.push(("target.sql", json!(statement))),
        }
        if let Some(shadow) = &target.shadow {
            fields.push(("target.shadow", json!(true)));
            fields.push((
                "target.seed_outside_scope",
                json!(shadow.seed_outside_scope),
            ));
            fields.push(("target.window_column", json!(shadow.window_column)));
        }
        fields.push(("target.guard", json!(target.guard)));
        // Omitted when false, so specs that do not set it keep their plan hash.
        if target.propagate_deletes {
            fields.push(("target.propagate_deletes", json!(true)));
            fields.push((
                "target.delete_window_column",
                json!(target.delete_window_column),
            ));
        }
        fields.push(("target.time_format", json!(target.time_format.name())));
        match &spec.scope {
            Scope::Time {
                start,
                end,
                step,
                timezone,
            } => {
                fields.push(("scope.start", json!(instant(start))));
                fields.push(("scope.end", json!(instant(end))));
                fields.push(("scope.partition", json!(step_text(*step))));
                fields.push(("scope.timezone", json!(timezone.name())));
            }
            Scope::Key { from, to, chunk } => {
                fields.push(("scope.from", json!(from)));
                fields.push(("scope.to", json!(to)));
                fields.push(("scope.chunk", json!(chunk)));
            }
            Scope::List(windows) => {
                // The planner sorts the list, so its order as written does not matter.
                let mut sorted = windows.clone();
                sorted.sort();
                let list: Vec<String> = sorted.iter().map(Window::to_string).collect();
                fields.push(("scope.list", json!(list)));
            }
        }
        fields.push(("partitions", json!({ "count": count, "digest": digest })));
        NormalizedSpec {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// The plan hash: 16 hex digits over every field, names and values, in name order (so
    /// the stored JSON hashes alike). Equal normalised specs, and only those, have equal
    /// hashes (up to blake3 collisions).
    pub fn hash(&self) -> String {
        let mut fields: Vec<(&str, String)> = self
            .fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_string()))
            .collect();
        fields.sort();
        let mut parts = vec![FORM];
        for (name, value) in &fields {
            parts.push(name);
            parts.push(value);
        }
        short_hash(&parts)
    }

    /// The JSON object stored with a run (`{"scope.end": "…", …}`, names in order);
    /// [`Self::from_json`] reads it back with the same hash.
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, Value> = self.fields.iter().cloned().collect();
        Value::Object(map).to_string()
    }

    /// Reads what [`Self::to_json`] wrote (fields in name order, which neither the hash nor
    /// [`Self::changes_since`] depends on); `None` when `text` is not a JSON object.
    pub fn from_json(text: &str) -> Option<NormalizedSpec> {
        match serde_json::from_str(text).ok()? {
            Value::Object(map) => Some(NormalizedSpec {
                fields: map.into_iter().collect(),
            }),
            _ => None,
        }
    }

    /// The value of `field`, when the spec has it.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find_map(|(name, value)| (name == field).then_some(value))
    }

    /// Every field whose value differs from `old`'s, in this spec's order, then the fields
    /// only `old` has. The planner's `partitions` is left out when a `scope` field changed,
    /// since it then changes with it.
    pub fn changes_since(&self, old: &NormalizedSpec) -> Vec<FieldChange> {
        let mut changes: Vec<FieldChange> = self
            .fields
            .iter()
            .filter(|(name, value)| old.get(name) != Some(value))
            .map(|(name, value)| FieldChange {
                field: name.clone(),
                old: old.get(name).cloned(),
                new: Some(value.clone()),
            })
            .collect();
        changes.extend(
            old.fields
                .iter()
                .filter(|(name, _)| self.get(name).is_none())
                .map(|(name, value)| FieldChange {
                    field: name.clone(),
                    old: Some(value.clone()),
                    new: None,
                }),
        );
        if changes.iter().any(|c| c.field.starts_with("scope.")) {
            changes.retain(|c| c.field != "partitions");
        }
        changes
    }
}

impl FieldChange {
    /// True when the change moves the writes to another database or table: a new run writes
    /// there from scratch, and what the unfinished run already wrote stays where it was.
    pub fn moves_the_target(&self) -> bool {
        self.field == "target.url" || self.field == "target.table"
    }
}

impl fmt::Display for FieldChange {
    /// `scope.end: "2026-03-04T00:00:00Z" -> "2026-03-05T00:00:00Z"`; a side without the
    /// field reads `(absent)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |v: &Option<Value>| v.as_ref().map_or("(absent)".to_owned(), Value::to_string);
        write!(
            f,
            "{}: {} -> {}",
            self.field,
            side(&self.old),
            side(&self.new)
        )
    }
}

fn instant(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The partition size in its shortest spec form: `1h` and `60m` are the same plan.
fn step_text(step: Step) -> String {
    match step {
        Step::Seconds(s) if s % 3600 == 0 => format!("{}h", s / 3600),
        Step::Seconds(s) if s % 60 == 0 => format!("{}m", s / 60),
        Step::Seconds(s) => format!("{s}s"),
        Step::Days(n) => format!("{n}d"),
        Step::Weeks(n) => format!("{n}w"),
        Step::Months(n) => format!("{n}mo"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use expect_test::expect;

    use super::*;
    use crate::plan::{Plan, plan};
    use crate::spec::ParseContext;

    /// A spec in the shape of the demo's: SQLite files next to the spec, a password from the
    /// environment in a throttle probe (which is not part of the plan).
    const SPEC: &str = r#"
name = "orders_repair"
reason = "ETL outage"

[source]
url = "sqlite://source.db"
query = "SELECT id, v, ts FROM t WHERE ts >= :start AND ts < :end"

[target]
url = "postgres://app:${DB_PASSWORD}@db.internal:5432/shop?sslmode=require"
table = "t_copy"
key = ["id"]
guard = "updated_at"

[scope]
start = "2026-03-01T00:00:00Z"
end = "2026-03-04T00:00:00Z"
partition = "1d"

[limits]
concurrency = 2
"#;

    fn spec_in(text: &str, folder: &str, password: &str) -> Spec {
        let env = |name: &str| (name == "DB_PASSWORD").then(|| password.to_owned());
        let parsed = crate::spec::parse(
            text,
            &ParseContext {
                env: &env,
                base_dir: Path::new(folder),
            },
        );
        parsed
            .spec
            .unwrap_or_else(|| panic!("{:?}", parsed.diagnostics))
    }

    fn plan_in(text: &str, folder: &str, password: &str) -> Plan {
        plan(&spec_in(text, folder, password)).expect("plan")
    }

    fn changes(old: &str, new: &str) -> String {
        let old = plan_in(old, "/specs", "pw");
        let new = plan_in(new, "/specs", "pw");
        let lines: Vec<String> = new
            .normalized
            .changes_since(&old.normalized)
            .iter()
            .map(FieldChange::to_string)
            .collect();
        lines.join("\n")
    }

    /// Pins the plan hash of a fixed spec: if this changes, every unfinished run in every
    /// state store stops resuming. Change it only with a reason in the commit message.
    #[test]
    fn golden_plan_hash() {
        let plan = plan_in(SPEC, "/home/alice/demo", "s3cret");
        expect!["db1569fca2f5814a"].assert_eq(&plan.hash);
        expect![[r#"{"partitions":{"count":3,"digest":"c467a524815ec7f9"},"scope.end":"2026-03-04T00:00:00Z","scope.partition":"1d","scope.start":"2026-03-01T00:00:00Z","scope.timezone":"UTC","source.query":"SELECT id, v, ts FROM t WHERE ts >= :start AND ts < :end","source.time_format":"rfc3339","source.url":"sqlite://source.db","target.guard":"updated_at","target.key":["id"],"target.mode":"upsert","target.table":"t_copy","target.time_format":"native","target.url":"postgres://app@db.internal:5432/shop?sslmode=require"}"#]]
            .assert_eq(&plan.normalized.to_json());
        // Runs made before the normalised spec carry the old hash, of absolute paths.
        let spec = spec_in(SPEC, "/home/alice/demo", "s3cret");
        expect!["e8d458abb0b19a5b"].assert_eq(&crate::plan::legacy_hash(&spec, &plan));
    }

    /// The plan hashes its windows as it cuts them, keeping none: the `partitions` field is
    /// still the count and `short_hash` of every window collected, as before it streamed.
    #[test]
    fn the_streamed_partitions_field_is_the_collected_one() {
        let scopes = [
            "from = -5\nto = 250_000\nchunk = 1",
            "start = \"2026-03-01T00:00:00Z\"\nend = \"2027-03-04T00:00:00Z\"\npartition = \"7m\"",
            "start = \"2026-03-01T00:00:00Z\"\nend = \"2031-03-04T00:00:00Z\"\npartition = \"1d\"\ntimezone = \"Europe/Berlin\"",
        ];
        for scope in scopes {
            let text = SPEC.replace(
                "start = \"2026-03-01T00:00:00Z\"\nend = \"2026-03-04T00:00:00Z\"\npartition = \"1d\"",
                scope,
            );
            let spec = spec_in(&text, "/specs", "pw");
            let plan = plan(&spec).expect("plan");
            let collected = crate::plan::partitions(&spec.scope).expect("partitions");
            let texts: Vec<String> = collected.iter().map(|p| p.window.canonical()).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            assert_eq!(
                plan.normalized.get("partitions"),
                Some(&json!({ "count": collected.len(), "digest": short_hash(&refs) })),
                "{scope}"
            );
            assert_eq!(plan.len(), collected.len());
            assert!(plan.partitions().eq(collected), "{scope}");
        }
    }

    #[test]
    fn the_folder_the_password_and_the_limits_are_not_part_of_the_plan() {
        let here = plan_in(SPEC, "/home/alice/demo", "s3cret");
        let moved = plan_in(SPEC, "/srv/backfills/demo-copy", "rotated");
        assert_eq!(here.hash, moved.hash);
        let relimited = SPEC.replace("concurrency = 2", "concurrency = 8\nrows_per_second = 10");
        let renamed = relimited.replace("orders_repair", "orders_repair_2");
        assert_eq!(plan_in(&renamed, "/x", "pw").hash, here.hash);
        // An absolute SQLite path is the database wherever the spec lies, and another one.
        let absolute = SPEC.replace("sqlite://source.db", "sqlite:///data/source.db");
        assert_eq!(
            plan_in(&absolute, "/a", "pw").hash,
            plan_in(&absolute, "/b", "pw").hash
        );
        assert_ne!(plan_in(&absolute, "/data", "pw").hash, here.hash);
    }

    #[test]
    fn readiness_and_canary_are_not_part_of_the_plan() {
        let here = plan_in(SPEC, "/specs", "pw");
        let gated = SPEC
            .replace(
                "ts < :end\"\n",
                "ts < :end\"\nready = \"SELECT count(*) FROM loads WHERE d >= :start AND d < :end\"\nready_timeout = \"1h\"\n",
            )
            .replace(
                "[limits]",
                "[canary]\npartitions = 3\nseed = 9\nrequire_approval = true\n\n[limits]",
            );
        let gated_plan = plan_in(&gated, "/specs", "pw");
        assert!(
            gated.contains("ready =") && gated.contains("[canary]"),
            "{gated}"
        );
        assert_eq!(gated_plan.hash, here.hash);
    }

    #[test]
    fn the_stored_form_holds_no_password_and_reads_back() {
        let plan = plan_in(SPEC, "/specs", "s3cret");
        let json = plan.normalized.to_json();
        assert!(!json.contains("s3cret"), "{json}");
        let back = NormalizedSpec::from_json(&json).expect("reads back");
        assert_eq!(back.hash(), plan.hash, "the stored form hashes alike");
        assert!(plan.normalized.changes_since(&back).is_empty());
        assert_eq!(NormalizedSpec::from_json("[1]"), None);
    }

    #[test]
    fn changes_name_each_field_with_its_old_and_new_value() {
        let moved_end = SPEC.replace("2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z");
        let two = moved_end.replace("\"t_copy\"", "\"t_copy2\"");
        expect![[r#"
            target.table: "t_copy" -> "t_copy2"
            scope.end: "2026-03-04T00:00:00Z" -> "2026-03-05T00:00:00Z""#]]
        .assert_eq(&changes(SPEC, &two));
        // Another host: the URL shows, its password does not.
        let host = SPEC.replace("db.internal", "db2.internal");
        expect![[r#"target.url: "postgres://app@db.internal:5432/shop?sslmode=require" -> "postgres://app@db2.internal:5432/shop?sslmode=require""#]]
            .assert_eq(&changes(SPEC, &host));
        // Another kind of scope: fields on one side only.
        let keys = SPEC.replace(
            "start = \"2026-03-01T00:00:00Z\"\nend = \"2026-03-04T00:00:00Z\"\npartition = \"1d\"",
            "from = 1\nto = 100\nchunk = 50",
        );
        expect![[r#"
            scope.from: (absent) -> 1
            scope.to: (absent) -> 100
            scope.chunk: (absent) -> 50
            scope.start: "2026-03-01T00:00:00Z" -> (absent)
            scope.end: "2026-03-04T00:00:00Z" -> (absent)
            scope.partition: "1d" -> (absent)
            scope.timezone: "UTC" -> (absent)"#]]
        .assert_eq(&changes(SPEC, &keys));
        // Same partitions written another way: no change.
        let hours = SPEC.replace("partition = \"1d\"", "partition = \"24h\"");
        assert_eq!(changes(SPEC, &hours), "scope.partition: \"1d\" -> \"24h\"");
        let minutes = SPEC.replace("partition = \"1d\"", "partition = \"1440m\"");
        assert_eq!(changes(&hours, &minutes), "");
    }

    #[test]
    fn a_planner_that_cuts_differently_shows_as_partitions() {
        let plan = plan_in(SPEC, "/specs", "pw");
        let mut old = plan.normalized.clone();
        if let Some((_, v)) = old.fields.iter_mut().find(|(k, _)| k == "partitions") {
            *v = json!({ "count": 4, "digest": "0000000000000000" });
        }
        let lines: Vec<String> = plan
            .normalized
            .changes_since(&old)
            .iter()
            .map(ToString::to_string)
            .collect();
        expect![[r#"partitions: {"count":4,"digest":"0000000000000000"} -> {"count":3,"digest":"c467a524815ec7f9"}"#]]
            .assert_eq(&lines.join("\n"));
    }
}
