//! Which API token to send: `--token` (or `MYRIAD_API_TOKEN`) first, else
//! the contents of `--token-file` (or `MYRIAD_API_TOKEN_FILE`, default
//! [`DEFAULT_TOKEN_FILE`]), trimmed.

use std::io;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The token file `myriad serve` writes in its default data directory.
pub const DEFAULT_TOKEN_FILE: &str = "myriad-data/api-token";

/// Resolves the token. `token` is `--token`/`MYRIAD_API_TOKEN` (empty
/// counts as absent, like an unset variable), `token_file` is
/// `--token-file`/`MYRIAD_API_TOKEN_FILE` when given; `read` reads a file.
/// A missing default file means no token (the server will then say
/// whether it needs one); a named file that cannot be read, or an empty
/// file, is an error.
pub fn resolve_token(
    token: Option<&str>,
    token_file: Option<&Path>,
    read: impl Fn(&Path) -> io::Result<String>,
) -> Result<Option<String>> {
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_string()));
    }
    let (path, named) = match token_file {
        Some(path) => (path, true),
        None => (Path::new(DEFAULT_TOKEN_FILE), false),
    };
    let contents = match read(path) {
        Ok(contents) => contents,
        Err(e) if !named && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the API token file {}", path.display()));
        }
    };
    let token = contents.trim();
    if token.is_empty() {
        bail!("the API token file {} is empty", path.display());
    }
    Ok(Some(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.to_string()))
            .collect();
        move |path| {
            map.get(path)
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn token_flag_wins_over_any_file() {
        let read = files(&[(DEFAULT_TOKEN_FILE, "from-default"), ("t", "from-file")]);
        let token = resolve_token(Some("flag"), Some(Path::new("t")), &read).unwrap();
        assert_eq!(token.as_deref(), Some("flag"));
    }

    #[test]
    fn named_file_wins_over_default_file() {
        let read = files(&[(DEFAULT_TOKEN_FILE, "from-default"), ("t", "  from-file\n")]);
        let token = resolve_token(None, Some(Path::new("t")), &read).unwrap();
        assert_eq!(token.as_deref(), Some("from-file"));
    }

    #[test]
    fn default_file_is_read_and_trimmed() {
        let read = files(&[(DEFAULT_TOKEN_FILE, "secret\r\n")]);
        let token = resolve_token(None, None, &read).unwrap();
        assert_eq!(token.as_deref(), Some("secret"));
    }

    #[test]
    fn missing_default_file_means_no_token() {
        assert_eq!(resolve_token(None, None, files(&[])).unwrap(), None);
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let error = resolve_token(None, Some(Path::new("nope")), files(&[])).unwrap_err();
        assert!(format!("{error:#}").contains("reading the API token file nope"));
    }

    #[test]
    fn empty_token_falls_back_to_the_file() {
        let read = files(&[(DEFAULT_TOKEN_FILE, "from-default")]);
        let token = resolve_token(Some(" "), None, read).unwrap();
        assert_eq!(token.as_deref(), Some("from-default"));
        assert_eq!(resolve_token(Some(""), None, files(&[])).unwrap(), None);
    }

    #[test]
    fn empty_token_file_is_an_error() {
        let read = files(&[(DEFAULT_TOKEN_FILE, "\n")]);
        let error = resolve_token(None, None, read).unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[test]
    fn unreadable_default_file_is_an_error() {
        let read = |_: &Path| Err(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(resolve_token(None, None, read).is_err());
    }
}
