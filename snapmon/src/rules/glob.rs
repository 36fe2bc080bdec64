//! Rules support: the small glob language of the policy file (paths, names, executables).
//!
//! `*` matches within one path component, `**` across components, `?` one byte that is not
//! `/`, `[a-z]`/`[!x]` a byte class. Matching is linear in pattern × text (no backtracking
//! blow-up on hostile names), on raw bytes so non-UTF-8 paths still match.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(u8),
    Any,
    Star,
    DoubleStar,
    Class(Vec<(u8, u8)>, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    src: String,
    toks: Vec<Tok>,
    /// Compare case-insensitively (ASCII): names of ransom notes, process names.
    fold: bool,
}

impl Glob {
    pub fn new(pat: &str) -> Result<Glob, String> {
        Self::build(pat, false)
    }

    pub fn new_nocase(pat: &str) -> Result<Glob, String> {
        Self::build(pat, true)
    }

    fn build(pat: &str, fold: bool) -> Result<Glob, String> {
        if pat.is_empty() {
            return Err("empty pattern".into());
        }
        let b = pat.as_bytes();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'*' if b.get(i + 1) == Some(&b'*') => {
                    toks.push(Tok::DoubleStar);
                    i += 2;
                    while b.get(i) == Some(&b'*') {
                        i += 1;
                    }
                    continue;
                }
                b'*' => toks.push(Tok::Star),
                b'?' => toks.push(Tok::Any),
                b'[' => {
                    let mut j = i + 1;
                    let neg = matches!(b.get(j), Some(b'!') | Some(b'^'));
                    if neg {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = b.get(j) else {
                            return Err(format!("unclosed `[` at byte {i} in `{pat}`"));
                        };
                        if c == b']' && !first {
                            break;
                        }
                        first = false;
                        if b.get(j + 1) == Some(&b'-') && b.get(j + 2).is_some_and(|&e| e != b']') {
                            let e = b[j + 2];
                            if e < c {
                                return Err(format!(
                                    "reversed range `{}-{}` in `{pat}`",
                                    c as char, e as char
                                ));
                            }
                            ranges.push((c, e));
                            j += 3;
                        } else {
                            ranges.push((c, c));
                            j += 1;
                        }
                    }
                    toks.push(Tok::Class(ranges, neg));
                    i = j + 1;
                    continue;
                }
                b']' => return Err(format!("unmatched `]` at byte {i} in `{pat}`")),
                b'\\' => {
                    let Some(&c) = b.get(i + 1) else {
                        return Err(format!("trailing `\\` in `{pat}`"));
                    };
                    toks.push(Tok::Lit(c));
                    i += 2;
                    continue;
                }
                c => toks.push(Tok::Lit(c)),
            }
            i += 1;
        }
        Ok(Glob {
            src: pat.to_string(),
            toks,
            fold,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.src
    }

    /// Does the pattern contain any wildcard?
    pub fn is_literal(&self) -> bool {
        self.toks.iter().all(|t| matches!(t, Tok::Lit(_)))
    }

    pub fn matches(&self, text: &[u8]) -> bool {
        let eq = |a: u8, b: u8| {
            if self.fold {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        };
        // dp[j]: pattern[..i] matches text[..j].
        let n = text.len();
        let mut dp = vec![false; n + 1];
        dp[0] = true;
        for t in &self.toks {
            let mut next = vec![false; n + 1];
            match t {
                Tok::Star | Tok::DoubleStar => {
                    let cross = matches!(t, Tok::DoubleStar);
                    let mut reach = false;
                    for j in 0..=n {
                        if dp[j] {
                            reach = true;
                        }
                        next[j] = reach;
                        if j < n && !cross && text[j] == b'/' {
                            reach = false;
                        }
                    }
                }
                _ => {
                    for j in 0..n {
                        if !dp[j] {
                            continue;
                        }
                        let c = text[j];
                        let ok = match t {
                            Tok::Lit(l) => eq(*l, c),
                            Tok::Any => c != b'/',
                            Tok::Class(r, neg) => {
                                let c2 = if self.fold { c.to_ascii_lowercase() } else { c };
                                let hit = r.iter().any(|&(a, b)| {
                                    (a..=b).contains(&c) || (self.fold && (a..=b).contains(&c2))
                                });
                                hit != *neg && c != b'/'
                            }
                            _ => false,
                        };
                        if ok {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            dp = next;
            if !dp.iter().any(|&x| x) {
                return false;
            }
        }
        dp[n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_classes_and_errors() {
        let g = Glob::new("/var/lib/*/images/*.qcow2").unwrap();
        assert!(g.matches(b"/var/lib/libvirt/images/vm1.qcow2"));
        assert!(!g.matches(b"/var/lib/libvirt/images/sub/vm1.qcow2"));
        let g = Glob::new("/tmp/**").unwrap();
        assert!(g.matches(b"/tmp/a/b/c"));
        assert!(!g.matches(b"/var/tmp/a"));
        assert!(Glob::new("/usr/bin/qemu-system-*")
            .unwrap()
            .matches(b"/usr/bin/qemu-system-x86_64"));
        assert!(Glob::new("vm[0-9].q?ow2").unwrap().matches(b"vm7.qcow2"));
        assert!(!Glob::new("vm[!0-9]").unwrap().matches(b"vm7"));
        assert!(Glob::new_nocase("*decrypt*")
            .unwrap()
            .matches(b"README_DECRYPT.txt"));
        for bad in ["", "[abc", "x]", "[z-a]", "a\\"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_inputs_are_linear() {
        let g = Glob::new("*a*a*a*a*a*a*a*b").unwrap();
        let t = vec![b'a'; 5000];
        assert!(!g.matches(&t));
    }
}
