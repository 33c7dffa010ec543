//! Files only their owner may read (keys, tokens): created with mode `0600` on Unix, written
//! whole and fsynced. One place for it, so no caller forgets the mode or the sync.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

/// What to do when the file exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail with [`io::ErrorKind::AlreadyExists`] (the file is left as it is).
    Refuse,
    /// Truncate and rewrite it (its mode stays what it was).
    Replace,
}

/// Writes `data` to `path`, readable by the owner only when it is created, then fsyncs it.
pub fn write_secret_file(path: &Path, data: &[u8], existing: Existing) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Replace => options.create(true).truncate(true),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_written_and_refused_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_secret_file(&path, b"one", Existing::Refuse).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = write_secret_file(&path, b"two", Existing::Refuse).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_secret_file(&path, b"three", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
    }
}
