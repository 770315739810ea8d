//! The server's `data_dir`: one server at a time (an exclusive lock on `hubbub.lock`), and
//! the secrets the server generated because the configuration has none (`secrets.toml`,
//! mode 0600), kept so that tokens stay valid across restarts.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file inside `data_dir`; it holds the pid of the server that has the lock.
pub const LOCK_FILE: &str = "hubbub.lock";
/// The generated secrets inside `data_dir`.
pub const SECRETS_FILE: &str = "secrets.toml";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data_dir {} (config key `data_dir`): {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: std::io::Error },
    #[error(
        "data_dir {} is in use by another hubbub server{}: stop it, or give this one another data_dir",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("cannot read {}: {source}", path.display())]
    ReadSecrets { path: PathBuf, source: std::io::Error },
    #[error("{} is damaged ({message}): delete it to generate new secrets (every token made before is then refused)", path.display())]
    BadSecrets { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    WriteSecrets { path: PathBuf, source: std::io::Error },
    #[error(
        "no {key}: set it (config key `{key}`), or start the server once so that it generates one in {}",
        path.display()
    )]
    NoSecret { key: &'static str, path: PathBuf },
}

/// Secrets generated once for a `data_dir` and reused by every later start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub token_secret: String,
    pub api_key: String,
}

/// A `data_dir` this process has locked; the lock is held until the value is dropped (or the
/// process ends, however it ends: the kernel releases it with the file descriptor).
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the folder if needed and takes its lock, without waiting: a second server on
    /// the same folder (the same SQLite file) fails here, naming the folder and the holder.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        std::fs::create_dir_all(path)
            .map_err(|source| DataDirError::Create { path: path.to_owned(), source })?;
        let lock_path = path.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| DataDirError::Lock { path: lock_path.clone(), source })?;
        match try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => {
                let pid = std::fs::read_to_string(&lock_path).ok().and_then(|s| s.trim().parse().ok());
                return Err(DataDirError::Locked { path: path.to_owned(), pid });
            }
            Err(source) => return Err(DataDirError::Lock { path: lock_path, source }),
        }
        let write_pid = |mut f: &File| -> std::io::Result<()> {
            f.set_len(0)?;
            writeln!(f, "{}", std::process::id())
        };
        write_pid(&lock).map_err(|source| DataDirError::Lock { path: lock_path, source })?;
        Ok(DataDir { path: path.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secrets kept in this folder, generated (and written, mode 0600) on first use.
    /// Returns whether they were generated now.
    pub fn secrets(&self) -> Result<(Secrets, bool), DataDirError> {
        if let Some(secrets) = read_secrets(&self.path)? {
            self.keep_private(&self.path.join(SECRETS_FILE))?;
            return Ok((secrets, false));
        }
        let secrets = Secrets { token_secret: generate(), api_key: generate() };
        write_secrets(&self.path.join(SECRETS_FILE), &secrets)?;
        Ok((secrets, true))
    }
}

impl DataDir {
    /// A secrets file copied or restored with a wider mode is made owner-only again, loudly.
    #[cfg(unix)]
    fn keep_private(&self, file: &Path) -> Result<(), DataDirError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| DataDirError::WriteSecrets { path: file.to_owned(), source };
        let mode = std::fs::metadata(file).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
            tracing::warn!(
                "{} was readable by others (mode {:o}): made it 0600",
                file.display(),
                mode & 0o777
            );
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn keep_private(&self, _file: &Path) -> Result<(), DataDirError> {
        Ok(())
    }
}

/// The secrets a server generated in `data_dir`, if any (read without taking the lock: the
/// `hubbub token` command uses it beside a running server).
pub fn read_secrets(data_dir: &Path) -> Result<Option<Secrets>, DataDirError> {
    let path = data_dir.join(SECRETS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DataDirError::ReadSecrets { path, source }),
    };
    let secrets: Secrets = toml::from_str(&text)
        .map_err(|e| DataDirError::BadSecrets { path: path.clone(), message: e.message().to_owned() })?;
    if secrets.token_secret.is_empty() || secrets.api_key.is_empty() {
        return Err(DataDirError::BadSecrets { path, message: "an empty value".into() });
    }
    Ok(Some(secrets))
}

/// 256 random bits, hex.
pub fn generate() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Writes a temporary file created with mode 0600 (never readable by others, not even for a
/// moment), syncs it and renames it into place: a crash leaves either no file or a whole one.
fn write_secrets(path: &Path, secrets: &Secrets) -> Result<(), DataDirError> {
    let err = |source| DataDirError::WriteSecrets { path: path.to_owned(), source };
    let text = format!(
        "# Generated by hubbub because the configuration sets no auth.token_secret / auth.api_key.\n\
         # Kept so that tokens stay valid across restarts; a value set in the configuration wins.\n{}",
        toml::to_string(secrets).expect("secrets serialize")
    );
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `flock(LOCK_EX | LOCK_NB)`: Ok(false) when another process holds it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere the lock is not taken (the server is built and run on Linux).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}
