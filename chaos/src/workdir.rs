//! The run's temporary directory: PostgreSQL's and RabbitMQ's data, and
//! every child's log. Deleted when dropped unless the run asked to keep it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct WorkDir {
    path: PathBuf,
    /// Kept for a failed verdict (the logs are the evidence) or `--keep`.
    keep: bool,
}

impl WorkDir {
    pub fn create() -> Result<WorkDir> {
        let path = std::env::temp_dir().join(format!(
            "shutoff-chaos-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        ));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        // PostgreSQL may run as another user: it must be able to walk in.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let dir = WorkDir { path, keep: false };
        std::fs::create_dir(dir.logs())?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where every child's log goes.
    pub fn logs(&self) -> PathBuf {
        self.path.join("logs")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            eprintln!(
                "shutoff-chaos: could not delete {}: {e}",
                self.path.display()
            );
        }
    }
}
