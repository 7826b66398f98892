//! Resident memory stays flat over 1000 inferences after warm-up (Linux: reads /proc).

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenmix::models::load_model_dir;

fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "reads the resident set size from Linux's /proc/self/status"
)]
fn rss_is_flat_over_1000_inferences() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convformer_s18");
    let model = load_model_dir(&dir, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 96), &Device::Cpu).unwrap();
    for _ in 0..100 {
        model.forward(&x).unwrap();
    }
    let after_warmup = rss_kb().expect("VmRSS in /proc/self/status");
    let mut peak = after_warmup;
    for i in 0..1000 {
        model.forward(&x).unwrap();
        if i % 100 == 99 {
            peak = peak.max(rss_kb().expect("VmRSS in /proc/self/status"));
        }
    }
    let end = rss_kb().expect("VmRSS in /proc/self/status");
    eprintln!(
        "RSS after warm-up {after_warmup} kB, peak {peak} kB, after 1000 inferences {end} kB"
    );
    assert!(
        end <= after_warmup + 8 * 1024,
        "RSS grew from {after_warmup} kB to {end} kB"
    );
}
