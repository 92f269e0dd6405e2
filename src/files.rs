//! Files the sidecar and its commands write: private (0600) and replaced atomically, so a
//! failure halfway never destroys the file that was there before.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file being written under a temporary name beside its target. [`commit`] makes it the
/// target (fsync, rename, fsync of the folder); dropped uncommitted, the temporary file is
/// removed and the target is untouched.
///
/// [`commit`]: AtomicFile::commit
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    temporary: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    /// Starts writing `target` (its folder is created, 0700, if missing).
    pub fn create(target: &Path) -> std::io::Result<Self> {
        let folder = match target.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&folder)?;
        let name = target
            .file_name()
            .ok_or_else(|| std::io::Error::other(format!("{} names no file", target.display())))?;
        let mut attempt = 0u32;
        loop {
            // Hidden, and unique to this process and attempt: never another writer's.
            let temporary = folder.join(format!(
                ".{}.{}-{attempt}.tmp",
                name.to_string_lossy(),
                std::process::id()
            ));
            match private_options().create_new(true).open(&temporary) {
                Ok(file) => {
                    return Ok(Self {
                        file: Some(file),
                        temporary,
                        target: target.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The temporary file, to write into.
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("an AtomicFile holds its file until commit")
    }

    /// Flushes the data to disk and renames the file over the target.
    pub fn commit(mut self) -> std::io::Result<()> {
        let file = self.file.take().expect("committed once");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temporary, &self.target)?;
        // The rename itself is durable only once the folder is.
        if let Some(folder) = self.target.parent().filter(|f| !f.as_os_str().is_empty()) {
            File::open(folder)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Replaces `target` with `bytes`, atomically and readable by this user only.
pub fn write_private_atomically(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create(target)?;
    file.file().write_all(bytes)?;
    file.commit()
}

fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn create_private_dir(folder: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("csai-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_one_and_no_trace() {
        let dir = scratch("uncommitted");
        let target = dir.join("backup.jsonl");
        write_private_atomically(&target, b"old").unwrap();
        let mut file = AtomicFile::create(&target).unwrap();
        file.file().write_all(b"half of the new").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn files_and_new_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("private");
        let target = dir.join("inner").join("t.json");
        write_private_atomically(&target, b"{}").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), 0o600);
        assert_eq!(mode(target.parent().unwrap()), 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
