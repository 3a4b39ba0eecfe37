//! When a test's server (or server binary) is missing: skip the test, counted, or fail it.
//!
//! One decision for every test crate: services are *required* when `CI` is set to anything
//! non-empty or `BACKFILL_REQUIRE_SERVICES=1`; a missing service then fails the test. Otherwise
//! the test returns early, and since a test runner counts an early return as passed, the skip
//! is written down: one line `TEST<TAB>REASON` appended to the file named by
//! `BACKFILL_SKIP_LOG` (which `scripts/test` sets, then reports those tests as skipped and not
//! as passed), and `skipped: REASON` on stderr.
//!
//! Invariants: a skip is never silent (a skip log that cannot be written fails the test);
//! reasons never carry a password (URLs in them are redacted).

use std::fmt::Display;
use std::io::Write;
use std::path::Path;

/// The variable naming the skip log file.
pub const SKIP_LOG_ENV: &str = "BACKFILL_SKIP_LOG";

/// Whether a missing service fails the test, given the values of `CI` and
/// `BACKFILL_REQUIRE_SERVICES` (`None`: unset). Guarantees: any non-empty `CI` (CI systems
/// set `true`, `1`, or their own name) or `BACKFILL_REQUIRE_SERVICES=1` requires services.
pub fn required_by(ci: Option<&str>, require_services: Option<&str>) -> bool {
    ci.is_some_and(|v| !v.is_empty()) || require_services == Some("1")
}

/// Whether a missing service fails the test in this process's environment (see
/// [`required_by`]).
pub fn required() -> bool {
    let var = |name| std::env::var(name).ok();
    required_by(
        var("CI").as_deref(),
        var("BACKFILL_REQUIRE_SERVICES").as_deref(),
    )
}

/// Skips the calling test because of `reason`, or fails it when services are [`required`].
///
/// Returns `None` (for `let Some(x) = … else { return }`) after printing `skipped: REASON`
/// and appending the test's line to the skip log; panics instead when required, or when the
/// skip log cannot be written (an uncounted skip would pass silently).
pub fn skip_or_fail<T>(reason: &str) -> Option<T> {
    let reason = backfill_core::secret::redact(reason);
    assert!(
        !required(),
        "{reason}\nhint: services are required here (CI is set or BACKFILL_REQUIRE_SERVICES=1); \
         start them with `scripts/services --start` or point BACKFILL_TEST_POSTGRES_URL / \
         BACKFILL_TEST_MYSQL_URL at running servers"
    );
    #[allow(clippy::print_stderr, reason = "the one way a test can say it skipped")]
    {
        eprintln!("skipped: {reason}");
    }
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        let log = Path::new(&log);
        record(log, &current_test(), &reason)
            .unwrap_or_else(|e| panic!("cannot append to the skip log {}: {e}", log.display()));
    }
    None
}

/// [`skip_or_fail`] for a server that did not answer: `WHAT not reachable at URL: ERROR`
/// (the URL's password redacted).
pub fn unreachable<T>(what: &str, url: &str, error: &dyn Display) -> Option<T> {
    skip_or_fail(&format!("{what} not reachable at {url}: {error}"))
}

/// [`skip_or_fail`] for something the machine lacks (server binaries): `WHAT missing`.
pub fn missing<T>(what: &str) -> Option<T> {
    skip_or_fail(&format!("{what} missing"))
}

/// Appends `TEST<TAB>REASON` to `log` in one write (tests of several processes share the
/// file; an appended line is not interleaved). Tabs and line breaks in either field become
/// spaces, so each skip is exactly one line.
pub fn record(log: &Path, test: &str, reason: &str) -> std::io::Result<()> {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let line = format!("{}\t{}\n", clean(test), clean(reason));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

/// The running test as a runner names it: `PACKAGE TEST_PATH` (`backfill-cli
/// matrix::postgres_to_mysql`). The test path is the name of the thread the harness runs the
/// test on; call this from the test's own thread, not from a spawned task.
pub fn current_test() -> String {
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default()
    });
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    format!("{package} {test}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_required_by_any_non_empty_ci_or_require_services_1() {
        let cases = [
            (None, None, false),
            (Some(""), None, false),
            (None, Some("0"), false),
            (None, Some(""), false),
            (None, Some("yes"), false),
            (Some(""), Some("0"), false),
            (Some("true"), None, true),
            (Some("1"), None, true),
            (Some("false"), None, true),
            (Some("gitlab"), Some("0"), true),
            (None, Some("1"), true),
            (Some(""), Some("1"), true),
        ];
        for (ci, require, expected) in cases {
            assert_eq!(
                required_by(ci, require),
                expected,
                "CI={ci:?} BACKFILL_REQUIRE_SERVICES={require:?}"
            );
        }
    }

    #[test]
    fn each_skip_is_one_line_appended_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record(&log, "backfill-cli matrix::a", "PostgreSQL not reachable").unwrap();
        record(&log, "backfill-store x::postgres", "line\nbreak\tand tab").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "backfill-cli matrix::a\tPostgreSQL not reachable\n\
             backfill-store x::postgres\tline break and tab\n"
        );
    }

    #[test]
    fn the_current_test_is_named_by_package_and_path() {
        assert_eq!(
            current_test(),
            "backfill-testkit skip::tests::the_current_test_is_named_by_package_and_path"
        );
    }

    /// `scripts/test-summary` (the end of `scripts/test`) on a runner's output and a skip log.
    fn summary(format: &str, output: &str, skips: &str) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let (out, log) = (dir.path().join("out"), dir.path().join("skips"));
        std::fs::write(&out, output).unwrap();
        std::fs::write(&log, skips).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-summary");
        let ran = std::process::Command::new("bash")
            .arg(script)
            .args([Path::new(format), &out, &log])
            .output()
            .unwrap();
        let stdout = String::from_utf8(ran.stdout).unwrap();
        (ran.status.success(), stdout)
    }

    #[test]
    fn the_suite_reports_skipped_tests_as_skipped_not_passed() {
        let nextest =
            "  PASS [ 0.1s] (1/9) x\n  Summary [ 8.5s] 9 tests run: 9 passed, 0 skipped\n";
        let skips = "backfill-cli matrix::a\tPostgreSQL not reachable\n\
                     backfill-cli matrix::a\tMySQL not reachable\n\
                     backfill-store runs::b::postgres\tPostgreSQL not reachable\n";
        assert_eq!(
            summary("nextest", nextest, skips),
            (
                true,
                "skipped: backfill-cli matrix::a (PostgreSQL not reachable)\n\
                 skipped: backfill-store runs::b::postgres (PostgreSQL not reachable)\n\
                 7 passed, 0 failed, 2 skipped\n"
                    .to_owned()
            )
        );
        assert_eq!(
            summary("nextest", nextest, ""),
            (true, "9 passed, 0 failed, 0 skipped\n".to_owned())
        );
        let failing = "Summary [ 8.5s] 9 tests run: 6 passed, 2 failed, 1 timed out, 0 skipped\n";
        assert_eq!(
            summary("nextest", failing, ""),
            (false, "6 passed, 3 failed, 0 skipped\n".to_owned())
        );
        let cargo = "test result: ok. 5 passed; 0 failed; 0 ignored\n\
                     test result: ok. 4 passed; 0 failed; 1 ignored\n";
        assert_eq!(
            summary("cargo", cargo, "backfill-cli x\tdown\n"),
            (
                true,
                "skipped: backfill-cli x (down)\n8 passed, 0 failed, 1 skipped\n".to_owned()
            )
        );
        // A suite that stopped before its summary (say, a build error) has no closing line.
        assert_eq!(
            summary("nextest", "error: could not compile\n", ""),
            (false, String::new())
        );
    }
}
