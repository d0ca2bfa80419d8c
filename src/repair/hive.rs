//! Windows registry hives read and written offline with Debian's hivex
//! tools (`hivexget`, `hivexsh`): the format is theirs, ferry parses only
//! what they print.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cmd::Cmd;

/// A value as the hivex tools print it (`hivexget HIVE KEY`, the .reg
/// export format).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub(crate) enum RegValue {
    /// REG_SZ (1) or REG_EXPAND_SZ (2), ASCII.
    String { kind: u32, text: String },
    /// REG_DWORD (4).
    Dword(u32),
    /// Any other type, its bytes as printed.
    Hex { kind: u32, bytes: Vec<u8> },
}

impl RegValue {
    /// hivexsh's `setval` spelling.
    fn setval(&self) -> String {
        match self {
            // hivexsh takes 7-bit ASCII only: other text goes as its
            // UTF-16LE bytes with the terminating NUL, as Windows stores it.
            RegValue::String { kind, text } if !text.is_ascii() => {
                let bytes: Vec<u8> = text
                    .encode_utf16()
                    .chain(std::iter::once(0))
                    .flat_map(u16::to_le_bytes)
                    .collect();
                RegValue::Hex { kind: *kind, bytes }.setval()
            }
            RegValue::String { kind: 2, text } => format!("expandstring:{text}"),
            RegValue::String { text, .. } => format!("string:{text}"),
            RegValue::Dword(v) => format!("dword:0x{v:08x}"),
            RegValue::Hex { kind, bytes } => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("hex:{kind}:{}", hex.join(","))
            }
        }
    }

    pub(crate) fn as_dword(&self) -> Option<u32> {
        match self {
            RegValue::Dword(v) => Some(*v),
            _ => None,
        }
    }

    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            RegValue::String { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// One hive file (`Windows/System32/config/SYSTEM`, `SOFTWARE`).
#[derive(Debug, Clone)]
pub(crate) struct Hive {
    path: PathBuf,
}

impl Hive {
    pub fn new(path: impl Into<PathBuf>) -> Hive {
        Hive { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run hivexsh with `script` on stdin; None when a key of the script
    /// does not exist.
    fn shell(&self, write: bool, script: &str) -> Result<Option<String>> {
        let mut c = Cmd::new("hivexsh");
        if write {
            c = c.arg("-w");
        }
        let c = c.arg(&self.path).stdin_bytes(script.as_bytes().to_vec());
        let (status, out) = c
            .output()
            .with_context(|| format!("reading the hive {}", self.path.display()))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !status.success() {
            if err.contains("not found") {
                return Ok(None);
            }
            bail!(
                "`{}` failed ({status}) on the hive {}: {}",
                c.display(),
                self.path.display(),
                err.trim()
            );
        }
        Ok(Some(out.stdout_text()))
    }

    /// The subkeys of `key` (`\ControlSet001\Services`); None when the key
    /// does not exist.
    pub fn subkeys(&self, key: &str) -> Result<Option<Vec<String>>> {
        let out = self.shell(false, &format!("cd {key}\nls\n"))?;
        Ok(out.map(|o| {
            o.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        }))
    }

    /// Every value of `key`, in the hive's order; None when the key does
    /// not exist.
    pub fn values(&self, key: &str) -> Result<Option<Vec<(String, RegValue)>>> {
        let out = self.shell(false, &format!("cd {key}\nlsval\n"))?;
        out.map(|o| parse_values(&o)).transpose()
    }

    /// One value of `key`; None when the key or the value does not exist.
    pub fn value(&self, key: &str, name: &str) -> Result<Option<RegValue>> {
        Ok(self.values(key)?.and_then(|vs| {
            vs.into_iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        }))
    }

    /// Set `name` of the existing key `key` to `value`, keeping the key's
    /// other values (hivexsh replaces a key's values as a whole), and
    /// commit the hive.
    pub(crate) fn set_value(&self, key: &str, name: &str, value: &RegValue) -> Result<()> {
        let mut values = self
            .values(key)?
            .with_context(|| format!("the key {key} does not exist in {}", self.path.display()))?;
        match values
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = value.clone(),
            None => values.push((name.to_owned(), value.clone())),
        }
        let mut script = format!("cd {key}\nsetval {}\n", values.len());
        for (n, v) in &values {
            if n.contains('\n') {
                bail!("the value name {n:?} of {key} cannot be written by hivexsh");
            }
            let n = if n.is_empty() { "@" } else { n.as_str() };
            script.push_str(&format!("{n}\n{}\n", v.setval()));
        }
        script.push_str("commit\n");
        self.shell(true, &script)?
            .with_context(|| format!("the key {key} vanished from {}", self.path.display()))?;
        Ok(())
    }

    /// Add `child` under the existing key `parent` when it is missing.
    pub(crate) fn ensure_key(&self, parent: &str, child: &str) -> Result<()> {
        let subkeys = self.subkeys(parent)?.with_context(|| {
            format!("the key {parent} does not exist in {}", self.path.display())
        })?;
        if subkeys.iter().any(|k| k.eq_ignore_ascii_case(child)) {
            return Ok(());
        }
        self.shell(true, &format!("cd {parent}\nadd {child}\ncommit\n"))?
            .with_context(|| format!("the key {parent} vanished from {}", self.path.display()))?;
        Ok(())
    }
}

/// Parse `lsval`'s lines: `"Name"=dword:00000001`, `"Name"="text"`,
/// `"Name"=str(2):"text"`, `"Name"=hex(7):41,00,...`, `@=...` for the
/// default value.
pub(crate) fn parse_values(text: &str) -> Result<Vec<(String, RegValue)>> {
    let mut out = Vec::new();
    // Long hex values continue on the next line after a backslash.
    let joined = text.replace("\\\n", "");
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, rest) = if let Some(rest) = line.strip_prefix("@=") {
            (String::new(), rest)
        } else {
            let (name, rest) = quoted(line)
                .with_context(|| format!("reading the registry value line {line:?}"))?;
            let rest = rest
                .strip_prefix('=')
                .with_context(|| format!("no '=' in the registry value line {line:?}"))?;
            (name, rest)
        };
        let value = if let Some(hex) = rest.strip_prefix("dword:") {
            RegValue::Dword(
                u32::from_str_radix(hex.trim(), 16)
                    .with_context(|| format!("reading the DWORD in {line:?}"))?,
            )
        } else if rest.starts_with('"') {
            RegValue::String {
                kind: 1,
                text: quoted(rest)?.0,
            }
        } else if let Some(s) = rest.strip_prefix("str(") {
            let (kind, s) = s
                .split_once("):")
                .with_context(|| format!("reading the string type in {line:?}"))?;
            RegValue::String {
                kind: kind
                    .parse()
                    .with_context(|| format!("reading the type in {line:?}"))?,
                text: quoted(s)?.0,
            }
        } else if let Some(s) = rest.strip_prefix("hex(") {
            let (kind, bytes) = s
                .split_once("):")
                .with_context(|| format!("reading the hex type in {line:?}"))?;
            // hivexsh prints the type in decimal (`hex(11)` is a QWORD).
            let kind: u32 = kind
                .parse()
                .with_context(|| format!("reading the type in {line:?}"))?;
            RegValue::Hex {
                kind,
                bytes: hex_bytes(bytes)
                    .with_context(|| format!("reading the bytes of {line:?}"))?,
            }
        } else if let Some(bytes) = rest.strip_prefix("hex:") {
            RegValue::Hex {
                kind: 3,
                bytes: hex_bytes(bytes)
                    .with_context(|| format!("reading the bytes of {line:?}"))?,
            }
        } else {
            bail!("unknown registry value format in {line:?}");
        };
        out.push((name, value));
    }
    Ok(out)
}

fn hex_bytes(s: &str) -> Result<Vec<u8>> {
    s.split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| u8::from_str_radix(b, 16).with_context(|| format!("{b:?} is not a hex byte")))
        .collect()
}

/// A `"..."` string with `\\` and `\"` escapes at the start of `s`, and
/// what follows it.
fn quoted(s: &str) -> Result<(String, &str)> {
    let body = s
        .strip_prefix('"')
        .with_context(|| format!("{s:?} does not start with a quote"))?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => bail!("{s:?} ends inside an escape"),
            },
            '"' => return Ok((out, &body[i + 1..])),
            c => out.push(c),
        }
    }
    bail!("{s:?} has no closing quote")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsval_lines_parse_and_write_back() {
        let text = "\"Start\"=dword:00000000\n\"Group\"=\"SCSI miniport\"\n\"ImagePath\"=str(2):\"\\\\SystemRoot\\\\System32\\\\drivers\\\\viostor.sys\"\n\"Deps\"=hex(7):41,00,00,00,\\\n00,00\n@=dword:0000000a\n";
        let v = parse_values(text).unwrap();
        assert_eq!(
            v,
            vec![
                ("Start".to_owned(), RegValue::Dword(0)),
                (
                    "Group".to_owned(),
                    RegValue::String {
                        kind: 1,
                        text: "SCSI miniport".into()
                    }
                ),
                (
                    "ImagePath".to_owned(),
                    RegValue::String {
                        kind: 2,
                        text: "\\SystemRoot\\System32\\drivers\\viostor.sys".into()
                    }
                ),
                (
                    "Deps".to_owned(),
                    RegValue::Hex {
                        kind: 7,
                        bytes: vec![0x41, 0, 0, 0, 0, 0]
                    }
                ),
                (String::new(), RegValue::Dword(10)),
            ]
        );
        assert_eq!(v[0].1.setval(), "dword:0x00000000");
        assert_eq!(v[1].1.setval(), "string:SCSI miniport");
        assert_eq!(
            v[2].1.setval(),
            "expandstring:\\SystemRoot\\System32\\drivers\\viostor.sys"
        );
        assert_eq!(v[3].1.setval(), "hex:7:41,00,00,00,00,00");
        let accented = RegValue::String {
            kind: 1,
            text: "é".into(),
        };
        assert_eq!(accented.setval(), "hex:1:e9,00,00,00");
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "Start=dword:0",
            "\"Start\"dword:0",
            "\"Start\"=dword:zz",
            "\"S\"=blob:1",
        ] {
            assert!(parse_values(bad).is_err(), "{bad}");
        }
    }
}
