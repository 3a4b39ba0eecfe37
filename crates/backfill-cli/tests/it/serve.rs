//! `backfill serve` and `run --metrics-addr`: the real binary on a real state store, read over
//! real HTTP. Every JSON response is checked against `docs/openapi.json`; `/metrics` is parsed
//! by a Prometheus text-format parser; the protective headers, the bind policy and the token
//! are each checked; so are the alert rules of `deploy/prometheus/alerts.yml`.

// A note when promtool is not installed.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Workspace, copy_workspace};

/// A response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request without a body on a fresh connection (`Connection: close`), read to
/// the end.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request_with_body(addr, method, path, headers, "")
}

/// One HTTP/1.1 request with a JSON `body` on a fresh connection, read to the end.
fn request_with_body(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // The caller's own `Host`, or the address connected to.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    let raw = read_response(&mut stream);
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

/// A whole response's bytes: up to its `Content-Length`, to the end of its last chunk, or to
/// the end of the connection (a server may keep it open despite `Connection: close`).
fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if n == 0 {
            return raw;
        }
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(length) if raw.len() >= end + 4 + length => return raw,
            Some(_) => {}
            None if head.contains("transfer-encoding: chunked") && text.ends_with("0\r\n\r\n") => {
                return raw;
            }
            None => {}
        }
    }
}

fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, &[])
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The protective headers every response carries.
fn assert_protected(r: &Response, what: &str) {
    for (name, expected) in [
        ("content-security-policy", "default-src 'none'"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        let value = r.headers.get(name).map(String::as_str).unwrap_or("");
        assert!(value.starts_with(expected), "{what}: {name} = {value:?}");
    }
}

/// A running `backfill serve` (or `run --metrics-addr`), killed when dropped.
struct Server {
    child: Child,
    addr: String,
    stderr: Vec<String>,
}

impl Server {
    /// Starts `args` and waits for the line naming the address (`http://ADDR`) after `marker`.
    fn start(ws: &Workspace, args: &[&str], marker: &str) -> Server {
        let mut child = ws
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backfill");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut stderr = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            assert!(Instant::now() < deadline, "no `{marker}` line: {stderr:#?}");
            let Some(Ok(line)) = lines.next() else {
                panic!("backfill exited before `{marker}`: {stderr:#?}");
            };
            stderr.push(line.clone());
            if let Some(at) = line.find(marker) {
                let rest = &line[at + marker.len()..];
                let addr = rest.trim_start_matches("http://");
                break addr.split(['/', ' ']).next().unwrap().to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            stderr,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `backfill serve` on loopback with `token` in its token file.
fn serve_with_token(ws: &Workspace, token: &str) -> Server {
    ws.write("api.token", &format!("{token}\n"));
    Server::start(
        ws,
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--token-file",
            "api.token",
        ],
        "listening on ",
    )
}

/// `docs/openapi.json`.
fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `value` against the JSON-schema subset `docs/openapi.json` uses (`$ref`, `type`,
/// `enum`, `required`, `properties`, `items`, `oneOf`, `minimum`, `maximum`); returns the
/// first problem, with its path.
fn check_schema(spec: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return check_schema(spec, &spec["components"]["schemas"][name], value, path);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return match options
            .iter()
            .filter(|o| check_schema(spec, o, value, path).is_ok())
            .count()
        {
            1 => Ok(()),
            n => Err(format!("{path}: {value} matches {n} of oneOf")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_ok = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("schema type {other} not supported by the test"),
    };
    if !types.is_empty() && !types.iter().any(|t| type_ok(t)) {
        return Err(format!("{path}: {value} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            return Err(format!("{path}: {n} is under the minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            return Err(format!("{path}: {n} is over the maximum"));
        }
    }
    if let Some(object) = value.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if !object.contains_key(key) {
                return Err(format!("{path}: `{key}` is missing"));
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (key, sub) in properties {
                if let Some(v) = object.get(key) {
                    check_schema(spec, sub, v, &format!("{path}.{key}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check_schema(spec, items, v, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// Asserts a 200 JSON response of `route` (its OpenAPI path) matches the file's schema.
fn assert_documented(spec: &Value, route: &str, r: &Response) -> Value {
    assert_eq!(r.status, 200, "{route}: {}", r.body);
    assert!(
        r.headers["content-type"].starts_with("application/json"),
        "{route}: {:?}",
        r.headers
    );
    let schema =
        &spec["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "{route} is not in docs/openapi.json");
    let value = r.json();
    if let Err(problem) = check_schema(spec, schema, &value, route) {
        panic!("{route} does not match docs/openapi.json: {problem}\n{value:#}");
    }
    value
}

/// An error response: its status and the documented `{error, hint}` shape.
fn assert_error(spec: &Value, r: &Response, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let value = r.json();
    let schema = json_schema(spec, "Error");
    if let Err(problem) = check_schema(spec, &schema, &value, what) {
        panic!("{what}: {problem}");
    }
    value
}

fn json_schema(spec: &Value, name: &str) -> Value {
    spec["components"]["schemas"][name].clone()
}

/// Pages of one partition sorted by each order, followed by `next_cursor`, list the plan
/// once, largest first (ties in plan order); a wrong order or cursor is 400.
fn assert_sorted_pages(spec: &Value, addr: &str, run_id: &str) {
    for (sort, field) in [
        ("duration", "elapsed_ms"),
        ("attempts", "attempts"),
        ("rows", "rows"),
    ] {
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/runs/{run_id}/partitions?limit=1&sort={sort}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = assert_documented(spec, "/api/runs/{run}/partitions", &get(addr, &path));
            assert_eq!(page["sort"], sort);
            assert_eq!(page["next_after"], Value::Null);
            for p in page["partitions"].as_array().unwrap() {
                let value = match field {
                    "rows" => p["rows"]["read"].as_u64(),
                    f => p[f].as_u64(),
                };
                seen.push((value.unwrap(), p["index"].as_u64().unwrap()));
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
            assert!(seen.len() <= 3, "paging does not end: {seen:?}");
        }
        let mut want = seen.clone();
        want.sort_by_key(|(v, i)| (std::cmp::Reverse(*v), *i));
        assert_eq!(seen, want, "sort={sort}");
        let mut indexes: Vec<u64> = seen.iter().map(|(_, i)| *i).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 2], "sort={sort}");
    }
    for bad in [
        "sort=slowest",
        "sort=rows&cursor=12",
        "sort=rows&cursor=a:b",
    ] {
        let r = get(addr, &format!("/api/runs/{run_id}/partitions?{bad}"));
        assert_error(spec, &r, 400, bad);
    }
}

/// A workspace whose 3-day copy of 300 rows has run to success; returns the run id.
async fn finished_run(ws: &Workspace) -> String {
    copy_workspace(ws, 300, "batch_rows = 1000").await;
    let ran = ws.run(&["--json", "run", "spec.toml"]);
    assert_eq!(ran.code, 0, "{ran:#?}");
    ran.json()["run_id"].as_str().unwrap().to_owned()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(metrics: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn parse_metrics(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("a Prometheus text exposition")
}

/// The API answers what `status` and the store say, in the documented shapes, page by page;
/// `/metrics` parses and carries the run's numbers; bad input gets the documented errors;
/// every response carries the protective headers; SIGTERM stops the server cleanly.
#[tokio::test]
async fn serve_answers_runs_status_pages_and_metrics_as_documented() {
    let ws = Workspace::new();
    let run_id = finished_run(&ws).await;
    let status = ws.run(&["--json", "status", &run_id]).json();
    let spec = openapi();
    let mut server = Server::start(&ws, &["serve", "--bind", "127.0.0.1:0"], "listening on ");
    let addr = server.addr.clone();

    let health = get(&addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_protected(&health, "/healthz");

    let runs = get(&addr, "/api/runs");
    assert_protected(&runs, "/api/runs");
    let runs = assert_documented(&spec, "/api/runs", &runs);
    assert_eq!(runs["runs"][0]["run_id"], run_id.as_str());
    assert_eq!(runs["runs"][0]["state"], "succeeded");

    // A unique prefix works as on the command line; the status is `status --json`'s.
    let one = get(&addr, &format!("/api/runs/{}", &run_id[..8]));
    let one = assert_documented(&spec, "/api/runs/{run}", &one);
    for key in [
        "run_id",
        "state",
        "partitions",
        "rows",
        "reconciliation",
        "plan_hash",
    ] {
        assert_eq!(one[key], status[key], "{key}");
    }
    assert_eq!(one["undo_rows"], Value::Null);

    // Pages of one partition each, followed by `next_after`, cover the plan once, in order.
    let mut seen = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/api/runs/{run_id}/partitions?limit=1&after={a}"),
            None => format!("/api/runs/{run_id}/partitions?limit=1"),
        };
        let page = assert_documented(&spec, "/api/runs/{run}/partitions", &get(&addr, &path));
        for p in page["partitions"].as_array().unwrap() {
            seen.push(p["index"].as_u64().unwrap());
            assert_eq!(p["state"], "done");
            assert_eq!(p["rows"]["read"], 100, "{p:#}");
            assert_eq!(p["check"]["status"], "verified", "{p:#}");
            assert_eq!(p["check"]["row_delta"], 0, "{p:#}");
        }
        match page["next_after"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(seen.len() <= 3, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, [0, 1, 2]);
    let done = get(&addr, &format!("/api/runs/{run_id}/partitions?state=done"));
    let done = assert_documented(&spec, "/api/runs/{run}/partitions", &done);
    assert_eq!(done["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(done["next_after"], Value::Null);
    let failed = get(
        &addr,
        &format!("/api/runs/{run_id}/partitions?state=failed"),
    );
    let failed = assert_documented(&spec, "/api/runs/{run}/partitions", &failed);
    assert_eq!(failed["partitions"], serde_json::json!([]));
    assert_sorted_pages(&spec, &addr, &run_id);

    // Reconciliation checks: every partition verified after writing, page by page.
    let mut checked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/api/runs/{run_id}/checks?limit=2");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = assert_documented(&spec, "/api/runs/{run}/checks", &get(&addr, &path));
        for c in page["checks"].as_array().unwrap() {
            assert_eq!(c["status"], "verified", "{c:#}");
            assert_eq!(c["source_rows"], c["target_rows"], "{c:#}");
            checked.push(c["partition_id"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(checked.len() <= 3, "paging does not end: {checked:?}");
    }
    assert_eq!(checked.len(), 3, "{checked:?}");
    let mismatched = get(
        &addr,
        &format!("/api/runs/{run_id}/checks?status=mismatched"),
    );
    let mismatched = assert_documented(&spec, "/api/runs/{run}/checks", &mismatched);
    assert_eq!(mismatched["checks"], serde_json::json!([]));
    let bad = get(&addr, &format!("/api/runs/{run_id}/checks?status=wrong"));
    assert_error(&spec, &bad, 400, "an unknown check status");
    let none = get(&addr, &format!("/api/runs/{run_id}/quarantine"));
    let none = assert_documented(&spec, "/api/runs/{run}/quarantine", &none);
    assert_eq!(none["rows"], serde_json::json!([]));
    let half = get(&addr, &format!("/api/runs/{run_id}/quarantine?after_key=x"));
    assert_error(&spec, &half, 400, "half a quarantine cursor");

    // The run's audit trail, errors, rates, heat strip and progress.
    let audit = get(&addr, &format!("/api/runs/{run_id}/audit?limit=2"));
    let audit = assert_documented(&spec, "/api/runs/{run}/audit", &audit);
    assert_eq!(audit["events"][0]["action"], "run.created", "{audit:#}");
    let after = audit["next_after"].as_i64().expect("a next page");
    let rest = get(
        &addr,
        &format!("/api/runs/{run_id}/audit?after={after}&limit=1000"),
    );
    let rest = assert_documented(&spec, "/api/runs/{run}/audit", &rest);
    let trail = ws.run(&["--json", "audit", &run_id]).json();
    assert_eq!(
        2 + rest["events"].as_array().unwrap().len(),
        trail.as_array().unwrap().len(),
        "the pages hold the run's whole trail"
    );
    let errors = assert_documented(
        &spec,
        "/api/runs/{run}/errors",
        &get(&addr, &format!("/api/runs/{run_id}/errors")),
    );
    assert_eq!(errors["groups"], serde_json::json!([]));
    assert_documented(
        &spec,
        "/api/runs/{run}/rates",
        &get(&addr, &format!("/api/runs/{run_id}/rates")),
    );
    let heat = assert_documented(
        &spec,
        "/api/runs/{run}/heat",
        &get(&addr, &format!("/api/runs/{run_id}/heat?bins=2")),
    );
    let done: u64 = heat["bins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["states"]["done"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        (heat["bins"].as_array().unwrap().len(), done),
        (2, 3),
        "{heat:#}"
    );
    let progress = assert_documented(
        &spec,
        "/api/runs/{run}/progress",
        &get(&addr, &format!("/api/runs/{run_id}/progress?bucket=hour")),
    );
    let rows: u64 = progress["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 300, "{progress:#}");
    assert_error(
        &spec,
        &get(&addr, &format!("/api/runs/{run_id}/progress?bucket=day")),
        400,
        "bad bucket",
    );

    // Bad input: the documented error shape, with a hint.
    let bad_state = get(&addr, &format!("/api/runs/{run_id}/partitions?state=bogus"));
    let e = assert_error(&spec, &bad_state, 400, "bad state");
    assert!(
        e["hint"].as_str().unwrap().contains("done_with_quarantine"),
        "{e}"
    );
    assert_error(
        &spec,
        &get(&addr, &format!("/api/runs/{run_id}/partitions?limit=x")),
        400,
        "bad limit",
    );
    let unknown = assert_error(&spec, &get(&addr, "/api/runs/ffffffff"), 404, "unknown run");
    assert!(
        unknown["hint"].as_str().unwrap().contains("backfill runs"),
        "{unknown}"
    );
    let nowhere = get(&addr, "/nowhere");
    assert_error(&spec, &nowhere, 404, "unknown path");
    assert_protected(&nowhere, "/nowhere");
    // Read-only: nothing but GET.
    assert_eq!(request(&addr, "POST", "/api/runs", &[]).status, 405);
    assert_eq!(
        request(&addr, "DELETE", &format!("/api/runs/{run_id}"), &[]).status,
        405
    );

    // Metrics: the run's numbers, parsed as Prometheus would.
    let metrics = get(&addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    assert_protected(&metrics, "/metrics");
    let scrape = parse_metrics(&metrics.body);
    let run = [("run_id", run_id.as_str()), ("spec", "copy_events")];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = run.to_vec();
        labels.push(extra);
        labels
    };
    // (metric, extra label, value) of the finished 3-day, 300-row run.
    let expected = [
        ("backfill_run_info", Some(("state", "succeeded")), 1.0),
        ("backfill_run_partitions", Some(("state", "done")), 3.0),
        ("backfill_run_partitions", Some(("state", "failed")), 0.0),
        ("backfill_run_partitions_planned", None, 3.0),
        ("backfill_run_rows", Some(("outcome", "read")), 300.0),
        ("backfill_run_rows", Some(("outcome", "inserted")), 300.0),
        ("backfill_run_attempts_total", None, 3.0),
        ("backfill_run_attempt_errors_total", None, 0.0),
        ("backfill_run_success_ratio", None, 1.0),
        (
            "backfill_run_reconciled_partitions",
            Some(("result", "verified")),
            3.0,
        ),
        ("backfill_run_executing", None, 0.0),
    ];
    for (name, extra, value) in expected {
        let labels = match extra {
            Some(label) => with(label),
            None => run.to_vec(),
        };
        assert_eq!(
            sample(&scrape, name, &labels),
            Some(value),
            "{name} {extra:?}"
        );
    }
    let events = ws.run(&["--json", "audit", "--verify"]).json();
    assert_eq!(
        sample(&scrape, "backfill_audit_events", &[]),
        events["events"].as_f64(),
        "{events}"
    );
    assert!(sample(&scrape, "process_cpu_seconds_total", &[]).is_some_and(|v| v >= 0.0));
    assert!(sample(&scrape, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6));
    // Every series is documented in docs/metrics.md.
    let documented = documented_metrics();
    for s in &scrape.samples {
        assert!(
            documented.contains(&s.metric),
            "{} is not in docs/metrics.md",
            s.metric
        );
    }
    // Low cardinality: no label names a partition.
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| !s.labels.keys().any(|k| k.contains("partition"))),
        "a partition label"
    );

    // SIGTERM: a clean stop.
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}: {:#?}", server.stderr);
}

/// Any address but loopback needs a token, refused before listening; a token file must hold
/// a real token; a request with `Authorization` must carry the token (401 otherwise), one
/// without reads; no response carries the token.
#[tokio::test]
async fn serve_guards_other_addresses_with_a_token() {
    let ws = Workspace::new();
    let run_id = finished_run(&ws).await;

    let open = ws.run(&["--json", "serve", "--bind", "0.0.0.0:0"]);
    assert_eq!(open.code, 2, "{open:#?}");
    let error: Value = serde_json::from_str(open.stderr.lines().last().unwrap()).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("not a loopback address"),
        "{error}"
    );
    assert!(
        error["hint"].as_str().unwrap().contains("--token-file"),
        "{error}"
    );

    ws.write("short.token", "abc\n");
    let short = ws.run(&["serve", "--token-file", "short.token"]);
    assert_eq!(short.code, 2, "{short:#?}");
    assert!(
        short.stderr.contains("at least 16 characters"),
        "{}",
        short.stderr
    );
    let missing = ws.run(&["serve", "--token-file", "no-such.token"]);
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert!(
        missing.stderr.contains("cannot read the token file"),
        "{}",
        missing.stderr
    );

    let token = "s3cret-token-0123456789abcdef";
    let server = serve_with_token(&ws, token);
    let addr = &server.addr;
    let path = format!("/api/runs/{run_id}");
    assert_eq!(get(addr, &path).status, 200);
    let bearer = format!("Bearer {token}");
    let right = request(addr, "GET", &path, &[("Authorization", &bearer)]);
    assert_eq!(right.status, 200, "{}", right.body);
    for wrong in ["Bearer nope", "Basic abc", token] {
        let r = request(addr, "GET", &path, &[("Authorization", wrong)]);
        assert_eq!(r.status, 401, "{wrong}: {}", r.body);
        assert_protected(&r, "401");
        assert!(r.json()["hint"].as_str().unwrap().contains("Bearer"));
    }
    // A page of another site whose name was rebound to 127.0.0.1 is not answered.
    let rebound = request(addr, "GET", &path, &[("Host", "evil.example:80")]);
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    for host in [
        format!("localhost:{}", addr.rsplit(':').next().unwrap()),
        addr.clone(),
    ] {
        assert_eq!(
            request(addr, "GET", &path, &[("Host", &host)]).status,
            200,
            "{host}"
        );
    }
    for route in ["/api/runs", path.as_str(), "/metrics", "/nowhere"] {
        let r = request(addr, "GET", route, &[("Authorization", &bearer)]);
        assert!(!r.body.contains(token), "{route} shows the token");
    }
    assert!(
        server.stderr.iter().all(|l| !l.contains(token)),
        "{:#?}",
        server.stderr
    );
    drop(server);

    // Off loopback (all addresses; reached here through loopback), every request but
    // `/healthz` and the dashboard's files needs the token, reads included.
    let wide = Server::start(
        &ws,
        &["serve", "--bind", "0.0.0.0:0", "--token-file", "api.token"],
        "listening on ",
    );
    let port = wide.addr.rsplit(':').next().unwrap();
    let local = format!("127.0.0.1:{port}");
    for route in ["/api/runs", path.as_str(), "/metrics"] {
        let r = get(&local, route);
        assert_eq!(r.status, 401, "{route}: {}", r.body);
        assert!(
            r.json()["hint"].as_str().unwrap().contains("Bearer"),
            "{}",
            r.body
        );
        assert_eq!(
            request(&local, "GET", route, &[("Authorization", &bearer)]).status,
            200,
            "{route}"
        );
    }
    for open in ["/healthz", "/", "/assets/app.js"] {
        assert_eq!(get(&local, open).status, 200, "{open}");
    }
}

/// `run --metrics-addr` serves the run's metrics while it executes: the run shows running and
/// executing, its rows grow between scrapes; the flag refuses a non-loopback address.
#[tokio::test]
async fn run_serves_its_metrics_while_it_executes() {
    let ws = Workspace::new();
    copy_workspace(
        &ws,
        600,
        "batch_rows = 20\nrows_per_second = 150\nbudget = { cost = { per_million_rows = 1.0, \
         per_hour = 36.0, currency = \"EUR\" } }",
    )
    .await;
    let spec = std::fs::read_to_string(ws.path("spec.toml")).unwrap();
    ws.write(
        "spec.toml",
        &format!("{spec}\n[slo]\ncomplete_within = \"48h\"\nsuccess_rate = 0.99\n"),
    );

    let refused = ws.run(&["run", "spec.toml", "--metrics-addr", "0.0.0.0:9464"]);
    assert_eq!(refused.code, 2, "{refused:#?}");
    assert!(
        refused.stderr.contains("not a loopback address"),
        "{}",
        refused.stderr
    );

    let mut server = Server::start(
        &ws,
        &["run", "spec.toml", "--metrics-addr", "127.0.0.1:0"],
        "metrics at ",
    );
    let addr = server.addr.clone();
    let read = |scrape: &prometheus_parse::Scrape| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "backfill_run_rows" && s.labels.get("outcome") == Some("read"))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reads = Vec::new();
    let mut last_scrape = None;
    let projected = |s: &Option<prometheus_parse::Scrape>| {
        s.as_ref().and_then(|s| {
            sample(
                s,
                "backfill_run_slo_projected_completion_timestamp_seconds",
                &[],
            )
        })
    };
    // Until the metrics moved twice, and the first partition's end gave an ETA.
    while reads.len() < 2 || projected(&last_scrape).is_none() {
        assert!(
            Instant::now() < deadline,
            "no progress in the metrics: {reads:?}"
        );
        let scrape_now = parse_metrics(&get(&addr, "/metrics").body);
        let scrape = &scrape_now;
        let running = scrape
            .samples
            .iter()
            .any(|s| s.metric == "backfill_run_info" && s.labels.get("state") == Some("running"));
        let executing = scrape.samples.iter().any(|s| {
            s.metric == "backfill_run_executing"
                && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0)
        });
        if let Some(r) = read(scrape).filter(|r| *r > 0.0 && running && executing)
            && reads.last().is_none_or(|last| r > *last)
        {
            reads.push(r);
        }
        last_scrape = Some(scrape_now);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(reads[1] > reads[0], "{reads:?}");
    // `[slo]`: the objective, the burn rates of both windows, the budget used, the deadline
    // two days after the run's creation and the projected completion before it.
    let scrape = last_scrape.expect("a scrape");
    let at = |name: &str, labels: &[(&str, &str)]| {
        sample(&scrape, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    assert_eq!(at("backfill_run_slo_success_ratio_objective", &[]), 0.99);
    assert_eq!(at("backfill_run_slo_burn_rate", &[("window", "5m")]), 0.0);
    assert_eq!(at("backfill_run_slo_burn_rate", &[("window", "1h")]), 0.0);
    assert_eq!(at("backfill_run_slo_error_budget_used_ratio", &[]), 0.0);
    let deadline = at("backfill_run_slo_deadline_timestamp_seconds", &[]);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (deadline - now - 48.0 * 3600.0).abs() < 120.0,
        "{deadline} vs {now}"
    );
    // M9: money spent so far (36 per hour: a cent a second) and to complete.
    let spent = at(
        "backfill_run_cost",
        &[("kind", "spent"), ("currency", "EUR")],
    );
    assert!(spent > 0.0 && spent < 1.0, "{spent}");
    // To complete: once the executing process's heartbeat counted a finished partition.
    let to_complete = sample(&scrape, "backfill_run_cost", &[("kind", "to_complete")]);
    assert!(to_complete.is_none_or(|c| c >= 0.0), "{to_complete:?}");
    let projected = projected(&Some(scrape)).expect("a projection");
    assert!(
        projected >= now - 60.0 && projected < deadline,
        "{projected}"
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The metric names of `docs/metrics.md` (generated from the code; a unit test keeps it so).
fn documented_metrics() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// The names `expr` uses that are neither a metric of `metrics` (`backfill_…`, `process_…`)
/// nor one of the recording rules `records` (`backfill:…`).
fn unknown_series(expr: &str, metrics: &[String], records: &[&str]) -> Vec<String> {
    expr.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| {
            if word.contains(':') {
                !records.contains(word)
            } else if word.starts_with("backfill_") || word.starts_with("process_") {
                !metrics.iter().any(|m| m == word)
            } else {
                false
            }
        })
        .map(str::to_owned)
        .collect()
}

/// The recording rules of `deploy/prometheus/alerts.yml`.
fn recording_rules(rules: &str) -> Vec<&str> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- record: "))
        .collect()
}

/// `deploy/grafana/backfill.json` is a dashboard whose every query names only exposed metrics
/// and recording rules of the alert file, through the `datasource` variable, filtered by the
/// `run` variable where it queries a run's series.
#[test]
fn grafana_dashboard_queries_real_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/backfill.json")).unwrap(),
    )
    .unwrap();
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let records = recording_rules(&rules);
    let metrics = documented_metrics();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "job", "run"]);
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queries += 1;
            let unknown = unknown_series(expr, &metrics, &records);
            assert!(unknown.is_empty(), "{title}: {expr}: unknown {unknown:?}");
            if expr.contains("backfill_run_") || expr.contains("backfill:") {
                assert!(
                    expr.contains("$run"),
                    "{title}: {expr} ignores the run variable"
                );
            }
        }
    }
    assert!(queries >= 15, "{queries} queries");
}

/// A heading's anchor as GitHub renders it: lower case, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// `deploy/prometheus/alerts.yml` names only metrics the server exposes (`docs/metrics.md`)
/// or recording rules of its own; every alert waits out a `for:`, has severity `page` or
/// `ticket`, a summary, and a runbook link to a section of `docs/runbook.md` that exists.
#[test]
fn alert_rules_name_real_metrics_and_runbook_sections() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let rules_path = format!("{root}/deploy/prometheus/alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let runbook = std::fs::read_to_string(format!("{root}/docs/runbook.md")).unwrap();
    let sections: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let metrics = documented_metrics();
    assert!(metrics.len() > 15, "{metrics:?}");

    // Each rule: its lines up to the next `- alert:` / `- record:` / group.
    let mut rules_seen: Vec<(String, Vec<&str>)> = Vec::new();
    for line in rules.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert: ").or(t.strip_prefix("- record: ")) {
            rules_seen.push((name.to_owned(), vec![t]));
        } else if t.starts_with("- name:") {
            continue;
        } else if let Some((_, lines)) = rules_seen.last_mut() {
            lines.push(t);
        }
    }
    let records = recording_rules(&rules);
    let alerts = rules_seen
        .iter()
        .filter(|(_, l)| l[0].starts_with("- alert:"));
    let mut n_alerts = 0;
    let field = |lines: &[&str], key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    for (name, lines) in rules_seen.iter() {
        let expr = field(lines, "expr:").unwrap_or_else(|| panic!("{name} has no expr"));
        let unknown = unknown_series(&expr, &metrics, &records);
        assert!(
            unknown.is_empty(),
            "{name}: not in docs/metrics.md nor a recording rule: {unknown:?}"
        );
    }
    for (name, lines) in alerts {
        n_alerts += 1;
        assert!(field(lines, "for:").is_some(), "{name} has no `for:`");
        let severity = field(lines, "severity:").unwrap_or_default();
        assert!(
            ["page", "ticket"].contains(&severity.as_str()),
            "{name}: {severity}"
        );
        assert!(
            field(lines, "summary:").is_some_and(|s| s.contains("{{ $labels.run_id }}")),
            "{name}: its summary names the run"
        );
        let url = field(lines, "runbook_url:").unwrap_or_else(|| panic!("{name}: no runbook"));
        let section = url
            .strip_prefix("docs/runbook.md#")
            .unwrap_or_else(|| panic!("{name}: {url}"));
        assert!(
            sections.iter().any(|s| s == section),
            "{name}: no section {section} in {sections:?}"
        );
    }
    assert!(n_alerts >= 8, "{n_alerts} alerts");
    for needed in [
        "BackfillErrorBudgetFastBurn",
        "BackfillReconciliationMismatch",
        "BackfillLiveLatencyBreach",
        "BackfillRunStalled",
        "BackfillBudgetNearlySpent",
        "BackfillCompletionLate",
    ] {
        assert!(rules.contains(&format!("- alert: {needed}")), "{needed}");
    }
}

/// Prometheus's own checker accepts the rules (`promtool check rules`), and their unit tests
/// pass (`promtool test rules deploy/prometheus/alerts.test.yml`: which alerts fire for which
/// runs, under their `[slo]` objectives or the defaults, with which text). promtool comes
/// from `scripts/promtool` (Debian's `prometheus` package, extracted under `target/`).
#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let found = std::process::Command::new(format!("{root}/scripts/promtool"))
        .output()
        .expect("run scripts/promtool");
    if !found.status.success() {
        let _: Option<()> = backfill_testkit::skip::missing(&format!(
            "promtool ({})",
            String::from_utf8_lossy(&found.stderr).trim()
        ));
        return;
    }
    let promtool = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(root)
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("SUCCESS"),
            "promtool {}: {text}",
            args.join(" ")
        );
    }
}

/// The id of the newest run (other than `except`) once it is in state `want`, polled through
/// the API (20 s at most).
fn newest_run_in(addr: &str, want: &str, except: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = get(addr, "/api/runs").json();
        if let Some(id) = runs["runs"][0]["run_id"].as_str()
            && Some(id) != except
            && get(addr, &format!("/api/runs/{id}")).json()["state"] == want
        {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "no new run is {want}: {runs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /api/runs/{run}`'s `state`, polled until it is `want` (15 s at most).
fn wait_for_state(addr: &str, run_id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = get(addr, &format!("/api/runs/{run_id}")).json();
        if status["state"] == want {
            return status;
        }
        assert!(Instant::now() < deadline, "never {want}: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controls over HTTP on a run another process executes: refused without the token
/// (401) and on a server without one (403); with it, pause, resume, throttle and cancel act
/// on the executing process and are audit events naming the caller; a resume with no
/// process to continue it and a control on a finished run are 409; bad bodies are 400.
#[tokio::test]
async fn controls_need_the_token_act_on_the_run_and_name_the_caller() {
    let ws = Workspace::new();
    // 2,400 rows at 300 rows/s: about 8 s of work.
    copy_workspace(&ws, 2_400, "batch_rows = 50\nrows_per_second = 300").await;
    let spec = openapi();
    let token = "control-token-0123456789abcdef";
    let bearer = format!("Bearer {token}");
    let server = serve_with_token(&ws, token);
    let open = Server::start(&ws, &["serve", "--bind", "127.0.0.1:0"], "listening on ");
    let addr = server.addr.clone();
    let mut run = ws
        .command(&["run", "spec.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_id = newest_run_in(&addr, "running", None);
    let control = |action: &str, headers: &[(&str, &str)], body: &str| {
        let path = format!("/api/runs/{run_id}/{action}");
        let r = request_with_body(&addr, "POST", &path, headers, body);
        (r.status, r.body)
    };
    let as_alice: [(&str, &str); 2] = [("Authorization", &bearer), ("X-Backfill-Actor", "alice")];
    let check = |status: u16, body: &str, want: u16, what: &str| -> Value {
        assert_eq!(status, want, "{what}: {body}");
        let value: Value = serde_json::from_str(body).unwrap();
        let schema = if want == 202 {
            json_schema(&spec, "ControlResult")
        } else {
            json_schema(&spec, "Error")
        };
        if let Err(problem) = check_schema(&spec, &schema, &value, what) {
            panic!("{what}: {problem}");
        }
        value
    };

    // No token, a wrong one, a server without one: refused, nothing recorded.
    let (s, b) = control("pause", &[], "");
    check(s, &b, 401, "pause without the token");
    let (s, b) = control(
        "pause",
        &[("Authorization", "Bearer wrong-token-xxxxxxxxxx")],
        "",
    );
    check(s, &b, 401, "pause with a wrong token");
    let on_open = request(
        &open.addr,
        "POST",
        &format!("/api/runs/{run_id}/pause"),
        &[],
    );
    let refused = check(
        on_open.status,
        &on_open.body,
        403,
        "pause on a server without a token",
    );
    assert!(
        refused["hint"].as_str().unwrap().contains("--token-file"),
        "{refused}"
    );
    // Bad bodies.
    let (s, b) = control("throttle", &as_alice, "{}");
    check(s, &b, 400, "throttle with nothing");
    let (s, b) = control("throttle", &as_alice, r#"{"rows_per_second": "fast"}"#);
    check(s, &b, 400, "throttle with a word");
    let (s, b) = control("pause", &as_alice, "not json");
    check(s, &b, 400, "pause with a bad body");
    assert_eq!(
        get(&addr, &format!("/api/runs/{run_id}")).json()["state"],
        "running"
    );

    // Pause: the executing process pauses and keeps waiting.
    let (s, b) = control("pause", &as_alice, r#"{"reason": "p99 alert"}"#);
    let paused = check(s, &b, 202, "pause");
    assert_eq!(paused["by"], "api:alice@127.0.0.1", "{paused}");
    assert_eq!(paused["process_running"], true, "{paused}");
    let status = wait_for_state(&addr, &run_id, "paused");
    assert_eq!(status["pause_reason"], "user", "{status:#}");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run process exited while paused"
    );
    // Throttle, then resume: it goes on under the new limit.
    let (s, b) = control(
        "throttle",
        &as_alice,
        r#"{"rows_per_second": 600, "concurrency": 2}"#,
    );
    let throttled = check(s, &b, 202, "throttle");
    assert_eq!(throttled["limits"]["rows_per_second"], 600, "{throttled}");
    let (s, b) = control("resume", &as_alice, "");
    check(s, &b, 202, "resume");
    let status = wait_for_state(&addr, &run_id, "running");
    assert_eq!(
        status["control"]["throttle"]["rows_per_second"], 600,
        "{status:#}"
    );
    // Cancel: the process stops, the run ends cancelled.
    let (s, b) = control("cancel", &[("Authorization", &bearer)], "");
    let cancelled = check(s, &b, 202, "cancel");
    assert_eq!(cancelled["by"], "api:anonymous@127.0.0.1", "{cancelled}");
    wait_for_state(&addr, &run_id, "cancelled");
    let exit = run.wait().unwrap();
    assert_eq!(exit.code(), Some(1), "a cancelled run exits 1");

    // Nothing to resume, nothing to pause: 409 with what to do.
    let (s, b) = control("resume", &as_alice, "");
    let nothing = check(s, &b, 409, "resume with no process");
    assert!(
        nothing["hint"]
            .as_str()
            .unwrap()
            .contains("backfill resume"),
        "{nothing}"
    );
    let (s, b) = control("pause", &as_alice, "");
    check(s, &b, 409, "pause of a cancelled run");

    // The audit chain names the caller of each.
    let events = ws.run(&["--json", "audit", &run_id]).json();
    let by = |action: &str| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(by("run.pause_requested"), ["api:alice@127.0.0.1"]);
    assert_eq!(by("run.throttled"), ["api:alice@127.0.0.1"]);
    assert_eq!(by("run.resume_requested"), ["api:alice@127.0.0.1"]);
    assert_eq!(by("run.cancel_requested"), ["api:anonymous@127.0.0.1"]);
    drop(open);
}

/// The dashboard's page, script and style: served from the binary with their types, the page
/// loading only this server's own script and style, the script reading the API and never
/// writing HTML from data (`innerHTML`), nothing from another site.
#[tokio::test]
async fn dashboard_assets_are_served_from_the_binary_and_load_nothing_else() {
    let ws = Workspace::new();
    let server = Server::start(&ws, &["serve", "--bind", "127.0.0.1:0"], "listening on ");
    let addr = &server.addr;
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"].starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert_protected(&page, "/");
    let csp = &page.headers["content-security-policy"];
    for directive in [
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert!(
        page.body.contains("src=\"/assets/app.js\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("href=\"/assets/style.css\""),
        "{}",
        page.body
    );
    let script = get(addr, "/assets/app.js");
    assert!(script.headers["content-type"].starts_with("text/javascript"));
    let style = get(addr, "/assets/style.css");
    assert!(style.headers["content-type"].starts_with("text/css"));
    for (name, body) in [
        ("page", &page.body),
        ("script", &script.body),
        ("style", &style.body),
    ] {
        // The SVG namespace is a name, not a resource.
        let outside = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !outside.contains("http://") && !outside.contains("https://"),
            "{name} loads from elsewhere"
        );
        assert!(
            !body.contains("<script>") && !body.contains("style=\""),
            "{name} has inline script or style"
        );
    }
    assert!(
        !script.body.contains("innerHTML"),
        "the script writes HTML from data"
    );
    assert!(
        script.body.contains("\"/api/runs"),
        "the script reads the API"
    );
}

/// A WebDriver session of `chromedriver` driving headless Chromium, over its HTTP API.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and a session of headless Chromium of
    /// `width` × `height`.
    fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&base).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": { "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.path().display()),
            ]},
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", &capabilities);
        browser.session = created["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// One WebDriver command; returns its `value`, panicking on an error.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let path = if path == "/session" {
            path.to_owned()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = request_with_body(&self.base, method, &path, &[], &body);
        let value = r.json()["value"].clone();
        assert_eq!(r.status, 200, "{method} {path}: {value}");
        value
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", &serde_json::json!({ "url": url }));
    }

    /// The first element matching `css`, waited for up to 20 s.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let path = format!("/session/{}/element", self.session);
            let query = serde_json::json!({ "using": "css selector", "value": css });
            let r = request_with_body(&self.base, "POST", &path, &[], &query.to_string());
            if r.status == 200 {
                let value = r.json()["value"].clone();
                return value
                    .as_object()
                    .unwrap()
                    .values()
                    .next()
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            assert!(Instant::now() < deadline, "no element {css}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("/element/{id}/click"),
            &serde_json::json!({}),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            &serde_json::json!({ "text": text }),
        );
    }

    /// Accepts the page's `confirm()`, waiting for it to open.
    fn accept_dialog(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = format!("/session/{}/alert/accept", self.session);
            if request_with_body(&self.base, "POST", &path, &[], "{}").status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "no confirmation dialog");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's text.
    fn text(&self) -> String {
        let body = self.find("body");
        self.call("GET", &format!("/element/{body}/text"), &Value::Null)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until the page's text contains `needle`.
    fn wait_for_text(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "`{needle}` never shown:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a screenshot of the window as `target/screenshots/NAME.png`.
    fn screenshot(&self, name: &str) {
        let png = base64_decode(
            self.call("GET", "/screenshot", &Value::Null)
                .as_str()
                .unwrap(),
        );
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: {} bytes",
            png.len()
        );
        let shots =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        std::fs::write(shots.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| request(&self.base, "DELETE", &path, &[]));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (WebDriver screenshots).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        other => panic!("not base64: {other}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The dashboard end to end in headless Chromium (driven by chromedriver): it shows a running
/// and a finished run; clicking Pause (token typed, confirmation accepted) pauses the run in
/// the state store, audited with the name typed; Resume continues it. Screenshots of the
/// runs, the on-call panel and the partitions at 1440×900, and of a phone-sized window, are
/// saved under `target/screenshots/` to look at.
#[tokio::test]
async fn dashboard_shows_runs_and_pauses_and_resumes_one_in_a_browser() {
    let tools = ["chromium", "chromedriver"];
    if let Some(missing) = tools.iter().find(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .map_or(true, |o| !o.status.success())
    }) {
        let _: Option<()> = backfill_testkit::skip::missing(&format!(
            "{missing} (Debian packages chromium and chromium-driver; .ci/run installs them)"
        ));
        return;
    }
    let ws = Workspace::new();
    let finished = finished_run(&ws).await;
    // A second run of the same copy, slow enough to be running while the browser acts.
    let spec = std::fs::read_to_string(ws.path("spec.toml")).unwrap();
    ws.write(
        "spec.toml",
        &format!(
            "{}\n[slo]\ncomplete_within = \"48h\"\nsuccess_rate = 0.99\n",
            spec.replace("batch_rows = 1000", "batch_rows = 5\nrows_per_second = 10")
        ),
    );
    let mut running = ws
        .command(&[
            "run",
            "spec.toml",
            "--new",
            "--reason",
            "the dashboard test",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let token = "dashboard-token-0123456789abcdef";
    let server = serve_with_token(&ws, token);
    let addr = server.addr.clone();
    let running_id = newest_run_in(&addr, "running", Some(&finished));

    let browser = Browser::start(1440, 900);
    browser.go(&format!("http://{addr}/"));
    browser.wait_for_text("the dashboard test");
    // The on-call view shows the run's objective once its process reported it.
    browser.wait_for_text("burn rate");
    let page = browser.text();
    for needle in [
        &running_id[..8],
        &finished[..8],
        "running",
        "succeeded",
        "executing",
        "Partitions over the scope",
        "deadline",
        "error budget",
        "most attempts",
    ] {
        assert!(page.contains(needle), "{needle} not shown:\n{page}");
    }
    browser.screenshot("dashboard-runs");

    // Pause, as an operator would: token and name, the button, the confirmation.
    browser.click("#auth summary");
    browser.type_into("#token", token);
    browser.type_into("#actor", "webdriver");
    browser.click("#pause");
    browser.accept_dialog();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&addr, &format!("/api/runs/{running_id}")).json()["state"] != "paused" {
        assert!(Instant::now() < deadline, "the run never paused");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser.wait_for_text("pause recorded by api:webdriver@127.0.0.1");
    browser.wait_for_text("paused (user)");
    browser.screenshot("dashboard-paused");

    browser.click("#resume");
    browser.accept_dialog();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&addr, &format!("/api/runs/{running_id}")).json()["state"] != "running" {
        assert!(Instant::now() < deadline, "the run never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser.wait_for_text("resume recorded by api:webdriver@127.0.0.1");
    let trail = ws.run(&["--json", "audit", &running_id]).json();
    let actors: Vec<&str> = trail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run.pause_requested" || e["action"] == "run.resume_requested")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(
        actors,
        ["api:webdriver@127.0.0.1", "api:webdriver@127.0.0.1"]
    );

    // The debug view, and the page on a phone.
    browser.call(
        "POST",
        "/execute/sync",
        &serde_json::json!({
        "script": "document.getElementById('partitions').scrollIntoView()", "args": [] }),
    );
    browser.screenshot("dashboard-partitions");
    browser.call(
        "POST",
        "/window/rect",
        &serde_json::json!({ "width": 390, "height": 844 }),
    );
    browser.call(
        "POST",
        "/execute/sync",
        &serde_json::json!({ "script": "window.scrollTo(0, 0)", "args": [] }),
    );
    browser.screenshot("dashboard-phone");

    let _ = running.kill();
    let _ = running.wait();
}

/// A run waiting at its canary gate is approved over HTTP (token required): the waiting
/// process goes on to the end, the approval is audited with the caller, and a second approval
/// is 409.
#[tokio::test]
async fn approve_over_http_lets_a_run_past_its_canary_gate() {
    let ws = Workspace::new();
    copy_workspace(&ws, 300, "batch_rows = 1000").await;
    let spec = std::fs::read_to_string(ws.path("spec.toml")).unwrap();
    ws.write(
        "spec.toml",
        &format!("{spec}\n[canary]\npartitions = 1\nrequire_approval = true\n"),
    );
    let token = "approve-token-0123456789abcdef";
    let server = serve_with_token(&ws, token);
    let addr = server.addr.clone();
    let mut run = ws
        .command(&["run", "spec.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_id = newest_run_in(&addr, "awaiting_approval", None);
    let path = format!("/api/runs/{run_id}/approve");
    assert_eq!(request(&addr, "POST", &path, &[]).status, 401);
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("X-Backfill-Actor", "carol"),
    ];
    let approved = request_with_body(
        &addr,
        "POST",
        &path,
        &headers,
        r#"{"reason": "canary rows checked"}"#,
    );
    assert_eq!(approved.status, 202, "{}", approved.body);
    assert_eq!(approved.json()["by"], "api:carol@127.0.0.1");
    let exit = run.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        get(&addr, &format!("/api/runs/{run_id}")).json()["state"],
        "succeeded"
    );
    let again = request_with_body(&addr, "POST", &path, &headers, "");
    assert_eq!(again.status, 409, "{}", again.body);
    let trail = ws.run(&["--json", "audit", &run_id]).json();
    let approval = trail
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "run.approved")
        .expect("an approval event");
    assert_eq!(approval["actor"], "api:carol@127.0.0.1", "{approval}");
}

#[tokio::test]
async fn promote_over_http_swaps_a_shadow_run_in() {
    use crate::shadow::{amounts, count_sum, fixture, only_run_id, spec};
    let ws = Workspace::new();
    let Some((source, target)) = fixture(backfill_testkit::servers::System::Sqlite, &ws).await
    else {
        return;
    };
    let path = ws.write("spec.toml", &spec(&source, &target, "", ""));
    let ran = ws.run(&["run", &path]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let run_id = only_run_id(&ws);
    let token = "promote-token-0123456789abcdef";
    let server = serve_with_token(&ws, token);
    let addr = server.addr.clone();
    let route = format!("/api/runs/{run_id}/promote");
    let openapi = openapi();
    assert_error(
        &openapi,
        &request(&addr, "POST", &route, &[]),
        401,
        "no token",
    );
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("X-Backfill-Actor", "dave"),
    ];
    assert_error(
        &openapi,
        &request_with_body(&addr, "POST", &route, &headers, r#"{"forse": true}"#),
        400,
        "a misspelt field",
    );
    // A live write since seeding refuses it (409, with what to do), changing nothing.
    let dst = target.table("dst");
    target
        .exec(&format!(
            "UPDATE {dst} SET note = 'live write' WHERE id = 70"
        ))
        .await;
    let refused = request_with_body(&addr, "POST", &route, &headers, "");
    let refusal = assert_error(&openapi, &refused, 409, "a changed live table");
    assert!(
        refusal["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--force")),
        "{refusal}"
    );
    assert_eq!(count_sum(&target, "dst").await, Some((300, 0)));

    let promoted = request_with_body(&addr, "POST", &route, &headers, r#"{"force": true}"#);
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    let body = promoted.json();
    let schema = &openapi["paths"]["/api/runs/{run}/promote"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    if let Err(problem) = check_schema(&openapi, schema, &body, "promote") {
        panic!("promote does not match docs/openapi.json: {problem}\n{body:#}");
    }
    assert_eq!(body["by"], "api:dave@127.0.0.1", "{body}");
    assert_eq!(body["forced"], true, "{body}");
    // Not seeded: the live table is now the scope's rows, from the source.
    assert_eq!(
        count_sum(&target, "dst").await,
        Some((120, amounts(61, 180)))
    );
    let again = request_with_body(&addr, "POST", &route, &headers, "");
    assert_error(&openapi, &again, 409, "a second promote");
    let trail = ws.run(&["--json", "audit", &run_id]).json();
    let event = trail
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "run.promoted")
        .expect("a run.promoted event");
    assert_eq!(event["actor"], "api:dave@127.0.0.1", "{event}");
    assert_eq!(event["detail"]["forced"], true, "{event}");
    source.drop_now().await;
    target.drop_now().await;
}

/// The rows a target refused are paged by the API exactly as `backfill quarantine` lists
/// them, reason and row included.
#[tokio::test]
async fn quarantined_rows_are_paged_by_the_api() {
    let ws = Workspace::new();
    copy_workspace(&ws, 300, "batch_rows = 1000").await;
    let target = sqlx::SqlitePool::connect(&format!("sqlite://{}", ws.path("target.db").display()))
        .await
        .unwrap();
    // Every 25th row is refused: 12 rows over 3 partitions.
    sqlx::raw_sql(
        "CREATE TRIGGER refuse BEFORE INSERT ON events_copy WHEN NEW.id % 25 = 0 \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .execute(&target)
    .await
    .unwrap();
    let ran = ws.run(&["run", "spec.toml"]);
    let run_id = ws.run(&["--json", "runs"]).json()[0]["run_id"]
        .as_str()
        .expect("a run")
        .to_owned();
    let listed = ws.run(&["--json", "quarantine", &run_id]);
    assert_eq!(listed.code, 0, "{listed:?} after {ran:?}");
    let listed = listed.json();
    let listed = listed
        .get("rows")
        .and_then(Value::as_array)
        .or(listed.as_array())
        .cloned()
        .expect("quarantine --json lists rows");
    assert_eq!(listed.len(), 12, "{listed:#?}");

    let spec = openapi();
    let server = Server::start(&ws, &["serve", "--bind", "127.0.0.1:0"], "listening on ");
    let mut paged = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let mut path = format!("/api/runs/{run_id}/quarantine?limit=5");
        if let Some((p, k)) = &after {
            let enc = |t: &str| t.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
            path.push_str(&format!("&after_partition={}&after_key={}", enc(p), enc(k)));
        }
        let page = assert_documented(
            &spec,
            "/api/runs/{run}/quarantine",
            &get(&server.addr, &path),
        );
        for row in page["rows"].as_array().unwrap() {
            assert_eq!(
                row["error"]
                    .as_str()
                    .map(|e| e.contains("refused by the test")),
                Some(true),
                "{row:#}"
            );
            assert!(
                row["row"]["id"].as_i64().is_some_and(|id| id % 25 == 0),
                "{row:#}"
            );
            paged.push(row["key"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_object() {
            Some(next) => {
                after = Some((
                    next["partition_id"].as_str().unwrap().to_owned(),
                    next["key"].as_str().unwrap().to_owned(),
                ));
            }
            None => break,
        }
        assert!(paged.len() <= 12, "paging does not end: {paged:?}");
    }
    assert_eq!(paged.len(), 12, "{paged:?}");
    let mut unique = paged.clone();
    unique.dedup();
    assert_eq!(unique, paged, "each row once, in order");
}

/// A partition whose source query fails for good is grouped by the error's class and
/// message, in the API and in the report.
#[tokio::test]
async fn errors_are_grouped_by_class_and_message() {
    let ws = Workspace::new();
    copy_workspace(&ws, 300, "batch_rows = 1000").await;
    let spec = std::fs::read_to_string(ws.path("spec.toml")).unwrap();
    // The second day's rows overflow an integer in SQLite: a permanent error.
    let failing = spec.replacen(
        "CAST(round(amount * 100) AS INTEGER) AS amount_cents",
        "CAST(round(amount * 100) AS INTEGER) + CASE WHEN ts >= '2026-01-02' AND ts < '2026-01-03' \
         THEN abs(-9223372036854775807 - 1) ELSE 0 END AS amount_cents",
        1,
    );
    assert_ne!(failing, spec);
    ws.write("spec.toml", &failing);
    let ran = ws.run(&["--json", "run", "spec.toml"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let run_id = ran.json()["run_id"].as_str().unwrap().to_owned();

    let openapi = openapi();
    let server = Server::start(&ws, &["serve", "--bind", "127.0.0.1:0"], "listening on ");
    let errors = get(&server.addr, &format!("/api/runs/{run_id}/errors"));
    let errors = assert_documented(&openapi, "/api/runs/{run}/errors", &errors);
    let groups = errors["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{errors:#}");
    assert_eq!(groups[0]["class"], "permanent", "{errors:#}");
    assert_eq!(groups[0]["failed"], 1, "{errors:#}");
    assert!(
        groups[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("integer overflow")),
        "{errors:#}"
    );
    let metrics = parse_metrics(&get(&server.addr, "/metrics").body);
    let permanent = sample(
        &metrics,
        "backfill_run_failing_partitions_by_class",
        &[("run_id", run_id.as_str()), ("class", "permanent")],
    );
    assert_eq!(permanent, Some(1.0));
    let md = ws.run(&["report", &run_id]);
    assert!(md.stdout.contains("| permanent | "), "{}", md.stdout);
}

/// A run id prefix naming two runs is a bad request (400) with what to do; an unknown one
/// is 404.
#[tokio::test]
async fn an_ambiguous_run_prefix_is_a_bad_request() {
    let ws = Workspace::new();
    let first = finished_run(&ws).await;
    let again = ws.run(&["--json", "run", "spec.toml", "--new"]);
    assert_eq!(again.code, 0, "{again:?}");
    let second = again.json()["run_id"].as_str().unwrap().to_owned();
    let shared = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        shared >= 4,
        "{first} and {second} share no 4-character prefix"
    );
    let spec = openapi();
    let server = Server::start(&ws, &["serve", "--bind", "127.0.0.1:0"], "listening on ");
    let both = get(&server.addr, &format!("/api/runs/{}", &first[..4]));
    let both = assert_error(&spec, &both, 400, "an ambiguous prefix");
    assert!(
        both["hint"]
            .as_str()
            .is_some_and(|h| h.contains("more characters")),
        "{both}"
    );
    let page = get(
        &server.addr,
        &format!("/api/runs/{}/partitions", &first[..4]),
    );
    assert_error(&spec, &page, 400, "an ambiguous prefix, partitions");
}
