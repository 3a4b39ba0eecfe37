//! No function outside tests is longer than [`LIMIT`] lines of code, so a newcomer can read
//! any one of them at once (issue 10, section 7).
//!
//! Scans `crates/*/src/**/*.rs`, finds each `fn` with a body by brace matching on the text with
//! comments and the insides of string and char literals blanked out (so a `{` in a string, a
//! comment or `'{'` does not count, and a lifetime `'a` is not a char), and counts the lines of
//! its body that hold code: blank lines and comment lines (`//`, `///`, `/* … */`) do not
//! count, like `clippy::too_many_lines`. Test code is skipped: items under `#[cfg(test)]` or
//! `#[test]`, and the files of a `#[cfg(test)] mod name;`.
//!
//! Functions still over the limit are listed in [`ALLOWED_LONG`], each to be split; the list
//! only shrinks: an entry that is no longer over the limit (or gone) fails too, so it is taken
//! off when its function is split.

use std::path::{Path, PathBuf};

/// The most lines of code a function body may have.
const LIMIT: usize = 100;

/// Functions over [`LIMIT`] that are known and will be split into named steps, by file and
/// name; the list only shrinks, to empty. Add nothing here: split the function instead.
const ALLOWED_LONG: &[(&str, &str)] = &[
    // The CLI's command bodies and progress renderer, and the SQLite pushdown's `open`: to be
    // split into named steps (rendering sections, phases of opening).
    ("crates/backfill-cli/src/commands/demo.rs", "run"),
    ("crates/backfill-cli/src/commands/plan.rs", "print"),
    ("crates/backfill-cli/src/commands/status.rs", "run"),
    ("crates/backfill-cli/src/progress.rs", "start"),
    ("crates/backfill-connectors/src/sqlite/pushdown.rs", "open"),
];

/// A function found in a file: where it starts and how many code lines its body has.
#[derive(Debug, PartialEq, Eq)]
struct Function {
    name: String,
    /// 1-based line of the `fn` keyword.
    line: usize,
    /// Lines of the body (between its braces) that hold code.
    code_lines: usize,
}

/// What scanning one file found: its functions and the test modules it declares out of line
/// (`#[cfg(test)] mod tests;`), by name.
#[derive(Debug, Default)]
struct Scan {
    functions: Vec<Function>,
    test_modules: Vec<String>,
}

/// `text` with every comment replaced by spaces and every string or char literal's contents by
/// `x`, newlines kept, so brace matching and line counting see only code. Lifetimes and loop
/// labels (`'a`) stay as they are.
fn mask(text: &str) -> Vec<char> {
    let src: Vec<char> = text.chars().collect();
    let mut out = src.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize, fill: char| {
        for c in &mut out[from..to.min(src.len())] {
            if *c != '\n' {
                *c = fill;
            }
        }
    };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        let next = src.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = src[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(src.len(), |n| i + n);
            blank(&mut out, i, end, ' ');
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < src.len() {
                if src[j] == '/' && src.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if src[j] == '*' && src.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j, ' ');
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < src.len() && src[j] != '"' {
                j += if src[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j, 'x');
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{7b}') closes within a few characters; a lifetime
            // or label does not.
            let end = if next == Some('\\') {
                (i + 3..src.len().min(i + 12)).find(|&j| src[j] == '\'')
            } else {
                (src.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i + 1, end, 'x');
                    i = end + 1;
                }
                None => i += 1,
            }
        } else if ident(c) {
            // A whole word at once, so the `r` ending `for` never starts a raw string.
            let start = i;
            while i < src.len() && ident(src[i]) {
                i += 1;
            }
            let word: String = src[start..i].iter().collect();
            let hashes = src[i..].iter().take_while(|&&c| c == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && src.get(i + hashes) == Some(&'"') {
                // A raw string `r"…"` or `r#"…"#`: no escapes, ends at `"` and the same `#`s.
                let body = i + hashes + 1;
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let end = (body..src.len())
                    .find(|&j| src[j..].starts_with(&close))
                    .unwrap_or(src.len());
                blank(&mut out, body, end, 'x');
                i = end + close.len();
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The index just past the item starting at `from`: its first `;` or its `{ … }` block, at
/// the item's own nesting level.
fn item_end(code: &[char], from: usize) -> usize {
    let mut depth = 0i32;
    let mut i = from;
    while i < code.len() {
        match code[i] {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ';' if depth == 0 => return i + 1,
            '{' if depth == 0 => return closing(code, i) + 1,
            _ => {}
        }
        i += 1;
    }
    code.len()
}

/// The index of the bracket closing the `{` or `[` at `open` (the end of the text if none
/// does).
fn closing(code: &[char], open: usize) -> usize {
    let (up, down) = if code[open] == '[' {
        ('[', ']')
    } else {
        ('{', '}')
    };
    let mut depth = 0usize;
    for (i, &c) in code.iter().enumerate().skip(open) {
        if c == up {
            depth += 1;
        } else if c == down {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    code.len().saturating_sub(1)
}

/// The word (identifier or keyword) starting at `i`, if one does.
fn word_at(code: &[char], i: usize) -> Option<String> {
    let ident = |c: &char| c.is_alphanumeric() || *c == '_';
    if i > 0 && ident(&code[i - 1]) {
        return None;
    }
    let word: String = code[i..].iter().take_while(|c| ident(c)).collect();
    (!word.is_empty()).then_some(word)
}

/// The name of a function whose name starts at `i` (`r#type` is `type`); `None` for a
/// function pointer type (`fn(u8) -> u8`).
fn fn_name(code: &[char], i: usize) -> Option<String> {
    match word_at(code, i)? {
        raw if raw == "r" && code.get(i + 1) == Some(&'#') => word_at(code, i + 2),
        name => Some(name),
    }
}

fn skip_space(code: &[char], mut i: usize) -> usize {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Whether the attribute text (between `#[` and `]`, spaces removed) marks test-only code.
fn is_test_attribute(attr: &str) -> bool {
    attr == "test" || attr == "cfg(test)" || attr.starts_with("cfg(all(test,")
}

fn line_of(code: &[char], i: usize) -> usize {
    code[..i.min(code.len())]
        .iter()
        .filter(|&&c| c == '\n')
        .count()
        + 1
}

/// Finds the functions of one file's text, skipping test-only items.
fn scan(text: &str) -> Scan {
    let code = mask(text);
    let lines: Vec<String> = code
        .split(|&c| c == '\n')
        .map(|l| l.iter().collect())
        .collect();
    let mut found = Scan::default();
    let mut i = 0;
    while i < code.len() {
        if code[i] == '#' && code.get(i + 1) == Some(&'[') {
            let close = closing(&code, i + 1);
            let attr: String = code[i + 2..close]
                .iter()
                .filter(|c| !c.is_whitespace())
                .collect();
            i = close + 1;
            if is_test_attribute(&attr) {
                // Skip further attributes, then the whole item.
                let mut start = skip_space(&code, i);
                while code.get(start) == Some(&'#') {
                    start = skip_space(&code, closing(&code, start + 1) + 1);
                }
                let end = item_end(&code, start);
                let item: String = code[start..end].iter().collect();
                let words: Vec<&str> = item
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .filter(|w| !w.is_empty())
                    .collect();
                if item.trim_end().ends_with(';')
                    && let Some(pos) = words.iter().position(|w| *w == "mod")
                    && let Some(name) = words.get(pos + 1)
                {
                    found.test_modules.push((*name).to_owned());
                }
                i = end;
            }
            continue;
        }
        let Some(word) = word_at(&code, i) else {
            i += 1;
            continue;
        };
        let after = i + word.chars().count();
        if word == "fn"
            && let Some(name) = fn_name(&code, skip_space(&code, after))
        {
            let end = item_end(&code, after);
            if code.get(end - 1) == Some(&'}') {
                let open = (after..end).find(|&j| code[j] == '{').unwrap_or(end);
                let (first, last) = (line_of(&code, open), line_of(&code, end - 1));
                let code_lines = (first + 1..last)
                    .filter(|&n| !lines[n - 1].trim().is_empty())
                    .count();
                found.functions.push(Function {
                    name,
                    line: line_of(&code, i),
                    code_lines,
                });
            }
        }
        i = after;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The folder a file's out-of-line submodules live in (`a/b.rs` → `a/b/`, `a/mod.rs` → `a/`).
fn module_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod" | "lib" | "main") => parent.to_owned(),
        Some(stem) => parent.join(stem),
        None => parent.to_owned(),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every source file of the workspace's crates (`crates/*/src/**/*.rs`) with what scanning
/// it found, test-only files (those of a `#[cfg(test)] mod name;`) left out.
fn scanned_sources() -> Vec<(PathBuf, Scan)> {
    let root = workspace_root();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let scans: Vec<(PathBuf, Scan)> = files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let scan = scan(&text);
            (file, scan)
        })
        .collect();
    // All declarations first: `a/b/tests.rs` sorts before the `a/b.rs` that declares it.
    let test_modules: Vec<PathBuf> = scans
        .iter()
        .flat_map(|(file, scan)| scan.test_modules.iter().map(|m| module_dir(file).join(m)))
        .collect();
    scans
        .into_iter()
        .filter(|(file, _)| {
            !test_modules
                .iter()
                .any(|m| file.starts_with(m) || *file == m.with_extension("rs"))
        })
        .collect()
}

/// Every function over the limit in the workspace's library and binary sources, as
/// `(file relative to the root, name, line, code lines)`.
fn long_functions() -> Vec<(String, String, usize, usize)> {
    let root = workspace_root();
    let mut long = Vec::new();
    for (file, scan) in scanned_sources() {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        for f in scan.functions.into_iter().filter(|f| f.code_lines > LIMIT) {
            long.push((rel.clone(), f.name, f.line, f.code_lines));
        }
    }
    long
}

/// The spec parser's validation cases live in `spec/parse/tests.rs`, declared by
/// `#[cfg(test)] mod tests;` in `spec/parse.rs`, which sorts after it: still skipped.
#[test]
fn files_of_test_modules_are_skipped() {
    let sources: Vec<PathBuf> = scanned_sources().into_iter().map(|(f, _)| f).collect();
    let src = workspace_root().join("crates/backfill-core/src/spec");
    assert!(sources.contains(&src.join("parse.rs")));
    assert!(!sources.contains(&src.join("parse/tests.rs")));
}

#[test]
fn no_function_is_over_the_limit() {
    let long = long_functions();
    let mut problems = Vec::new();
    for (file, name, line, lines) in &long {
        if !ALLOWED_LONG.contains(&(file.as_str(), name.as_str())) {
            problems.push(format!(
                "{file}:{line}: fn {name} has {lines} lines of code (limit {LIMIT}): split it \
                 into named steps"
            ));
        }
    }
    for (file, name) in ALLOWED_LONG {
        if !long.iter().any(|(f, n, _, _)| f == file && n == name) {
            problems.push(format!(
                "{file}: fn {name} is no longer over {LIMIT} lines (or is gone): take it off \
                 ALLOWED_LONG in {}",
                file!()
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The scanner on the cases that would fool a naive one: braces in strings, comments and char
/// literals, lifetimes, raw strings, doc comments, test modules and functions without a body.
#[test]
fn the_scanner_counts_code_lines_of_bodies_only() {
    let text = r####"
/// A doc comment { is not code.
/// Neither is this line.
fn first<'a>(s: &'a str) -> [u8; 2] {
    // a comment {
    let a = "{ in a string";

    let b = ['{', '\'', '"', '\u{7d}'];
    /* a block { comment
       spanning lines */
    let c = r#"raw " { string"#;
    [0, 1]
}

pub(crate) fn second() -> u32 where u32: Copy {
    'outer: loop {
        break 'outer;
    }
    let s = "multi
line";
    1
}

trait T {
    fn declared(&self);
}

#[cfg(test)]
mod tests {
    fn hidden() {
        let x = 1;
    }
}

#[cfg(test)]
mod more;

#[test]
fn a_test() {
    let y = 2;
}

fn r#type(f: fn(u8) -> u8) {
    let z = f(br"}" [0]);
}
"####;
    let found = scan(text);
    let got: Vec<(&str, usize, usize)> = found
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.code_lines))
        .collect();
    assert_eq!(
        got,
        [("first", 4, 4), ("second", 15, 6), ("type", 43, 1)],
        "{found:?}"
    );
    assert_eq!(found.test_modules, ["more"]);
}

#[test]
fn out_of_line_modules_live_next_to_their_parent() {
    assert_eq!(module_dir(Path::new("a/src/lib.rs")), Path::new("a/src"));
    assert_eq!(
        module_dir(Path::new("a/src/spec/mod.rs")),
        Path::new("a/src/spec")
    );
    assert_eq!(
        module_dir(Path::new("a/src/spec/parse.rs")),
        Path::new("a/src/spec/parse")
    );
}
