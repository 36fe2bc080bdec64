//! MITRE ATT&CK: the techniques snapmon's rules name, with their tactic, declared once, so ECS
//! (`threat.*`) and OCSF (`attacks[]`) say the same thing and a sub-technique is never filed
//! as a technique.

/// One technique or sub-technique (`T1565.001`) and the tactic it serves here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Technique {
    pub id: &'static str,
    pub name: &'static str,
    /// For a sub-technique: its parent's id and name.
    pub parent: Option<(&'static str, &'static str)>,
    pub tactic_id: &'static str,
    pub tactic_name: &'static str,
}

const IMPACT: (&str, &str) = ("TA0040", "Impact");
const DEFENSE_EVASION: (&str, &str) = ("TA0005", "Defense Evasion");
const EXECUTION: (&str, &str) = ("TA0002", "Execution");

const fn t(
    id: &'static str,
    name: &'static str,
    parent: Option<(&'static str, &'static str)>,
    tactic: (&'static str, &'static str),
) -> Technique {
    Technique {
        id,
        name,
        parent,
        tactic_id: tactic.0,
        tactic_name: tactic.1,
    }
}

/// Every technique a rule or an enforcement decision may name (ATT&CK v15).
pub const TECHNIQUES: &[Technique] = &[
    t("T1485", "Data Destruction", None, IMPACT),
    t("T1486", "Data Encrypted for Impact", None, IMPACT),
    t("T1490", "Inhibit System Recovery", None, IMPACT),
    t(
        "T1565.001",
        "Stored Data Manipulation",
        Some(("T1565", "Data Manipulation")),
        IMPACT,
    ),
    t("T1564", "Hide Artifacts", None, DEFENSE_EVASION),
    t(
        "T1564.001",
        "Hidden Files and Directories",
        Some(("T1564", "Hide Artifacts")),
        DEFENSE_EVASION,
    ),
    t(
        "T1036.008",
        "Masquerade File Type",
        Some(("T1036", "Masquerading")),
        DEFENSE_EVASION,
    ),
    t(
        "T1070.006",
        "Timestomp",
        Some(("T1070", "Indicator Removal")),
        DEFENSE_EVASION,
    ),
    t("T1006", "Direct Volume Access", None, DEFENSE_EVASION),
    t(
        "T1562.001",
        "Disable or Modify Tools",
        Some(("T1562", "Impair Defenses")),
        DEFENSE_EVASION,
    ),
    t(
        "T1059",
        "Command and Scripting Interpreter",
        None,
        EXECUTION,
    ),
];

pub fn lookup(id: &str) -> Option<&'static Technique> {
    TECHNIQUES.iter().find(|t| t.id == id)
}

impl Technique {
    /// The technique proper: this one, or a sub-technique's parent.
    pub fn technique(&self) -> (&'static str, &'static str) {
        self.parent.unwrap_or((self.id, self.name))
    }
    pub fn is_sub(&self) -> bool {
        self.parent.is_some()
    }
}

/// `https://attack.mitre.org/techniques/T1565/001/`
pub fn technique_url(id: &str) -> String {
    format!(
        "https://attack.mitre.org/techniques/{}/",
        id.replace('.', "/")
    )
}

pub fn tactic_url(id: &str) -> String {
    format!("https://attack.mitre.org/tactics/{id}/")
}

/// The ids of `ids` split the ECS way, each list without repeats, in first-seen order:
/// (tactics, techniques, sub-techniques). Ids not in [`TECHNIQUES`] count as techniques.
pub struct Split {
    pub tactics: Vec<(&'static str, &'static str)>,
    pub techniques: Vec<(String, String)>,
    pub subs: Vec<(&'static str, &'static str)>,
}

pub fn split<'a>(ids: impl IntoIterator<Item = &'a String>) -> Split {
    let mut s = Split {
        tactics: vec![],
        techniques: vec![],
        subs: vec![],
    };
    fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    for id in ids {
        match lookup(id) {
            Some(t) => {
                push(&mut s.tactics, (t.tactic_id, t.tactic_name));
                let (tid, tname) = t.technique();
                push(&mut s.techniques, (tid.to_string(), tname.to_string()));
                if t.is_sub() {
                    push(&mut s.subs, (t.id, t.name));
                }
            }
            None => push(&mut s.techniques, (id.clone(), String::new())),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_technique_a_rule_names_is_declared() {
        for r in crate::rules::registry::RULES {
            for id in r.technique {
                assert!(
                    lookup(id).is_some(),
                    "{}: {id} not in attack::TECHNIQUES",
                    r.id
                );
            }
        }
        for t in TECHNIQUES {
            assert_eq!(t.is_sub(), t.id.contains('.'), "{}", t.id);
            assert!(t.tactic_id.starts_with("TA"));
        }
    }

    #[test]
    fn sub_techniques_split_from_their_parent() {
        let s = split(&["T1565.001".to_string(), "T1490".to_string()]);
        assert_eq!(s.tactics, [("TA0040", "Impact")]);
        assert_eq!(
            s.techniques,
            [
                ("T1565".to_string(), "Data Manipulation".to_string()),
                ("T1490".to_string(), "Inhibit System Recovery".to_string())
            ]
        );
        assert_eq!(s.subs, [("T1565.001", "Stored Data Manipulation")]);
        assert_eq!(
            technique_url("T1565.001"),
            "https://attack.mitre.org/techniques/T1565/001/"
        );
    }
}
