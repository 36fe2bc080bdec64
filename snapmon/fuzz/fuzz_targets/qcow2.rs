//! Fuzz target: qcow2 parsing, region classification and shadow patching on hostile images.
#![no_main]
use snapmon_formats::qcow2;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = qcow2::parse_header(data);
    if let Ok(img) = qcow2::Qcow2Image::from_bytes(data) {
        let n = data.len() as u64;
        for off in [0, 60, n / 2, n.saturating_sub(1)] {
            let _ = img.classify(off, 4096);
        }
        let _ = img.metadata_extents();
        let _ = qcow2::diff_images(&img, &img);
        if let Ok(shadow) = qcow2::Qcow2Shadow::load(&mut std::io::Cursor::new(data)) {
            let tail = &data[data.len().saturating_sub(16)..];
            if let Some(p) = shadow.apply_header_write(60, tail) {
                let mut s = shadow.clone();
                let _ = s.absorb(p);
            }
        }
    }
    let _ = qcow2::shannon_entropy(data);
});
