//! `cargo xtask lint`: the modules of snapmon and snapmon-formats must import one way (no
//! cycles), and clippy be clean.
//!
//! The import graph is built from the crate's own paths (`use crate::…`, `super::…`, `self::…`,
//! names bound by `use` and child modules), each resolved to the file of the deepest module that
//! exists. `mod` declarations only shape the module tree: a parent declaring a child is not a
//! dependency. Code under `#[cfg(test)]` is left out, since tests may compose every stage.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{cargo, check, workspace};

/// The agent and the format parsers it builds on: each crate's modules import one way.
const CRATES: [&str; 2] = ["snapmon", "snapmon-formats"];

/// The file-level import graph of `krate/src`.
fn crate_graph(krate: &str) -> anyhow::Result<Graph> {
    let files = read_tree(&workspace().join(krate).join("src"))?;
    Graph::build(&files, "lib.rs")
}

pub fn lint(clippy: bool, verbose: bool) -> anyhow::Result<()> {
    let mut cycles = 0;
    for krate in CRATES {
        let graph = crate_graph(krate)?;
        let found = graph.cycles();
        for c in &found {
            println!("import cycle ({} files):", c.len());
            for f in c {
                println!("  {krate}/src/{f}");
            }
            if verbose {
                for (from, to, why) in graph.edges_within(c) {
                    println!("    {from} -> {to}  ({why})");
                }
            }
        }
        println!(
            "== {krate}: {} modules in {} files, {} import cycles",
            graph.modules.len(),
            graph.files.len(),
            found.len()
        );
        cycles += found.len();
    }
    let clippy = if !clippy {
        Ok(())
    } else {
        // The eBPF crate is no_std for the BPF target: its host test harness cannot link
        // (`cargo xtask test` leaves it out for the same reason), so it is linted apart.
        println!("== cargo clippy --workspace --exclude snapmon-ebpf --all-targets -- -D warnings");
        check(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "snapmon-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .and_then(|()| {
            // As snapmon/build.rs compiles it: nightly, on the BPF target, with core built.
            let args = [
                "clippy",
                "-p",
                "snapmon-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ];
            println!("== cargo +nightly {}", args.join(" "));
            check(
                Command::new("rustup")
                    .current_dir(workspace())
                    .args(["run", "nightly", "cargo"])
                    .args(args)
                    .env_remove("RUSTC")
                    .env_remove("RUSTC_WRAPPER"),
            )
        })
    };
    if cycles > 0 {
        bail!("{cycles} import cycles");
    }
    clippy
}

/// Every `.rs` file under `dir`, keyed by its path relative to `dir` ('/'-separated).
fn read_tree(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                out.insert(rel, text);
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// Rust tokens, enough for paths: comments, strings and char literals are dropped.
fn lex(s: &str) -> Vec<Tok> {
    let b: Vec<char> = s.chars().collect();
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= b.len() {
                    break;
                } else if b[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&b, i) {
            i = end;
        } else if c == '"' || (matches!(c, 'b' | 'c') && at(i + 1) == '"') {
            i += if c == '"' { 1 } else { 2 };
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            // A char literal, or a lifetime (whose name lexes as a harmless identifier).
            let q = if c == '\'' { i } else { i + 1 };
            if at(q + 1) == '\\' {
                i = q + 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(q + 2) == '\'' {
                i = q + 3;
            } else {
                i = q + 1;
            }
        } else if ident_char(c) {
            // `r#name` is the identifier `name`.
            if c == 'r' && at(i + 1) == '#' && ident_char(at(i + 2)) {
                i += 2;
            }
            let start = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Tok::Sep);
            i += 2;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// If a raw string (`r"…"`, `r#"…"#`, `br…`, `cr…`) starts at `i`, the index just past it.
fn raw_string_end(b: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(b.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if b.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if b.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == '"'
            && b[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(b.len())
}

type ModPath = Vec<String>;

/// One leaf of a `use` tree: the path as written and what it binds.
#[derive(Debug, Clone, PartialEq)]
struct UseLeaf {
    path: Vec<String>,
    /// The name bound (`None` for `as _`), or a glob.
    bind: Bind,
}

#[derive(Debug, Clone, PartialEq)]
enum Bind {
    Name(String),
    Hidden,
    Glob,
}

/// What one file says: its modules (outline and inline), `use` leaves and other paths.
#[derive(Default, Debug)]
struct FileFacts {
    /// `mod x;` declared in the module at `.0` (possibly an inline module of this file).
    outline: Vec<(ModPath, String)>,
    inline: Vec<ModPath>,
    uses: Vec<(ModPath, UseLeaf)>,
    paths: Vec<(ModPath, Vec<String>)>,
}

fn parse_file(toks: &[Tok], module: &ModPath) -> FileFacts {
    let mut f = FileFacts::default();
    // Open inline modules: (path, bracket depth inside which they live).
    let mut scopes: Vec<(ModPath, usize)> = vec![(module.clone(), 0)];
    let mut depth = 0usize;
    let mut test_only = false;
    let mut i = 0;
    let ident = |i: usize| match toks.get(i) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    while i < toks.len() {
        let here = scopes.last().expect("crate scope").0.clone();
        match &toks[i] {
            Tok::Punct('#') => {
                let open = if toks.get(i + 1) == Some(&Tok::Punct('!')) {
                    i + 2
                } else {
                    i + 1
                };
                if toks.get(open) == Some(&Tok::Punct('[')) {
                    let close = matching(toks, open);
                    let cfg_test = [
                        Tok::Ident("cfg".into()),
                        Tok::Punct('('),
                        Tok::Ident("test".into()),
                        Tok::Punct(')'),
                    ];
                    if open == i + 1 && toks[open + 1..close] == cfg_test {
                        test_only = true;
                    }
                    i = close + 1;
                    continue;
                }
                i += 1;
            }
            _ if test_only => {
                // Skip the item the attribute is on: up to `;` or its closing brace.
                let mut d = 0usize;
                while i < toks.len() {
                    match toks[i] {
                        Tok::Punct('(' | '[' | '{') => d += 1,
                        Tok::Punct(')' | ']') => d = d.saturating_sub(1),
                        Tok::Punct('}') => {
                            d = d.saturating_sub(1);
                            if d == 0 {
                                break;
                            }
                        }
                        Tok::Punct(';') if d == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                test_only = false;
                i += 1;
            }
            Tok::Ident(k) if k == "mod" => match (ident(i + 1), toks.get(i + 2)) {
                (Some(name), Some(Tok::Punct(';'))) => {
                    f.outline.push((here, name.to_string()));
                    i += 3;
                }
                (Some(name), Some(Tok::Punct('{'))) => {
                    let mut p = here;
                    p.push(name.to_string());
                    f.inline.push(p.clone());
                    depth += 1;
                    scopes.push((p, depth));
                    i += 3;
                }
                _ => i += 1,
            },
            Tok::Ident(k) if k == "use" => {
                let mut j = i + 1;
                if toks.get(j) == Some(&Tok::Sep) {
                    j += 1;
                }
                let mut leaves = Vec::new();
                j = use_tree(toks, j, &mut Vec::new(), &mut leaves);
                f.uses.extend(leaves.into_iter().map(|l| (here.clone(), l)));
                i = j.max(i + 1);
            }
            Tok::Ident(first)
                if toks.get(i + 1) == Some(&Tok::Sep) && (i == 0 || toks[i - 1] != Tok::Sep) =>
            {
                let mut segs = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::Sep) {
                    match ident(j + 1) {
                        Some(s) => segs.push(s.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                f.paths.push((here, segs));
                i = j;
            }
            Tok::Punct('(' | '[' | '{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct(')' | ']' | '}') => {
                if scopes.len() > 1 && scopes.last().is_some_and(|s| s.1 == depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    f
}

/// The index of the bracket closing the one at `open`.
fn matching(toks: &[Tok], open: usize) -> usize {
    let mut d = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => d += 1,
            Tok::Punct(')' | ']' | '}') => {
                d -= 1;
                if d == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    toks.len() - 1
}

/// Parses one `use` tree at `i` under `prefix`; returns the index after it (past a `;`).
fn use_tree(toks: &[Tok], mut i: usize, prefix: &mut Vec<String>, out: &mut Vec<UseLeaf>) -> usize {
    let depth = prefix.len();
    loop {
        match toks.get(i) {
            Some(Tok::Punct('*')) => {
                out.push(UseLeaf {
                    path: prefix.clone(),
                    bind: Bind::Glob,
                });
                i += 1;
                break;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Punct('}')) | None => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => i += 1,
                        _ => i = use_tree(toks, i, prefix, out),
                    }
                }
                break;
            }
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                i += 1;
                if toks.get(i) == Some(&Tok::Sep) {
                    prefix.push(s);
                    i += 1;
                    continue;
                }
                let path_end = if s == "self" {
                    prefix.clone()
                } else {
                    [prefix.clone(), vec![s.clone()]].concat()
                };
                let mut bind = Bind::Name(path_end.last().cloned().unwrap_or(s));
                if matches!(toks.get(i), Some(Tok::Ident(a)) if a == "as") {
                    bind = match toks.get(i + 1) {
                        Some(Tok::Ident(n)) if n != "_" => Bind::Name(n.clone()),
                        _ => Bind::Hidden,
                    };
                    i += 2;
                }
                out.push(UseLeaf {
                    path: path_end,
                    bind,
                });
                break;
            }
            _ => break,
        }
    }
    prefix.truncate(depth);
    if depth == 0 && toks.get(i) == Some(&Tok::Punct(';')) {
        i += 1;
    }
    i
}

/// The crate's modules, the files they live in, and the file-to-file import edges.
#[derive(Debug)]
pub struct Graph {
    files: Vec<String>,
    modules: BTreeMap<ModPath, usize>,
    /// (from, to) → one path that makes it, to say why.
    edges: BTreeMap<(usize, usize), String>,
}

impl Graph {
    /// The module tree from crate root `root` in `files` (relative path → text).
    fn build(files: &BTreeMap<String, String>, root: &str) -> anyhow::Result<Self> {
        let mut g = Graph {
            files: Vec::new(),
            modules: BTreeMap::new(),
            edges: BTreeMap::new(),
        };
        let mut facts: Vec<FileFacts> = Vec::new();
        let mut queue = vec![(Vec::<String>::new(), root.to_string())];
        while let Some((module, file)) = queue.pop() {
            let text = files
                .get(&file)
                .with_context(|| format!("no file {file} for module {}", module.join("::")))?;
            let idx = g.files.len();
            g.files.push(file.clone());
            g.modules.insert(module.clone(), idx);
            let f = parse_file(&lex(text), &module);
            for m in &f.inline {
                g.modules.insert(m.clone(), idx);
            }
            // Children of `a.rs` live in `a/`; of `mod.rs`, `lib.rs` and `main.rs`, next to them.
            let (dir, stem) = match file.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n.trim_end_matches(".rs")),
                None => (String::new(), file.trim_end_matches(".rs")),
            };
            let base = if matches!(stem, "mod" | "lib" | "main") {
                dir
            } else {
                format!("{dir}{stem}/")
            };
            for (parent, name) in &f.outline {
                let inner = parent[module.len()..]
                    .iter()
                    .map(|s| format!("{s}/"))
                    .collect::<String>();
                let flat = format!("{base}{inner}{name}.rs");
                let nested = format!("{base}{inner}{name}/mod.rs");
                let child = if files.contains_key(&flat) {
                    flat
                } else if files.contains_key(&nested) {
                    nested
                } else {
                    bail!("{file}: no file for `mod {name};` ({flat} or {nested})");
                };
                queue.push(([parent.clone(), vec![name.clone()]].concat(), child));
            }
            facts.push(f);
        }
        // Names bound by `use`, per module: name → absolute path.
        let mut names: BTreeMap<ModPath, BTreeMap<String, ModPath>> = BTreeMap::new();
        for _ in 0..2 {
            for f in &facts {
                for (m, leaf) in &f.uses {
                    let Some(abs) = g.resolve(&names, m, &leaf.path) else {
                        continue;
                    };
                    let scope = names.entry(m.clone()).or_default();
                    match &leaf.bind {
                        Bind::Name(n) => {
                            scope.insert(n.clone(), abs);
                        }
                        Bind::Hidden => {}
                        Bind::Glob => {
                            let children: Vec<_> = g
                                .modules
                                .keys()
                                .filter(|k| k.len() == abs.len() + 1 && k.starts_with(&abs))
                                .cloned()
                                .collect();
                            for c in children {
                                scope.entry(c.last().expect("child").clone()).or_insert(c);
                            }
                        }
                    }
                }
            }
        }
        for (idx, f) in facts.iter().enumerate() {
            let file = idx;
            let mut targets = Vec::new();
            for (m, leaf) in &f.uses {
                // A module brought in by name is a dependency only where a path goes through it.
                let Some(abs) = g.resolve(&names, m, &leaf.path) else {
                    continue;
                };
                if leaf.bind == Bind::Glob || !g.modules.contains_key(&abs) {
                    targets.push(abs);
                }
            }
            for (m, segs) in &f.paths {
                targets.extend(g.resolve(&names, m, segs));
            }
            for t in targets {
                let to = g.deepest(&t);
                if to != file {
                    g.edges
                        .entry((file, to))
                        .or_insert_with(|| format!("crate::{}", t.join("::")));
                }
            }
        }
        Ok(g)
    }

    /// `segs` as written in module `m`, made absolute; `None` for another crate's path.
    fn resolve(
        &self,
        names: &BTreeMap<ModPath, BTreeMap<String, ModPath>>,
        m: &ModPath,
        segs: &[String],
    ) -> Option<ModPath> {
        let first = segs.first()?;
        let mut abs = match first.as_str() {
            "crate" => Vec::new(),
            "self" => m.clone(),
            "super" => {
                let mut base = m.clone();
                let ups = segs.iter().take_while(|s| *s == "super").count();
                for _ in 0..ups {
                    base.pop()?;
                }
                return Some([base, segs[ups..].to_vec()].concat());
            }
            _ => {
                if let Some(p) = names.get(m).and_then(|n| n.get(first)) {
                    p.clone()
                } else {
                    let child = [m.clone(), vec![first.clone()]].concat();
                    if !self.modules.contains_key(&child) {
                        return None;
                    }
                    child
                }
            }
        };
        abs.extend(segs[1..].iter().cloned());
        Some(abs)
    }

    /// The edges between files of `group`, each with the path that makes it.
    fn edges_within<'a>(
        &'a self,
        group: &'a [String],
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> {
        self.edges.iter().filter_map(move |(&(a, b), why)| {
            let (a, b) = (self.files[a].as_str(), self.files[b].as_str());
            (group.iter().any(|f| f == a) && group.iter().any(|f| f == b)).then_some((
                a,
                b,
                why.as_str(),
            ))
        })
    }

    /// The file of the deepest module on `path`.
    fn deepest(&self, path: &[String]) -> usize {
        (0..=path.len())
            .rev()
            .find_map(|n| self.modules.get(&path[..n]))
            .copied()
            .expect("crate root")
    }

    /// Every strongly connected group of more than one file (each holds a cycle), files sorted.
    fn cycles(&self) -> Vec<Vec<String>> {
        let n = self.files.len();
        let mut adj = vec![Vec::new(); n];
        for &(a, b) in self.edges.keys() {
            adj[a].push(b);
        }
        // Tarjan's algorithm, iterative.
        let (mut index, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
        let (mut stack, mut next, mut out) = (Vec::new(), 0, Vec::new());
        for s in 0..n {
            if index[s] != usize::MAX {
                continue;
            }
            let mut work = vec![(s, 0usize)];
            while let Some(&mut (v, ref mut k)) = work.last_mut() {
                if *k == 0 {
                    index[v] = next;
                    low[v] = next;
                    next += 1;
                    stack.push(v);
                    on[v] = true;
                }
                if let Some(&w) = adj[v].get(*k) {
                    *k += 1;
                    if index[w] == usize::MAX {
                        work.push((w, 0));
                    } else if on[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                work.pop();
                if let Some(&(u, _)) = work.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut group = Vec::new();
                    while let Some(w) = stack.pop() {
                        on[w] = false;
                        group.push(self.files[w].clone());
                        if w == v {
                            break;
                        }
                    }
                    if group.len() > 1 {
                        group.sort();
                        out.push(group);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Graph {
        let map = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        Graph::build(&map, "lib.rs").expect("tree")
    }

    fn edges(g: &Graph) -> Vec<(String, String)> {
        g.edges
            .keys()
            .map(|&(a, b)| (g.files[a].clone(), g.files[b].clone()))
            .collect()
    }

    /// The tree itself: `cargo xtask test` (CI) runs this, so a new import cycle fails there
    /// and not only in `cargo xtask lint`.
    #[test]
    fn this_workspace_imports_one_way() {
        for krate in CRATES {
            let g = crate_graph(krate).expect("the crate's import graph");
            let cycles: Vec<String> = g
                .cycles()
                .iter()
                .map(|c| {
                    let edges: Vec<String> = g
                        .edges_within(c)
                        .map(|(a, b, why)| format!("{a} -> {b} ({why})"))
                        .collect();
                    edges.join("\n  ")
                })
                .collect();
            assert!(
                cycles.is_empty(),
                "{krate}/src has import cycles:\n  {}",
                cycles.join("\n\n  ")
            );
        }
    }

    #[test]
    fn finds_a_cycle_through_use_and_inline_paths() {
        let g = tree(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;"),
            (
                "a.rs",
                "use crate::b::Thing; // crate::c::Nope in a comment\nfn f() {}",
            ),
            (
                "b.rs",
                "pub struct Thing; fn g() { let _ = \"crate::a\"; crate::c::h(); }",
            ),
            ("c/mod.rs", "pub fn h() { crate::a::f(); }"),
        ]);
        assert_eq!(g.cycles(), vec![vec!["a.rs", "b.rs", "c/mod.rs"]]);
    }

    #[test]
    fn acyclic_tree_is_clean() {
        let g = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "use crate::b::{self, x::Y};\nfn f() { b::g(); }"),
            ("b.rs", "pub mod x; pub fn g() {}"),
            ("b/x.rs", "pub struct Y;"),
        ]);
        assert!(g.cycles().is_empty());
        assert_eq!(
            edges(&g),
            [
                ("a.rs".into(), "b.rs".into()),
                ("a.rs".into(), "b/x.rs".into())
            ]
        );
    }

    #[test]
    fn super_resolves_to_the_parent_and_deepest_module() {
        let g = tree(&[
            ("lib.rs", "pub mod s; pub mod m;"),
            ("m.rs", "pub struct M;"),
            (
                "s/mod.rs",
                "pub mod a; pub mod b; pub use a::A; pub struct S;",
            ),
            (
                "s/a.rs",
                "use super::b::B; use super::super::m::M; pub struct A;",
            ),
            ("s/b.rs", "use super::S; pub struct B;"),
        ]);
        // s re-exports a, a uses b, b uses s: one cycle; m is outside it.
        assert_eq!(g.cycles(), vec![vec!["s/a.rs", "s/b.rs", "s/mod.rs"]]);
        assert!(edges(&g).contains(&("s/a.rs".into(), "m.rs".into())));
    }

    #[test]
    fn test_code_and_inline_super_stay_out() {
        let g = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "use crate::b::B; pub struct A;\n#[cfg(test)]\nmod tests { use super::*; }"),
            ("b.rs", "pub struct B;\n#[cfg(test)]\nmod tests { use crate::a::A; }\n#[cfg(test)] mod more;"),
        ]);
        assert!(g.cycles().is_empty());
        assert_eq!(edges(&g), [("a.rs".into(), "b.rs".into())]);
    }

    #[test]
    fn lexer_skips_literals_and_keeps_paths() {
        let t = lex("r#\"crate::x\"# 'a' '\\'' b\"q\" /* /* crate::y */ */ 'l crate::z");
        assert_eq!(
            t,
            [
                Tok::Ident("l".into()),
                Tok::Ident("crate".into()),
                Tok::Sep,
                Tok::Ident("z".into())
            ]
        );
    }
}
