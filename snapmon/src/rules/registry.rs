//! Rules stage, registry: the default rule set, assembled from the families in the order the
//! engine evaluates them (and alerts on one event come out in), and looked up by id.

use super::{
    def::RuleDef,
    family::{blinding, deletion, hiding, kernel, lineage, metadata, qcow2, ransom, timestamps},
};

pub static RULES: &[RuleDef] = &[
    qcow2::Q001,
    qcow2::Q002,
    qcow2::Q003,
    qcow2::Q004,
    qcow2::Q005,
    ransom::R001,
    ransom::R002,
    hiding::H001,
    hiding::H002,
    deletion::B001,
    metadata::M001,
    metadata::M002,
    kernel::K001,
    kernel::K002,
    kernel::K003,
    kernel::K004,
    kernel::K005,
    kernel::K006,
    lineage::L001,
    lineage::L002,
    timestamps::T001,
    blinding::A001,
    blinding::U001,
];

pub fn find(id: &str) -> Option<&'static RuleDef> {
    RULES.iter().find(|r| r.id == id)
}
