//! Small file-system helpers every stage shares: content digests in the
//! manifest's `sha256:<hex>` form, unique temporary names for atomic
//! writes, bounded reads of regular files, and the rule for what an output
//! may replace.
//!
//! Every file wanrt reads whole goes through [`read_capped`] with a stated
//! limit (the `MAX_*` constants beside each caller), and is refused before
//! it is opened for reading when it is not a regular file: a FIFO, a device
//! such as `/dev/zero` or a directory never hangs a run or fills memory.
//! Outputs go through [`check_output`]: only a regular file is ever
//! replaced, and only when the user asked for it.

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

/// Refuses anything but a regular file (symlinks are followed) with an
/// `InvalidInput` error saying what it is.
pub fn require_regular(path: &Path) -> std::io::Result<std::fs::Metadata> {
    let m = std::fs::metadata(path)?;
    if m.is_file() {
        Ok(m)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe_type(&m.file_type())),
        ))
    }
}

/// "a directory", "a FIFO", ... for error messages.
pub fn describe_type(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Opens a regular file for reading: the type is checked before the open,
/// the open does not block (a FIFO swapped in meanwhile cannot hang it), and
/// the opened file is checked again.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    require_regular(path)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe_type(&m.file_type())),
        ));
    }
    Ok(f)
}

/// Reads a whole regular file of at most `cap` bytes. A larger file fails
/// with `FileTooLarge` naming the limit, before anything is read; a file
/// that grows while being read is cut off at `cap + 1` bytes and refused.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    let too_big = |len: u64| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{len} bytes exceed the {cap}-byte limit for this file"),
        )
    };
    if len > cap {
        return Err(too_big(len));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(too_big(out.len() as u64));
    }
    Ok(out)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_string(path: &Path, cap: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, cap)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        )
    })
}

/// What an output path holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputState {
    Absent,
    /// A regular file that `overwrite` allows replacing.
    ReplaceableFile,
}

/// The rule for every output wanrt writes: an absent path is fine; a
/// regular file is replaced only with `overwrite` (else `AlreadyExists`);
/// a symbolic link, directory, FIFO, device or socket is never replaced
/// (`InvalidInput`, even with `overwrite`: `--output /dev/null --overwrite`
/// must not turn a device into a file).
pub fn check_output(path: &Path, overwrite: bool) -> std::io::Result<OutputState> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OutputState::Absent),
        Err(e) => Err(e),
        Ok(m) if m.is_file() => {
            if overwrite {
                Ok(OutputState::ReplaceableFile)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; pass --overwrite to replace it",
                ))
            }
        }
        Ok(m) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "is {}; wanrt only ever replaces regular files, even with --overwrite",
                describe_type(&m.file_type())
            ),
        )),
    }
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

/// Whether process `pid` still runs (Linux: `/proc/<pid>` exists).
pub fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporaries [`temp_sibling`] made for `target` in processes
/// that no longer run (killed by SIGKILL or a power cut before they could
/// clean up); returns how many. Only names of exactly that form are
/// touched, and a live process's temporaries never.
pub fn clean_stale_temps(target: &Path) -> usize {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return 0;
    };
    let prefix = format!(".{name}{TEMP_MARKER}");
    let Ok(entries) = std::fs::read_dir(parent_dir(target)) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, count)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), true) = (
            pid.parse::<u32>(),
            count.bytes().all(|b| b.is_ascii_digit()),
        ) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
            Ok(t) if t.is_file() => std::fs::remove_file(e.path()),
            _ => continue,
        };
        n += usize::from(removed.is_ok());
    }
    n
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
    fn reads_are_bounded_and_only_of_regular_files() {
        let dir = std::env::temp_dir().join(format!("wanrt-fsio-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_capped(&f, 5).unwrap(), b"12345");
        let e = read_capped(&f, 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("4-byte limit"), "{e}");
        for special in [Path::new("/dev/zero"), dir.as_path()] {
            let e = read_capped(special, 1 << 20).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{special:?}");
        }
        // A FIFO is refused without blocking.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            read_capped(&fifo, 10)
                .unwrap_err()
                .to_string()
                .contains("FIFO")
        );
        // Outputs: absent, file (only with overwrite), never anything else.
        assert_eq!(
            check_output(&dir.join("new"), false).unwrap(),
            OutputState::Absent
        );
        assert_eq!(
            check_output(&f, false).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            check_output(&f, true).unwrap(),
            OutputState::ReplaceableFile
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        for p in [
            Path::new("/dev/null"),
            fifo.as_path(),
            dir.as_path(),
            link.as_path(),
        ] {
            let e = check_output(p, true).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{p:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("wanrt-fsio-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("v.mp4");
        let dead = dir.join(".v.mp4.tmp-4194999-0");
        let dead_dir = dir.join(".v.mp4.tmp-4194999-1");
        let live = temp_sibling(&target);
        let other = dir.join(".w.mp4.tmp-4194999-0");
        let user = dir.join(".v.mp4.tmp-notes");
        for f in [&dead, &live, &other, &user] {
            std::fs::write(f, b"x").unwrap();
        }
        std::fs::create_dir(&dead_dir).unwrap();
        assert_eq!(clean_stale_temps(&target), 2);
        assert!(!dead.exists() && !dead_dir.exists());
        assert!(live.exists() && other.exists() && user.exists());
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
