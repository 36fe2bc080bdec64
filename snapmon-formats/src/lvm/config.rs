//! lvm2's text config syntax, parsed into a bounded tree.

use serde::Serialize;

use super::base::Result;
use super::base::{LvmError, MAX_DEPTH, MAX_METADATA_TEXT};

/// A value in LVM's text config format.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Str(String),
    Int(i64),
    Float(f64),
    List(Vec<ConfigValue>),
}

/// One `name { ... }` section (the root section has an empty name).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ConfigSection {
    pub name: String,
    pub values: Vec<(String, ConfigValue)>,
    pub sections: Vec<ConfigSection>,
}

impl ConfigSection {
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            ConfigValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn get_int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            ConfigValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get_int(key).and_then(|i| u64::try_from(i).ok())
    }

    /// String members of a list value (non-strings are skipped).
    pub fn get_str_list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(ConfigValue::List(items)) => items
                .iter()
                .filter_map(|v| match v {
                    ConfigValue::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn section(&self, name: &str) -> Option<&ConfigSection> {
        self.sections.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Eq,
    Open,
    Close,
    LBrack,
    RBrack,
    Comma,
    Eof,
}

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, msg: &'static str) -> LvmError {
        LvmError::Syntax {
            line: self.line,
            msg,
        }
    }

    fn is_word_byte(c: u8) -> bool {
        !matches!(
            c,
            b' ' | b'\t'
                | b'\r'
                | b'\n'
                | b'='
                | b'{'
                | b'}'
                | b'['
                | b']'
                | b','
                | b'"'
                | b'#'
                | 0
        )
    }

    fn next(&mut self) -> Result<Tok> {
        loop {
            match self.b.get(self.pos) {
                None | Some(0) => return Ok(Tok::Eof),
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'#') => {
                    while let Some(&c) = self.b.get(self.pos) {
                        if c == b'\n' || c == 0 {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some(_) => break,
            }
        }
        let c = self.b[self.pos];
        self.pos += 1;
        Ok(match c {
            b'=' => Tok::Eq,
            b'{' => Tok::Open,
            b'}' => Tok::Close,
            b'[' => Tok::LBrack,
            b']' => Tok::RBrack,
            b',' => Tok::Comma,
            b'"' => Tok::Str(self.string()?),
            _ => {
                let start = self.pos - 1;
                while self.b.get(self.pos).is_some_and(|&c| Self::is_word_byte(c)) {
                    self.pos += 1;
                }
                Tok::Word(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
            }
        })
    }

    /// Body of a double-quoted string; lvm2 escapes only `"` and `\`.
    fn string(&mut self) -> Result<String> {
        let mut out = Vec::new();
        loop {
            match self.b.get(self.pos) {
                None | Some(0) => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    let Some(&e) = self.b.get(self.pos + 1) else {
                        return Err(self.err("unterminated string"));
                    };
                    if e == 0 {
                        return Err(self.err("unterminated string"));
                    }
                    if e == b'\n' {
                        self.line += 1;
                    }
                    out.push(e);
                    self.pos += 2;
                }
                Some(&c) => {
                    if c == b'\n' {
                        self.line += 1;
                    }
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

struct Parser<'a> {
    lx: Lexer<'a>,
    peeked: Option<Tok>,
}

impl<'a> Parser<'a> {
    fn peek(&mut self) -> Result<&Tok> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lx.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn bump(&mut self) -> Result<Tok> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lx.next(),
        }
    }

    fn section_body(&mut self, name: String, depth: usize) -> Result<ConfigSection> {
        if depth > MAX_DEPTH {
            return Err(LvmError::TooDeep);
        }
        let mut sec = ConfigSection {
            name,
            ..Default::default()
        };
        loop {
            match self.bump()? {
                Tok::Eof if depth == 0 => return Ok(sec),
                Tok::Eof => return Err(self.lx.err("unexpected end inside section")),
                Tok::Close if depth > 0 => return Ok(sec),
                Tok::Word(key) | Tok::Str(key) => match self.bump()? {
                    Tok::Eq => {
                        let v = self.value()?;
                        sec.values.push((key, v));
                    }
                    Tok::Open => {
                        let child = self.section_body(key, depth + 1)?;
                        sec.sections.push(child);
                    }
                    _ => return Err(self.lx.err("expected '=' or '{' after name")),
                },
                _ => return Err(self.lx.err("expected a name")),
            }
        }
    }

    fn scalar(&self, tok: Tok) -> Result<ConfigValue> {
        match tok {
            Tok::Str(s) => Ok(ConfigValue::Str(s)),
            Tok::Word(w) => Ok(if let Ok(i) = w.parse::<i64>() {
                ConfigValue::Int(i)
            } else if let Ok(f) = w.parse::<f64>() {
                ConfigValue::Float(f)
            } else {
                // lvm2 rejects bare words; keep them as strings to stay useful.
                ConfigValue::Str(w)
            }),
            _ => Err(self.lx.err("expected a value")),
        }
    }

    fn value(&mut self) -> Result<ConfigValue> {
        let tok = self.bump()?;
        if tok != Tok::LBrack {
            return self.scalar(tok);
        }
        // Flat list: lvm2 has no nested arrays; trailing comma tolerated.
        let mut items = Vec::new();
        loop {
            match self.bump()? {
                Tok::RBrack => return Ok(ConfigValue::List(items)),
                t @ (Tok::Str(_) | Tok::Word(_)) => {
                    items.push(self.scalar(t)?);
                    match self.peek()? {
                        Tok::Comma => {
                            self.bump()?;
                        }
                        Tok::RBrack => {}
                        _ => return Err(self.lx.err("expected ',' or ']' in list")),
                    }
                }
                _ => return Err(self.lx.err("bad list element")),
            }
        }
    }
}

/// Parse LVM text config (on-disk metadata, backup or archive file) into a
/// generic section tree. Stops at the first NUL, as lvm2 does.
pub fn parse_config(text: &[u8]) -> Result<ConfigSection> {
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    if end > MAX_METADATA_TEXT {
        return Err(LvmError::TooLarge(end));
    }
    let mut p = Parser {
        lx: Lexer {
            b: &text[..end],
            pos: 0,
            line: 1,
        },
        peeked: None,
    };
    p.section_body(String::new(), 0)
}
