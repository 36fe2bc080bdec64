//! Test support (not part of the flow): private temp directories, shared with the formats
//! crate's tests.

pub use snapmon_formats::testutil::TmpDir;
