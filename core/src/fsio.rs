//! Small file-system helpers every stage shares: content digests in the
//! manifest's `sha256:<hex>` form, and unique temporary names for atomic
//! writes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `sha256:<hex>` of a finished hasher, the manifest's digest format.
pub fn sha256_string(hasher: Sha256) -> String {
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// `sha256:<hex>` of a file's content, read in 1 MiB blocks (memory stays
/// flat whatever the file's size).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(sha256_string(hasher))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The prefix of every temporary name wanrt creates next to a target:
/// `.<name>.tmp-`. Cleanup code recognises leftovers by it.
pub const TEMP_MARKER: &str = ".tmp-";

/// A unique hidden name next to `target`: `.<name>.tmp-<pid>-<n>`. The
/// process id and a process-wide counter keep concurrent writers (other
/// processes, other threads of this one) from ever sharing a temporary.
pub fn temp_sibling(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_owned());
    parent_dir(target).join(format!(".{name}{TEMP_MARKER}{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = std::env::temp_dir().join(format!("wanrt-fsio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.bin");
        // More than one read block, so the streaming loop really iterates.
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&f, &data).unwrap();
        assert_eq!(sha256_file(&f).unwrap(), sha256_bytes(&data));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_names_never_repeat() {
        let t = Path::new("out/video.mp4");
        let a = temp_sibling(t);
        let b = temp_sibling(t);
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("out")));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".video.mp4.tmp-"), "{name}");
        assert_eq!(
            temp_sibling(Path::new("v.mp4")).parent(),
            Some(Path::new("."))
        );
    }
}
