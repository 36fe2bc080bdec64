//! One field that changed between two versions of a file's metadata, as every format reports it.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub before: String,
    pub after: String,
}

impl FieldChange {
    pub fn new(
        field: impl Into<String>,
        before: impl Into<String>,
        after: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            before: before.into(),
            after: after.into(),
        }
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Added/removed items carry their value on one side only.
        match (self.before.is_empty(), self.after.is_empty()) {
            (true, false) => write!(f, "{}: {}", self.field, self.after),
            (false, true) => write!(f, "{}: {}", self.field, self.before),
            _ => write!(f, "{}: {} → {}", self.field, self.before, self.after),
        }
    }
}
