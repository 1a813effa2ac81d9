//! The modules of the server and of the bot form one-way stacks: each imports only modules on the
//! lines above its own in a layer list. The lists are the numbered lines of the first doc
//! comment of `src/lib.rs` (the server's top-level modules), `src/http/mod.rs` (the HTTP layer's
//! files), `loadtest/src/lib.rs` (the bot's) and `loadtest/src/scenario/mod.rs` (the scenarios
//! and what they share). This test reads those lists and every `crate::` and `super::` path of
//! each crate, and fails on a path to a module on the same line or below, to the crate root, or
//! to a module the lists leave out. `.ci/run` runs it with the other tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// A file's module path (`src/scenario/pubsub/conn.rs` is `scenario::pubsub::conn`) and its code.
struct Source {
    module: Vec<String>,
    file: PathBuf,
    code: String,
}

#[test]
fn the_servers_modules_import_only_layers_below_their_own() {
    check("src", &[("lib.rs", &[]), ("http/mod.rs", &["http"])]);
}

#[test]
fn the_bots_modules_import_only_layers_below_their_own() {
    check(
        "loadtest/src",
        &[("lib.rs", &[]), ("scenario/mod.rs", &["scenario"])],
    );
}

/// Checks the crate whose sources are in `dir` against its layer lists: each is a file (under
/// `dir`) whose first doc comment holds the list, and the module path its names are below.
fn check(dir: &str, lists: &[(&str, &[&str])]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let sources = read_sources(&src);
    let mut wrong = Vec::new();
    for &(dir, scope) in lists {
        let text = fs::read_to_string(src.join(dir)).expect("read the layer list");
        let layers = layer_list(&text);
        assert!(!layers.is_empty(), "{dir} has no numbered layer list");
        for m in declared_modules(&text) {
            assert!(
                layers.contains_key(&m),
                "{dir} declares `mod {m}` but its layer list leaves it out"
            );
        }
        let scope: Vec<String> = scope.iter().map(|s| s.to_string()).collect();
        for s in &sources {
            // Only the files inside a listed module of this scope; the scope's own file is its
            // top and only declares.
            let Some(own) = s
                .module
                .strip_prefix(scope.as_slice())
                .and_then(|m| m.first())
            else {
                continue;
            };
            let Some(&own_layer) = layers.get(own) else {
                wrong.push(format!(
                    "{}: module `{own}` is not in {dir}'s layer list",
                    s.file.display()
                ));
                continue;
            };
            for path in imports(s) {
                let Some(target) = path.strip_prefix(scope.as_slice()) else {
                    continue;
                };
                let Some(name) = target.first() else { continue };
                if name == own {
                    continue;
                }
                match layers.get(name) {
                    Some(&layer) if layer < own_layer => {}
                    Some(&layer) => wrong.push(format!(
                        "{}: `{own}` (layer {own_layer}) uses `{}` (layer {layer}, not below)",
                        s.file.display(),
                        path.join("::")
                    )),
                    None => wrong.push(format!(
                        "{}: `{own}` uses `{}`, which is not a module of {dir}'s layer list \
                         (the root is the top layer)",
                        s.file.display(),
                        path.join("::")
                    )),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "wrong-way imports:\n{}", wrong.join("\n"));
}

fn read_sources(src: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src");
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if module == ["lib"] || module == ["main"] {
                module.clear();
            } else if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = fs::read_to_string(&path).expect("read a source file");
            out.push(Source {
                module,
                file: rel.to_path_buf(),
                code: code_only(&text),
            });
        }
    }
    out
}

/// Numbered lines of the first doc comment, `//! 3. `a`, `b`: what they are`: each backticked
/// name before the first colon, with its line's number.
fn layer_list(text: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    for line in text.lines().take_while(|l| l.starts_with("//!")) {
        let rest = line.trim_start_matches("//!").trim_start();
        let Some((number, rest)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue;
        };
        let names = rest.split(':').next().unwrap_or("");
        for name in names.split('`').skip(1).step_by(2) {
            layers.insert(name.to_string(), number);
        }
    }
    layers
}

/// `mod x;` and `pub mod x;` at the start of a line.
fn declared_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("pub ").unwrap_or(l);
            Some(l.strip_prefix("mod ")?.strip_suffix(';')?.to_string())
        })
        .collect()
}

/// The text without comments and without the contents of string literals, so that only code is
/// searched for paths.
fn code_only(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        // A quote as a character literal does not open a string.
        let line = line.replace("'\"'", "' '");
        let mut in_string = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' && prev != '\\' {
                in_string = !in_string;
            } else if !in_string && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            out.push(if in_string && c != '"' { ' ' } else { c });
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every `crate::…` and `super::…` path of a file, as absolute module paths: one per name in a
/// `{…}` group. `use super::*` (a test module's) is left out.
fn imports(s: &Source) -> Vec<Vec<String>> {
    let code = &s.code;
    // Inside a file's inline `mod tests`, `super::` is the file's own module.
    let tests_at = code.find("mod tests {").unwrap_or(code.len());
    let mut paths = Vec::new();
    for keyword in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(keyword).map(|i| i + from) {
            from = i + keyword.len();
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut base = if keyword == "crate::" {
                Vec::new()
            } else if i > tests_at {
                s.module.clone()
            } else {
                s.module[..s.module.len().saturating_sub(1)].to_vec()
            };
            let mut rest = &code[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            for name in first_names(rest) {
                if name != "*" {
                    let mut path = base.clone();
                    path.push(name);
                    paths.push(path);
                }
            }
        }
    }
    paths
}

/// The name a path continues with (`a` in `a::b`), or each name at the top of a `{…}` group.
fn first_names(rest: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        let t = t.trim_start();
        if t.starts_with('*') {
            return "*".into();
        }
        t.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let mut names = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}
