//! Fuzz target: libvirt snapshot/checkpoint XML and path classification.
#![no_main]
use snapmon_formats::libvirt;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = libvirt::parse_libvirt_xml(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = libvirt::classify_libvirt_path(s);
    }
});
