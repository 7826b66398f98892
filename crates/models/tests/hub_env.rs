//! `load_from_hub` and `load_from_hub_cache` configured by the environment (`HF_HUB_CACHE`,
//! `HF_HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`). Environment variables are process-wide, so this
//! binary holds a single test. Nothing here reaches beyond 127.0.0.1.
#![cfg(feature = "hub")]

use candle_core::Device;
use tokenmix_models::hub::{load_from_hub, load_from_hub_cache};
use tokenmix_models::Error;

mod common;

use common::*;

#[test]
fn the_environment_chooses_the_cache_and_the_network() {
    let cache = fake_cache();
    let endpoint = closed_endpoint();
    for var in ["HF_HOME", "HF_TOKEN", "HF_TOKEN_PATH"] {
        std::env::remove_var(var);
    }
    std::env::set_var("HF_ENDPOINT", &endpoint);
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let model = load_from_hub(REPO, &Device::Cpu).unwrap();
    assert_eq!(model.name, "poolformer_s12");
    let model = load_from_hub(&format!("{REPO}@refs/pr/1"), &Device::Cpu).unwrap();
    assert_eq!(model.name, "identityformer_s12");
    assert_eq!(
        load_from_hub(&format!("{REPO}@{OLD}"), &Device::Cpu)
            .unwrap()
            .name,
        "identityformer_s12"
    );
    assert_eq!(
        load_from_hub_cache(&format!("{REPO}@v1.0"), &Device::Cpu)
            .unwrap()
            .name,
        "poolformer_s12"
    );

    // Offline: a missing model is a clear error, and nothing was attempted.
    let e = load_from_hub("timm/caformer_s18.sail_in1k", &Device::Cpu).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "timm/caformer_s18.sail_in1k is not in the Hugging Face cache at {}",
            cache.path().display()
        )) && text.contains("HF_HUB_OFFLINE is set"),
        "{text}"
    );
    let text = load_from_hub_cache("timm/caformer_s18.sail_in1k", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(text.contains("is not in the Hugging Face cache"), "{text}");

    // `HF_HUB_OFFLINE=0`: the download is tried (against the closed endpoint) and its failure
    // reported.
    std::env::set_var("HF_HUB_OFFLINE", "0");
    let text = load_from_hub("timm/caformer_s18.sail_in1k", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("is not in the Hugging Face cache at")
            && text.contains(&format!("downloading it from {endpoint} failed")),
        "{text}"
    );

    // `$HF_HOME/hub` when `HF_HUB_CACHE` is unset.
    let home = tempfile::tempdir().unwrap();
    std::fs::rename(cache.path(), home.path().join("hub")).unwrap();
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "true");
    assert_eq!(
        load_from_hub(REPO, &Device::Cpu).unwrap().name,
        "poolformer_s12"
    );
    let text = load_from_hub("timm/caformer_s18.sail_in1k", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&home.path().join("hub").display().to_string())
            && text.contains("HF_HUB_OFFLINE"),
        "{text}"
    );
}
