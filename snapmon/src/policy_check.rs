//! The policy as the agent and the CLI take it: config parses the file and checks its own
//! sections, then each stage checks the section it owns (rules, respond, sinks). Above the
//! stages, so config imports none of them.

use std::path::Path;

use crate::config::{line_col, untrusted, ConfigError, Policy, Untrusted, DEFAULT_POLICY};

impl Policy {
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let p = Self::parse_own(text, file)?;
        crate::respond::validate(&p.respond).map_err(|e| ConfigError::Invalid {
            file: file.into(),
            msg: format!("respond: {e}"),
        })?;
        crate::sink::config::validate_all(&p.sinks).map_err(|e| ConfigError::Invalid {
            file: file.into(),
            msg: format!("sink: {e}"),
        })?;
        crate::rules::policy::validate(&p.rules_policy()).map_err(|e| {
            if e.span.is_empty() && e.span.start == 0 {
                ConfigError::Invalid {
                    file: file.into(),
                    msg: e.msg,
                }
            } else {
                let (line, col) = line_col(text, e.span.start);
                ConfigError::Parse {
                    file: file.into(),
                    line,
                    col,
                    msg: e.msg,
                }
            }
        })?;
        Ok(p)
    }

    /// Read and parse `path` ([`Policy::read_text`]). Whether the file is trusted is
    /// [`Policy::load_trusted`]'s.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = Self::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`Policy::load`] for the agent (start and SIGHUP): a file a user other than root could
    /// change is refused, unless `insecure` (`--insecure-config`); then why it is untrusted
    /// comes back with the policy, to be said.
    pub fn load_trusted(
        path: &Path,
        insecure: bool,
    ) -> Result<(Self, Option<Untrusted>), ConfigError> {
        let why = untrusted(path).map_err(|source| ConfigError::Io {
            file: path.display().to_string(),
            source,
        })?;
        if let Some(why) = why.clone().filter(|_| !insecure) {
            return Err(ConfigError::Untrusted {
                file: path.display().to_string(),
                why,
            });
        }
        Ok((Self::load(path)?, why))
    }

    pub fn embedded() -> Self {
        Self::parse(DEFAULT_POLICY, "<embedded default policy>").expect("embedded policy is valid")
    }
}
