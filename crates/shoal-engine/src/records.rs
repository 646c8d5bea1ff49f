//! The containers this host knows, on disk: one `container.pb` (a prost-encoded
//! `ContainerInfo`) per container directory, replaced atomically on every change, so a daemon
//! killed at any instant finds each container either as it was or as it became.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use prost::Message;
use shoal_api::v1::ContainerInfo;

use crate::EngineError;

const RECORD_FILE: &str = "container.pb";

/// Persistent container records under `<data-root>/containers/<id>/`.
#[derive(Debug, Clone)]
pub(crate) struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub(crate) fn open(dir: &Path) -> Result<RecordStore, EngineError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| EngineError::io("create", dir, e))?;
        Ok(RecordStore {
            dir: dir.to_owned(),
        })
    }

    /// The directory that holds everything of container `id` that must persist (record, log).
    pub(crate) fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub(crate) fn save(&self, info: &ContainerInfo) -> Result<(), EngineError> {
        let dir = self.container_dir(&info.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| EngineError::io("create", &dir, e))?;
        let path = dir.join(RECORD_FILE);
        let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&info.encode_to_vec())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&dir)?.sync_all()
        };
        write().map_err(|e| EngineError::io("write", &path, e))
    }

    /// Every readable record. A record that cannot be decoded is reported and left on disk
    /// untouched (never deleted: it may be the only trace of a running container).
    pub(crate) fn load_all(&self) -> Vec<ContainerInfo> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path().join(RECORD_FILE);
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            match ContainerInfo::decode(bytes.as_slice()) {
                Ok(info) if !info.id.is_empty() => records.push(info),
                Ok(_) => {
                    tracing::error!(path = %path.display(), "container record has no id; ignored")
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "container record is corrupt; ignored")
                }
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }

    pub(crate) fn remove(&self, id: &str) -> Result<(), EngineError> {
        let dir = self.container_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EngineError::io("remove", &dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_corrupt_ones_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let info = ContainerInfo {
            id: "abc".into(),
            name: "web".into(),
            ..Default::default()
        };
        store.save(&info).unwrap();
        assert_eq!(store.load_all(), vec![info.clone()]);

        let bad = dir.path().join("bad");
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join(RECORD_FILE), b"\xff\xff\xff").unwrap();
        assert_eq!(store.load_all(), vec![info]);
        assert!(bad.join(RECORD_FILE).exists());

        store.remove("abc").unwrap();
        assert!(store.load_all().is_empty());
        store.remove("abc").unwrap();
    }
}
