//! The modules import downward only, along the data's way
//! (docs/ARCHITECTURE.md, "What may import what"): a `crate::<module>` path
//! in a module's files must name a module it may use, and inside `layout/`
//! a room imports only rooms on the floors below its own.

use std::collections::BTreeMap;
use std::path::Path;

/// Which top-level modules each module may use (besides itself).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    let base: &[&str] = &["job", "cmd", "devname", "logging", "config"];
    BTreeMap::from([
        ("job", &[][..]),
        ("devname", &[][..]),
        ("cmd", &["job"][..]),
        ("config", &["job"][..]),
        ("logging", &[][..]),
        ("disk", base),
        ("entry", &["job"][..]),
        (
            "wire",
            &[
                "job", "cmd", "devname", "logging", "config", "disk", "entry",
            ][..],
        ),
        ("layout", &["job", "cmd", "devname", "disk"][..]),
        ("sandbox", &["job", "cmd", "devname", "disk", "layout"][..]),
        (
            "repair",
            &["job", "cmd", "devname", "disk", "layout", "sandbox"][..],
        ),
        (
            "check",
            &[
                "job", "cmd", "devname", "disk", "layout", "sandbox", "repair",
            ][..],
        ),
        (
            "pipeline",
            &[
                "job", "cmd", "devname", "disk", "layout", "sandbox", "repair", "check",
            ][..],
        ),
        (
            "serve",
            &[
                "job", "cmd", "devname", "logging", "config", "disk", "entry", "wire", "layout",
                "sandbox", "repair", "check", "pipeline",
            ][..],
        ),
        (
            "send",
            &[
                "job", "cmd", "devname", "logging", "config", "disk", "entry", "wire", "layout",
                "sandbox", "repair", "check", "pipeline",
            ][..],
        ),
    ])
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_run_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = allowed();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(may) = allowed.get(module.as_str()) else {
            continue; // main.rs, lib.rs: the top
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used != module && !may.contains(&used.as_str()) {
                    wrong.push(format!(
                        "{}:{}: {module} uses crate::{used}, which it may not: {module} may use only {}",
                        rel.display(),
                        n + 1,
                        if may.is_empty() { "itself".to_owned() } else { may.join(", ") }
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the order:\n{}",
        wrong.join("\n")
    );
}

/// The rooms of `layout/` by floor: a room may import the rooms on lower
/// floors only. A folder (`desc/`, `lvm/`) is one room.
const LAYOUT_FLOORS: &[&[&str]] = &[
    &["desc", "mount", "fat", "ntfs"],
    &["devices", "mkfs", "dev_nodes", "flatten"],
    &["safety", "journal", "table", "lvm", "fit"],
    &["apply", "read"],
    &["grow", "tree"],
];

fn floor_of(room: &str) -> Option<usize> {
    LAYOUT_FLOORS.iter().position(|f| f.contains(&room))
}

/// The layout rooms that `text` (a file of room `room`, `depth` modules
/// below `layout`) names, with their lines: `crate::layout::x`, and
/// `super::x` or `use super::{x, y}` where `super` is `layout`.
fn layout_uses(text: &str, depth: usize) -> Vec<(usize, String)> {
    let up = "super::".repeat(depth);
    let mut out = Vec::new();
    let mut in_group = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut names = Vec::new();
        for (i, _) in code.match_indices("crate::layout::") {
            names.push(ident(&code[i + 15..]));
        }
        if depth > 0 {
            for (i, _) in code.match_indices(&up) {
                let before = code[..i].chars().last();
                let after = &code[i + up.len()..];
                if before.is_some_and(|c| c == ':' || c.is_alphanumeric())
                    || after.starts_with("super::")
                {
                    continue;
                }
                if let Some(group) = after.strip_prefix('{') {
                    in_group = !group.contains('}');
                    names.extend(group.split(',').map(|g| ident(g.trim())));
                } else {
                    names.push(ident(after));
                }
            }
            if in_group && !code.contains(&up) {
                in_group = !code.contains('}');
                names.extend(code.split(',').map(|g| ident(g.trim())));
            }
        }
        out.extend(
            names
                .into_iter()
                .filter(|x| !x.is_empty())
                .map(|x| (n + 1, x)),
        );
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn layout_rooms_import_the_floors_below_only() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/layout");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&dir).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let room = parts[0].trim_end_matches(".rs").to_owned();
        if room == "mod" {
            continue;
        }
        let Some(floor) = floor_of(&room) else {
            wrong.push(format!(
                "layout/{}: room {room} is on no floor of LAYOUT_FLOORS: give it one",
                rel.display()
            ));
            continue;
        };
        // `super` in layout/x.rs and layout/x/mod.rs is layout; one more
        // for each folder below.
        let is_mod = parts.last().is_some_and(|p| p == "mod.rs");
        let depth = parts.len() - usize::from(is_mod);
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, used) in layout_uses(&text, depth) {
            let Some(theirs) = floor_of(&used) else {
                continue; // an item of layout/mod.rs, not a room
            };
            if used != room && theirs >= floor {
                wrong.push(format!(
                    "layout/{}:{line}: {room} (floor {}) uses layout::{used} (floor {}): a layout room imports only rooms on lower floors",
                    rel.display(),
                    floor + 1,
                    theirs + 1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layout's floors:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_layout_floor_check_sees_each_form_of_import() {
    let text = "use super::desc::Layout;\nuse super::{mount, lvm::LvNode,\n    tree};\nlet x = crate::layout::grow::grow(p);\n// super::fat in a comment\n";
    let got: Vec<String> = layout_uses(text, 1).into_iter().map(|(_, u)| u).collect();
    assert_eq!(got, ["desc", "mount", "lvm", "tree", "grow"]);
    // In layout/lvm/x.rs, `super::` is lvm and `super::super::` is layout.
    let got: Vec<String> = layout_uses("use super::vg;\nuse super::super::desc::Extent;\n", 2)
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    assert_eq!(got, ["desc"]);
}
