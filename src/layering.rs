//! The layering rule, pinned (ARCHITECTURE.md, "Layers"): every top-level unit of `src/` (a
//! folder or a file) has a rank, and a unit may import only units of a strictly lower layer (a
//! greater rank) or itself. On top of that no two files import each other, directly or round a
//! loop. The test reads the `crate::` paths of every file's non-test code (the part before its
//! first `#[cfg(test)]`; sibling `tests.rs` files are test code) and fails naming each upward
//! edge and each cycle.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. Units on one line share a layer and may not import each other.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["server"],
    &["pipeline"],
    &["upstream"],
    &["config"],
    &["credentials"],
    &["secrets", "identity"],
    &["policy", "net"],
    &["observe", "http"],
    &["scan", "redact", "mcp", "error"],
    &["util"],
];

fn rank(unit: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&unit))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code outside tests, with line comments removed.
fn non_test_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every `crate::a::b::c` path in `code`, as its segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `portcullis_crate::` and the like
        }
        let mut segs = Vec::new();
        let mut s = rest;
        loop {
            let end = s
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            if end == 0 {
                break;
            }
            segs.push(s[..end].to_string());
            s = &s[end..];
            match s.strip_prefix("::") {
                Some(t) if t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => s = t,
                _ => break,
            }
        }
        // `use crate::{a, b::c}`
        if segs.is_empty()
            && let Some(group) = rest.strip_prefix('{')
        {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim();
                if !item.is_empty() {
                    out.push(item.split("::").map(|x| x.trim().to_string()).collect());
                }
            }
        } else if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// The module path of a file under `src/` (`src/http/head.rs` → `["http", "head"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = segs.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" {
            segs.push(stem);
        }
    }
    segs
}

struct Graph {
    /// file module path → the file modules it imports.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| {
            !["main.rs", "lib.rs", "layering.rs"]
                .iter()
                .any(|n| f.ends_with(n))
        })
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for (m, f) in &modules {
        let mut to = BTreeSet::new();
        for path in crate_paths(&non_test_code(f)) {
            // the longest prefix that is a file of its own
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p));
            if let Some(t) = target
                && &t != m
            {
                to.insert(t);
            }
        }
        edges.insert(m.clone(), to);
    }
    Graph { edges }
}

#[test]
fn no_unit_imports_a_unit_above_it() {
    let g = graph();
    let mut bad = Vec::new();
    for (from, tos) in &g.edges {
        let fu = &from[0];
        let Some(fr) = rank(fu) else {
            bad.push(format!(
                "{}: unit `{fu}` has no layer in LAYERS",
                from.join("::")
            ));
            continue;
        };
        for to in tos {
            let tu = &to[0];
            if tu == fu {
                continue;
            }
            match rank(tu) {
                Some(tr) if tr > fr => {}
                _ => bad.push(format!("{} → {}", from.join("::"), to.join("::"))),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layering:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn no_import_cycle_between_files() {
    let g = graph();
    // Tarjan's strongly connected components
    struct T<'g> {
        g: &'g Graph,
        index: BTreeMap<&'g Vec<String>, usize>,
        low: BTreeMap<&'g Vec<String>, usize>,
        stack: Vec<&'g Vec<String>>,
        on: BTreeSet<&'g Vec<String>>,
        next: usize,
        cycles: Vec<Vec<String>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g Vec<String>) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.edges.get(v).into_iter().flatten() {
                if !self.g.edges.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[w].min(self.low[v]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.index[w].min(self.low[v]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    comp.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.cycles.push(comp);
                }
            }
        }
    }
    let mut t = T {
        g: &g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        cycles: Vec::new(),
    };
    for v in g.edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    let cycles: Vec<String> = t.cycles.iter().map(|c| c.join(" ↔ ")).collect();
    assert!(
        cycles.is_empty(),
        "import cycles:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_path_reader_reads_paths() {
    let cases: &[(&str, &str, &[&[&str]])] = &[
        (
            "plain",
            "use crate::http::head::X;",
            &[&["http", "head", "X"]],
        ),
        (
            "group",
            "use crate::{error::Refusal, util};",
            &[&["error", "Refusal"], &["util"]],
        ),
        (
            "inline",
            "let x = crate::util::clock::now();",
            &[&["util", "clock", "now"]],
        ),
        ("not a crate path", "my_crate::x", &[]),
    ];
    for (name, code, want) in cases {
        let got = crate_paths(code);
        let want: Vec<Vec<String>> = want
            .iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

/// ARCHITECTURE.md names files and functions (Sozu's rule: a stale pointer is broken
/// documentation). Every `src/...` path it names exists, and in a table row that names one
/// file, every `name()` it names is a `fn name` of that file.
#[test]
fn architecture_md_names_what_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap_or_default();
    assert!(!text.is_empty(), "ARCHITECTURE.md is missing");
    let mut bad = Vec::new();
    let mut checked_fns = 0;
    for (n, line) in text.lines().enumerate() {
        let ticked: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        let paths: Vec<&str> = ticked
            .iter()
            .copied()
            .filter(|t| t.starts_with("src/"))
            .collect();
        for p in &paths {
            if !root.join(p).exists() {
                bad.push(format!("ARCHITECTURE.md:{}: {p} does not exist", n + 1));
            }
        }
        let [file] = paths[..] else { continue };
        if !line.starts_with('|') || !file.ends_with(".rs") {
            continue;
        }
        let code = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        for f in ticked.iter().filter_map(|t| t.strip_suffix("()")) {
            checked_fns += 1;
            if !code.contains(&format!("fn {f}(")) && !code.contains(&format!("fn {f}<")) {
                bad.push(format!("ARCHITECTURE.md:{}: no fn {f} in {file}", n + 1));
            }
        }
    }
    assert!(
        checked_fns > 10,
        "the call table names the functions of each step"
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
