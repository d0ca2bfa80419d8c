//! LVM2's text metadata format (what a PV's metadata area and
//! `vgcfgbackup` hold): `key = value` assignments and `name { ... }`
//! sections, values being integers, strings and arrays of them, `#`
//! comments. Parsed once here, with bounded size and nesting, and written
//! back in the same form for `vgcfgrestore`.

use anyhow::{bail, Result};

/// Metadata text larger than this is refused (LVM's own areas default to
/// 1 MiB; a VG with thousands of LVs stays far below).
pub const MAX_TEXT: usize = 16 << 20;
/// Sections nest VG → logical_volumes → LV → segment: 4 deep; more is
/// not LVM metadata.
const MAX_DEPTH: usize = 16;

/// A value of the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Str(String),
    Array(Vec<Value>),
    Section(Section),
}

/// A section's entries, in their order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section(pub Vec<(String, Value)>);

impl Section {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub(crate) fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }
    pub(crate) fn section_mut(&mut self, key: &str) -> Option<&mut Section> {
        match self.get_mut(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }
    /// The sub-sections, by name.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.0.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
    /// The strings of an array value (`status = ["READ", "WRITE"]`).
    pub fn strings(&self, key: &str) -> Vec<&str> {
        match self.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
    pub fn set(&mut self, key: &str, value: Value) {
        match self.get_mut(key) {
            Some(v) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

/// Parse metadata text.
pub fn parse(text: &str) -> Result<Section> {
    if text.len() > MAX_TEXT {
        bail!(
            "the metadata text is {} bytes, more than the {MAX_TEXT} this reader accepts",
            text.len()
        );
    }
    let mut p = Parser {
        b: text.as_bytes(),
        i: 0,
        line: 1,
    };
    let s = p.entries(0)?;
    p.skip_blank();
    if p.i < p.b.len() {
        bail!("line {}: an unmatched `}}`", p.line);
    }
    Ok(s)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
}

impl Parser<'_> {
    fn skip_blank(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\n' => {
                    self.line += 1;
                    self.i += 1;
                }
                b' ' | b'\t' | b'\r' | 0 => self.i += 1,
                b'#' => {
                    while self.b.get(self.i).is_some_and(|&c| c != b'\n') {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_blank();
        self.b.get(self.i).copied()
    }

    fn ident(&mut self) -> Result<String> {
        self.skip_blank();
        let start = self.i;
        while self
            .b
            .get(self.i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || b"_.+-".contains(&c))
        {
            self.i += 1;
        }
        if start == self.i {
            bail!(
                "line {}: a name was expected, found {}",
                self.line,
                self.describe()
            );
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    fn describe(&self) -> String {
        match self.b.get(self.i) {
            None => "the end of the text".to_owned(),
            Some(c) => format!("{:?}", *c as char),
        }
    }

    /// Entries up to a `}` (not consumed) or the end.
    fn entries(&mut self, depth: usize) -> Result<Section> {
        if depth > MAX_DEPTH {
            bail!("line {}: sections nest deeper than {MAX_DEPTH}", self.line);
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'}') => return Ok(Section(out)),
                Some(_) => {}
            }
            let key = self.ident()?;
            match self.peek() {
                Some(b'=') => {
                    self.i += 1;
                    let v = self.value()?;
                    out.push((key, v));
                }
                Some(b'{') => {
                    self.i += 1;
                    let s = self.entries(depth + 1)?;
                    if self.peek() != Some(b'}') {
                        bail!("line {}: section {key} is not closed", self.line);
                    }
                    self.i += 1;
                    out.push((key, Value::Section(s)));
                }
                _ => bail!(
                    "line {}: `=` or `{{` expected after {key}, found {}",
                    self.line,
                    self.describe()
                ),
            }
        }
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        Some(b',') if !items.is_empty() => self.i += 1,
                        None => bail!("line {}: an array is not closed", self.line),
                        _ => {}
                    }
                    if self.peek() == Some(b']') {
                        continue;
                    }
                    match self.value()? {
                        Value::Array(_) => {
                            bail!("line {}: arrays do not nest in LVM metadata", self.line)
                        }
                        v => items.push(v),
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
                {
                    self.i += 1;
                }
                let t = String::from_utf8_lossy(&self.b[start..self.i]).into_owned();
                match t.parse::<i64>() {
                    Ok(n) => Ok(Value::Int(n)),
                    // Floats appear nowhere ferry reads; kept as text.
                    Err(_) => Ok(Value::Str(t)),
                }
            }
            _ => bail!(
                "line {}: a value was expected, found {}",
                self.line,
                self.describe()
            ),
        }
    }

    fn string(&mut self) -> Result<String> {
        let start_line = self.line;
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.b.get(self.i) {
                None => bail!("line {start_line}: a string is not closed"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    let Some(&c) = self.b.get(self.i + 1) else {
                        bail!("line {start_line}: a string is not closed");
                    };
                    out.push(c);
                    self.i += 2;
                }
                Some(&c) => {
                    if c == b'\n' {
                        self.line += 1;
                    }
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

/// The text of `s`, as LVM writes it (one assignment a line, sections
/// indented by tabs).
pub fn write(s: &Section) -> String {
    let mut out = String::new();
    write_section(&mut out, s, 0);
    out
}

fn write_section(out: &mut String, s: &Section, depth: usize) {
    let tabs = "\t".repeat(depth);
    for (k, v) in &s.0 {
        match v {
            Value::Section(sub) => {
                out.push_str(&format!("\n{tabs}{k} {{\n"));
                write_section(out, sub, depth + 1);
                out.push_str(&format!("{tabs}}}\n"));
            }
            v => out.push_str(&format!("{tabs}{k} = {}\n", scalar(v))),
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Str(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Value::Array(a) => format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        Value::Section(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_sections_arrays_and_comments() {
        let s = parse(
            "vg0 {\nid = \"abc\"\nseqno = 3 # a comment\nstatus = [\"READ\", \"WRITE\"]\n\
             stripes = [\n\"pv0\", 0\n]\nlv-one {\n}\n}\n# Generated\ncontents = \"Text \\\"Format\\\"\"\nversion = 1\n\0\0",
        )
        .unwrap();
        let vg = s.section("vg0").unwrap();
        assert_eq!(vg.str("id"), Some("abc"));
        assert_eq!(vg.int("seqno"), Some(3));
        assert_eq!(vg.strings("status"), ["READ", "WRITE"]);
        assert_eq!(
            vg.get("stripes"),
            Some(&Value::Array(vec![Value::Str("pv0".into()), Value::Int(0)]))
        );
        assert!(vg.section("lv-one").is_some());
        assert_eq!(s.str("contents"), Some("Text \"Format\""));
        // What is written parses to the same.
        assert_eq!(parse(&write(&s)).unwrap(), s);
    }

    #[test]
    fn malformed_text_is_refused_with_its_line() {
        for (name, text, want) in [
            (
                "unclosed section",
                "vg {\nid = 1\n",
                "line 3: section vg is not closed",
            ),
            (
                "unclosed string",
                "a = \"x\n",
                "line 1: a string is not closed",
            ),
            (
                "unclosed array",
                "a = [1, 2",
                "line 1: an array is not closed",
            ),
            (
                "nested array",
                "a = [[1]]",
                "line 1: arrays do not nest in LVM metadata",
            ),
            ("stray brace", "a = 1\n}\n", "line 2: an unmatched `}`"),
            (
                "no value",
                "a = \n}",
                "line 2: a value was expected, found '}'",
            ),
            (
                "no operator",
                "a 1",
                "line 1: `=` or `{` expected after a, found '1'",
            ),
        ] {
            let err = parse(text).expect_err(name);
            assert_eq!(err.to_string(), want, "{name}");
        }
        let deep = "a {".repeat(40);
        assert_eq!(
            parse(&deep).unwrap_err().to_string(),
            "line 1: sections nest deeper than 16"
        );
        let big = "#".repeat(MAX_TEXT + 1);
        assert!(parse(&big)
            .unwrap_err()
            .to_string()
            .contains("more than the 16777216 this reader accepts"));
    }
}
