//! The modules import downward only, along the data's way (README, "Source
//! layout"): a `crate::<module>` path in a module's files must name a module
//! it may use.

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
        ("files", &["job"][..]),
        (
            "wire",
            &[
                "job", "cmd", "devname", "logging", "config", "disk", "files",
            ][..],
        ),
        ("layout", &["job", "cmd", "devname", "disk"][..]),
        ("repair", &["job", "cmd", "devname", "disk", "layout"][..]),
        (
            "check",
            &["job", "cmd", "devname", "disk", "layout", "repair"][..],
        ),
        (
            "pipeline",
            &["job", "cmd", "devname", "disk", "layout", "repair", "check"][..],
        ),
        (
            "serve",
            &[
                "job", "cmd", "devname", "logging", "config", "disk", "files", "wire", "layout",
                "repair", "check", "pipeline",
            ][..],
        ),
        (
            "send",
            &[
                "job", "cmd", "devname", "logging", "config", "disk", "files", "wire", "layout",
                "repair", "check", "pipeline",
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
                        "{}:{}: {module} uses crate::{used}",
                        rel.display(),
                        n + 1
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
