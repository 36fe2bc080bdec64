//! Text for people: the one escape every path, name and header byte passes through on its way
//! to a terminal or a log. It lives with the parsers (`snapmon_formats::text`), which escape
//! the names they decode.

pub use snapmon_formats::text::*;
