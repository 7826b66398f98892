//! Resolving and downloading hub models through a Hugging Face cache laid out as
//! `huggingface_hub` and `hf-hub` lay it out: `models--{org}--{name}/blobs/{etag}` holds the
//! files, `snapshots/{commit}/{file}` are relative symlinks to the blobs, `refs/{branch or tag}`
//! holds a commit. Nothing here reaches beyond 127.0.0.1.

use std::path::PathBuf;

use tokenmix_models::hub::resolve_in_hub_cache;
use tokenmix_models::Error;

mod common;

use common::*;

#[test]
fn cached_revisions_resolve_to_their_snapshots() {
    let cache = fake_cache();
    let c = cache.path();
    assert_eq!(
        resolve_in_hub_cache(c, REPO).unwrap(),
        snapshot_dir(c, MAIN)
    );
    let at = |rev: &str| resolve_in_hub_cache(c, &format!("{REPO}@{rev}"));
    assert_eq!(at("main").unwrap(), snapshot_dir(c, MAIN));
    assert_eq!(at("v1.0").unwrap(), snapshot_dir(c, MAIN));
    assert_eq!(at("refs/pr/1").unwrap(), snapshot_dir(c, OLD));
    // A commit needs no ref.
    assert_eq!(at(OLD).unwrap(), snapshot_dir(c, OLD));

    let message = |r: tokenmix_models::Result<PathBuf>| r.unwrap_err().to_string();
    let missing = message(resolve_in_hub_cache(c, "timm/caformer_s18.sail_in1k"));
    assert!(
        missing.contains("is not in the Hugging Face cache"),
        "{missing}"
    );
    assert!(message(at("v2")).contains("revision v2"));
    assert!(message(at(&"f".repeat(40))).contains("lacks config.json"));
    for bad in [
        "../etc",
        "timm",
        "a/b/c",
        "timm/..",
        "timm/x@../../../etc",
        "timm/x@",
    ] {
        let e = resolve_in_hub_cache(c, bad).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{bad}: {e}");
    }
}

#[cfg(feature = "hub")]
mod online {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use candle_core::Device;
    use tokenmix_models::HubSource;

    use super::*;

    /// Largest absolute difference between the model's logits on `fixture_name`'s reference input
    /// and the reference logits.
    fn reference_error(model: &tokenmix_models::LoadedModel, fixture_name: &str) -> f32 {
        let reference = candle_core::safetensors::load(
            fixture(fixture_name).join("reference.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let got = model.forward(&reference["input"]).unwrap();
        (got - &reference["logits"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// A source that must not touch the network: offline, and an endpoint nothing listens on.
    fn offline(cache: &Path) -> HubSource {
        HubSource {
            offline: true,
            endpoint: closed_endpoint(),
            ..HubSource::new(cache)
        }
    }

    #[test]
    fn cached_models_load_without_the_network() {
        let cache = fake_cache();
        let hub = offline(cache.path());
        let model = hub.load(REPO, &Device::Cpu).unwrap();
        assert_eq!(model.name, "poolformer_s12");
        assert!(reference_error(&model, "poolformer_s12") < 1e-3);
        let model = hub
            .load(&format!("{REPO}@refs/pr/1"), &Device::Cpu)
            .unwrap();
        assert_eq!(model.name, "identityformer_s12");
        assert!(reference_error(&model, "identityformer_s12") < 1e-3);
        for rev in ["v1.0", MAIN] {
            let snapshot = hub.snapshot(&format!("{REPO}@{rev}")).unwrap();
            assert_eq!(snapshot, snapshot_dir(cache.path(), MAIN));
        }
        // Cached models need no network even when downloads are allowed.
        let online = HubSource {
            offline: false,
            ..hub
        };
        assert_eq!(
            online.snapshot(REPO).unwrap(),
            snapshot_dir(cache.path(), MAIN)
        );
    }

    #[test]
    fn missing_models_are_clear_errors() {
        let cache = fake_cache();
        let hub = offline(cache.path());
        let e = hub
            .load("timm/caformer_s18.sail_in1k", &Device::Cpu)
            .unwrap_err();
        assert!(matches!(e, Error::Hub { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("timm/caformer_s18.sail_in1k is not in the Hugging Face cache at ")
                && text.contains(&cache.path().display().to_string())
                && text.contains("HF_HUB_OFFLINE"),
            "{text}"
        );
        let text = hub.snapshot(&format!("{REPO}@v2")).unwrap_err().to_string();
        assert!(
            text.contains("(revision v2) is not in the Hugging Face cache"),
            "{text}"
        );
        let e = hub.snapshot("../etc").unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");

        // Online, with the hub unreachable: the download's failure is in the error.
        let online = HubSource {
            offline: false,
            ..hub
        };
        let text = online
            .snapshot("timm/caformer_s18.sail_in1k")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("is not in the Hugging Face cache at")
                && text.contains("and downloading it from http://127.0.0.1:")
                && text.contains("config.json"),
            "{text}"
        );
        assert!(!cache
            .path()
            .join("models--timm--caformer_s18.sail_in1k/snapshots")
            .exists());
    }

    /// A hub on 127.0.0.1 serving `files` of [`REPO`] at any revision as huggingface.co's
    /// `resolve` endpoint does (commit and etag headers, byte ranges); counts its requests.
    fn serve(files: Vec<(String, Vec<u8>)>, commit: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = respond(stream, &files, commit);
            }
        });
        (endpoint, requests)
    }

    fn respond(
        mut stream: TcpStream,
        files: &[(String, Vec<u8>)],
        commit: &str,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        let mut start = 0usize;
        let mut end = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(range) = lower.strip_prefix("range: bytes=") {
                let (a, b) = range.split_once('-').unwrap();
                start = a.parse().unwrap();
                end = b.parse::<usize>().ok();
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("");
        let file = files.iter().find(|(name, _)| {
            path.starts_with(&format!("/{REPO}/resolve/")) && path.ends_with(&format!("/{name}"))
        });
        let Some((name, body)) = file else {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        };
        let end = end.unwrap_or(body.len() - 1).min(body.len() - 1);
        let part = &body[start..=end];
        write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
             Content-Range: bytes {start}-{end}/{}\r\nETag: \"etag-{name}-{}\"\r\n\
             X-Repo-Commit: {commit}\r\nConnection: close\r\n\r\n",
            part.len(),
            body.len(),
            body.len(),
        )?;
        stream.write_all(part)
    }

    #[test]
    fn missing_models_are_downloaded_into_the_cache() {
        if [
            "ALL_PROXY",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "all_proxy",
            "https_proxy",
            "http_proxy",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
        {
            // ureq would send even 127.0.0.1 through the proxy, so the test cannot run; that
            // is an error unless skipping it was asked for.
            assert!(
                std::env::var_os("TOKENMIX_SKIP_PROXIED_HUB_TESTS").is_some(),
                "a proxy variable is set, which this test's local server cannot be reached \
                 through: unset the *_PROXY variables, or set TOKENMIX_SKIP_PROXIED_HUB_TESTS=1 \
                 to skip this test knowingly"
            );
            eprintln!("skipped (TOKENMIX_SKIP_PROXIED_HUB_TESTS): a proxy is configured");
            return;
        }
        let files: Vec<(String, Vec<u8>)> = ["config.json", "model.safetensors"]
            .iter()
            .map(|f| {
                let bytes = std::fs::read(fixture("poolformer_s12").join(f)).unwrap();
                (f.to_string(), bytes)
            })
            .collect();
        let (endpoint, requests) = serve(files, MAIN);
        let cache = tempfile::tempdir().unwrap();
        let hub = HubSource {
            endpoint,
            ..HubSource::new(cache.path())
        };
        let model = hub.load(REPO, &Device::Cpu).unwrap();
        assert!(reference_error(&model, "poolformer_s12") < 1e-3);
        assert!(requests.load(Ordering::SeqCst) > 0);

        // Laid out as the hub clients lay it out, so the offline resolution finds it.
        let snapshot = snapshot_dir(cache.path(), MAIN);
        assert_eq!(resolve_in_hub_cache(cache.path(), REPO).unwrap(), snapshot);
        assert!(
            std::fs::symlink_metadata(snapshot.join("model.safetensors"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let seen = requests.load(Ordering::SeqCst);
        hub.load(REPO, &Device::Cpu).unwrap();
        offline(cache.path()).load(REPO, &Device::Cpu).unwrap();
        assert_eq!(
            requests.load(Ordering::SeqCst),
            seen,
            "a cached model was fetched again"
        );

        // A repo the hub does not have.
        let text = hub.snapshot("timm/nothing_here").unwrap_err().to_string();
        assert!(
            text.contains("downloading it from") && text.contains("404"),
            "{text}"
        );
    }
}
