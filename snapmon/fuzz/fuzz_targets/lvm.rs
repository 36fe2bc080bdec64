//! Fuzz target: LVM label, metadata-area header and text metadata on hostile devices.
#![no_main]
use snapmon_formats::lvm;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let label = lvm::parse_label(data).ok();
    let mda = data.get(4096..).and_then(|b| lvm::parse_mda_header(b).ok());
    let _ = lvm::metadata_text_from_device(data);
    if let Ok(vg) = lvm::parse_metadata_text(data) {
        let _ = lvm::diff_vg(&vg, &vg);
    }
    let _ = lvm::classify_pv_write(label.as_ref(), mda.as_ref(), 0, data.len() as u64);
});
