//! The house keeps its floors: no file of `host/src` imports, through any
//! chain of imports, a file that imports it back.
//!
//! The check reads every `crate::…`, `super::…` and child-module path of
//! every file (test modules left out), resolves each to the deepest file
//! that defines a module of that path, and looks for a circle in the
//! graph of files. A circle names the files and the paths that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, as the segments after `crate`.
type ModPath = Vec<String>;

/// The module path of a source file under `src` (`None`: the binary).
fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "main.rs" if parts.is_empty() => None,
        "lib.rs" if parts.is_empty() => Some(Vec::new()),
        "mod.rs" => Some(parts),
        name => {
            parts.push(name.trim_end_matches(".rs").to_string());
            Some(parts)
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source tree") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its test module (`#[cfg(test)] mod tests { … }`
/// at the end of a file) and without comments.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` tree starting at `text` (after its root) names,
/// with braces expanded: `a::{b, c::d}` → `a::b`, `a::c::d`.
fn expand(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut prefix = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => {
                // The matching brace.
                let mut depth = 1;
                let mut end = i + 1;
                for (j, d) in text[i + 1..].char_indices() {
                    match d {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1 + j;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let inner = &text[i + 1..end];
                let mut depth = 0;
                let mut start = 0;
                let mut items = Vec::new();
                for (j, d) in inner.char_indices() {
                    match d {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&inner[start..j]);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&inner[start..]);
                for item in items {
                    for p in expand(item.trim()) {
                        out.push(format!("{prefix}{p}"));
                    }
                }
                return out;
            }
            c if c.is_alphanumeric() || c == '_' || c == ':' => prefix.push(c),
            _ => break,
        }
        let _ = chars.peek();
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
    out
}

/// The module paths a file refers to.
fn references(module: &ModPath, is_mod_rs: bool, code: &str, children: &[String]) -> Vec<ModPath> {
    let mut out = Vec::new();
    // `super` is the parent of the module a file defines.
    let parent: ModPath = module[..module.len().saturating_sub(1)].to_vec();
    let segments = |p: &str| -> Vec<String> {
        p.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    for (root, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().last();
            rest = &rest[i + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `x::super::`, or part of a longer name
            }
            for p in expand(rest) {
                let mut path = base.clone();
                path.extend(segments(&p));
                out.push(path);
            }
        }
    }
    // A mod.rs names its own children without a root: in `use` trees, and
    // inline (`child::item`).
    if is_mod_rs {
        for child in children {
            let mut rest = code;
            let pattern = format!("{child}::");
            while let Some(i) = rest.find(&pattern) {
                let before = rest[..i].chars().last();
                rest = &rest[i + pattern.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let mut path = module.clone();
                path.push(child.clone());
                out.push(path);
            }
        }
        for line in code.lines() {
            let line = line.trim();
            let Some(tree) = line
                .strip_prefix("pub use ")
                .or_else(|| line.strip_prefix("use "))
            else {
                continue;
            };
            let first = tree.split("::").next().unwrap_or("");
            if children.iter().any(|c| c == first) {
                for p in expand(tree) {
                    let mut path = module.clone();
                    path.extend(segments(&p));
                    out.push(path);
                }
            }
        }
    }
    out
}

#[test]
fn no_file_of_the_host_imports_a_file_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<ModPath, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(&src, f).map(|m| (m, f.clone())))
        .filter(|(m, f)| {
            // Test-only files and this check itself.
            let name = f.file_name().expect("a file name");
            name != "tests.rs" && m.last().is_none_or(|l| l != "layers")
        })
        .collect();
    let resolve = |path: &ModPath| -> Option<ModPath> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains_key(p))
    };
    let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, String>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("readable source");
        let code = code_of(&text);
        let is_mod_rs = file.ends_with("mod.rs") || module.is_empty();
        let children: Vec<String> = modules
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m[module.len()].clone())
            .collect();
        for path in references(module, is_mod_rs, &code, &children) {
            // Test hooks (`#[cfg(test)] super::tests::pause…`) are not
            // part of the house.
            if path.iter().any(|segment| segment == "tests") {
                continue;
            }
            if let Some(target) = resolve(&path)
                && &target != module
                && !target.is_empty()
            {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| path.join("::"));
            }
        }
    }
    assert!(
        edges.values().map(BTreeMap::len).sum::<usize>() > 50,
        "the check reads the imports: {edges:?}"
    );
    // Depth-first search for a back edge.
    fn visit(
        m: &ModPath,
        edges: &BTreeMap<ModPath, BTreeMap<ModPath, String>>,
        on_path: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
    ) -> Option<Vec<ModPath>> {
        if let Some(i) = on_path.iter().position(|p| p == m) {
            let mut circle = on_path[i..].to_vec();
            circle.push(m.clone());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        on_path.push(m.clone());
        for next in edges.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, edges, on_path, done) {
                return Some(c);
            }
        }
        on_path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    let mut circles = Vec::new();
    let mut seen = BTreeSet::new();
    for m in modules.keys() {
        if let Some(c) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let named: Vec<String> = c
                .windows(2)
                .map(|w| format!("{} → ({})", w[0].join("::"), edges[&w[0]][&w[1]]))
                .collect();
            let mut members: Vec<ModPath> = c[1..].to_vec();
            members.sort();
            if seen.insert(members) {
                circles.push(named.join(" "));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}
