//! Image files on disk: `<data dir>/uploads/images/<user_id>/<uuid>.png`, written atomically
//! (a temporary file in the same directory, synced, then renamed into place).
//!
//! Paths are only ever built from ids this server made (UUIDs, checked again here), never
//! from anything a client sent, so no id can reach outside the uploads directory.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a temporary file's name starts; anything so named at start-up was left by a crash.
const TEMP_PREFIX: &str = ".tmp-";

/// The uploads directory and the files in it.
#[derive(Clone, Debug)]
pub struct Files {
    root: PathBuf,
}

/// True for a canonical UUID (what every id here is); nothing else becomes part of a path.
fn is_uuid(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

impl Files {
    /// `<data dir>/uploads`.
    pub fn new(data_dir: &Path) -> Files {
        Files {
            root: data_dir.join("uploads"),
        }
    }

    /// The relative path (as stored in the row) of a picture of `user_id`.
    pub fn relative(user_id: &str, file_id: &str) -> Option<String> {
        (is_uuid(user_id) && is_uuid(file_id)).then(|| format!("images/{user_id}/{file_id}.png"))
    }

    /// The absolute path of a stored relative path, if it is one this server writes.
    fn absolute(&self, relative: &str) -> Option<PathBuf> {
        let mut parts = relative.split('/');
        let (Some("images"), Some(user), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let id = name.strip_suffix(".png")?;
        (is_uuid(user) && is_uuid(id)).then(|| self.root.join(relative))
    }

    /// Writes `bytes` at `relative` atomically; blocking, so call it from the blocking pool.
    pub fn write(&self, relative: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self
            .absolute(relative)
            .ok_or_else(|| std::io::Error::other("not an image path"))?;
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("no parent"))?;
        std::fs::create_dir_all(dir)?;
        let temp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::now_v7()));
        let written = (|| {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            // The rename itself survives a power cut once the directory is synced.
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// Reads a stored file; blocking.
    pub fn read(&self, relative: &str) -> std::io::Result<Vec<u8>> {
        let path = self
            .absolute(relative)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        std::fs::read(path)
    }

    /// Removes a stored file; a file already gone is fine. Blocking.
    pub fn remove(&self, relative: &str) -> std::io::Result<()> {
        let Some(path) = self.absolute(relative) else {
            return Ok(());
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes temporary files a crash left behind; returns how many. Blocking; at start-up.
    pub fn clean_temporary(&self) -> usize {
        let Ok(users) = std::fs::read_dir(self.root.join("images")) else {
            return 0;
        };
        let mut removed = 0;
        for user in users.flatten() {
            let Ok(entries) = std::fs::read_dir(user.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_made_of_uuids_are_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let user = uuid::Uuid::now_v7().to_string();
        let id = uuid::Uuid::now_v7().to_string();
        let relative = Files::relative(&user, &id).unwrap();
        files.write(&relative, b"png").unwrap();
        assert_eq!(files.read(&relative).unwrap(), b"png");
        for bad in [
            "../../etc/passwd",
            "images/../../x.png",
            &format!("images/{user}/../{id}.png"),
            &format!("images/{user}/{id}.png/x"),
            "/etc/passwd",
            "",
        ] {
            assert!(files.read(bad).is_err(), "{bad}");
            assert!(files.write(bad, b"x").is_err(), "{bad}");
        }
        assert!(Files::relative("..", &id).is_none());
        assert!(Files::relative(&user, "../x").is_none());
        files.remove(&relative).unwrap();
        files.remove(&relative).unwrap();
        assert!(files.read(&relative).is_err());
    }

    #[test]
    fn temporary_files_left_by_a_crash_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path());
        let user = uuid::Uuid::now_v7().to_string();
        let kept = Files::relative(&user, &uuid::Uuid::now_v7().to_string()).unwrap();
        files.write(&kept, b"keep").unwrap();
        let user_dir = dir.path().join("uploads/images").join(&user);
        std::fs::write(user_dir.join(format!("{TEMP_PREFIX}abc")), b"half").unwrap();
        assert_eq!(files.clean_temporary(), 1);
        assert_eq!(files.read(&kept).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(&user_dir).unwrap().count(), 1);
    }
}
