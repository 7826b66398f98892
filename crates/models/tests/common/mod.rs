//! A Hugging Face cache laid out as `huggingface_hub` and `hf-hub` lay it out, for the hub tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const REPO: &str = "timm/poolformer_s12.sail_in1k";
pub const MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
pub const OLD: &str = "89abcdef0123456789abcdef0123456789abcdef";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Adds snapshot `commit` of `repo` to `cache` with the files of `fixture_name`, as the hub
/// clients write it: blobs named by content, relative symlinks from the snapshot.
pub fn add_snapshot(cache: &Path, repo: &str, commit: &str, fixture_name: &str) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(commit);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["config.json", "model.safetensors"] {
        let bytes = std::fs::read(fixture(fixture_name).join(file)).unwrap();
        let blob = content_hash(&bytes);
        std::fs::write(root.join("blobs").join(&blob), bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(file))
            .unwrap();
    }
}

/// Points `refs/{name}` (a branch or tag, possibly with slashes) of `repo` at `commit`.
pub fn add_ref(cache: &Path, repo: &str, name: &str, commit: &str) {
    let path = cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("refs")
        .join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, commit).unwrap();
}

/// A cache with poolformer_s12 at `main` (and tag `v1.0`), an older commit with
/// identityformer_s12's files on branch `refs/pr/1`.
pub fn fake_cache() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    add_snapshot(cache.path(), REPO, MAIN, "poolformer_s12");
    add_snapshot(cache.path(), REPO, OLD, "identityformer_s12");
    add_ref(cache.path(), REPO, "main", &format!("{MAIN}\n"));
    add_ref(cache.path(), REPO, "v1.0", MAIN);
    add_ref(cache.path(), REPO, "refs/pr/1", OLD);
    cache
}

pub fn snapshot_dir(cache: &Path, commit: &str) -> PathBuf {
    cache
        .join("models--timm--poolformer_s12.sail_in1k/snapshots")
        .join(commit)
}

/// A 64-hex-digit name derived from `bytes`, standing in for the sha256 the hub names LFS blobs
/// by (FNV-1a, four lanes).
fn content_hash(bytes: &[u8]) -> String {
    (0..4u64)
        .map(|lane| {
            let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ lane, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("{h:016x}")
        })
        .collect()
}

/// `http://127.0.0.1:PORT` with nothing listening on PORT, so a download attempt fails at once
/// rather than going out.
pub fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}
