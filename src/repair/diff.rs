//! Unified diffs of configuration files, for `--plan` and the report.
//!
//! Configuration files are small, so a plain longest-common-subsequence
//! table is enough; very large inputs fall back to a whole-file replacement.

/// Lines of context around each change, as `diff -u`.
const CONTEXT: usize = 3;
/// Above this many cells the LCS table is not built.
const MAX_CELLS: usize = 16_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Del,
    Add,
}

/// A unified diff from `old` to `new` with `---`/`+++` headers naming
/// `path`; empty when the texts are equal. `None` stands for a missing file.
pub fn unified(path: &str, old: Option<&str>, new: Option<&str>) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.map(split_lines).unwrap_or_default();
    let b: Vec<&str> = new.map(split_lines).unwrap_or_default();
    let ops = script(&a, &b);
    let mut out = format!(
        "--- {}\n+++ {}\n",
        if old.is_some() {
            format!("a{path}")
        } else {
            "/dev/null".to_owned()
        },
        if new.is_some() {
            format!("b{path}")
        } else {
            "/dev/null".to_owned()
        }
    );
    // Positions in a and b of every op.
    let mut pos = Vec::with_capacity(ops.len());
    let (mut i, mut j) = (0usize, 0usize);
    for op in &ops {
        pos.push((i, j));
        match op {
            Op::Keep => {
                i += 1;
                j += 1;
            }
            Op::Del => i += 1,
            Op::Add => j += 1,
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k] != Op::Keep).collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let (a0, b0) = pos[start];
        let alen = ops[start..end].iter().filter(|o| **o != Op::Add).count();
        let blen = ops[start..end].iter().filter(|o| **o != Op::Del).count();
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a0, alen),
            range(b0, blen)
        ));
        for (idx, op) in ops.iter().enumerate().take(end).skip(start) {
            let (ai, bj) = pos[idx];
            let (mark, line) = match op {
                Op::Keep => (' ', a[ai]),
                Op::Del => ('-', a[ai]),
                Op::Add => ('+', b[bj]),
            };
            out.push(mark);
            out.push_str(line.strip_suffix('\n').unwrap_or(line));
            out.push('\n');
            if !line.ends_with('\n') {
                out.push_str("\\ No newline at end of file\n");
            }
        }
    }
    out
}

fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        n => format!("{},{n}", start + 1),
    }
}

fn split_lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

fn script(a: &[&str], b: &[&str]) -> Vec<Op> {
    // Common prefix and suffix are cheap and shrink the table.
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops = vec![Op::Keep; pre];
    if (am.len() + 1) * (bm.len() + 1) > MAX_CELLS {
        ops.extend(std::iter::repeat_n(Op::Del, am.len()));
        ops.extend(std::iter::repeat_n(Op::Add, bm.len()));
    } else {
        let (n, m) = (am.len(), bm.len());
        let mut t = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                t[i * (m + 1) + j] = if am[i] == bm[j] {
                    t[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push(Op::Keep);
                i += 1;
                j += 1;
            } else if i < n && (j == m || t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1]) {
                ops.push(Op::Del);
                i += 1;
            } else {
                ops.push(Op::Add);
                j += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Keep, suf));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            ("equal", Some("a\n"), Some("a\n"), ""),
            (
                "one line changed",
                Some("a\nb\nc\n"),
                Some("a\nB\nc\n"),
                "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n",
            ),
            ("new file", None, Some("x\n"), "--- /dev/null\n+++ b/f\n@@ -0,0 +1 @@\n+x\n"),
            ("removed file", Some("x\n"), None, "--- a/f\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"),
            (
                "no newline at end",
                Some("a"),
                Some("a\n"),
                "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+a\n",
            ),
            (
                "two hunks",
                Some("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n"),
                Some("0\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n"),
                "--- a/f\n+++ b/f\n@@ -1,4 +1,4 @@\n-1\n+0\n 2\n 3\n 4\n@@ -10,3 +10,4 @@\n 10\n 11\n 12\n+13\n",
            ),
        ];
        for (name, a, b, want) in cases {
            assert_eq!(unified("/f", *a, *b), *want, "case {name}");
        }
    }
}
