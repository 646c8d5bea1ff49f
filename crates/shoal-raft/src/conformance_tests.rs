//! Runs openraft's storage conformance suite against the redb log store and snapshot store.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use parking_lot::Mutex;
use tempfile::TempDir;

use crate::log_store::LogStore;
use crate::state_machine::{SmStore, SnapshotStore, StateMachine};
use crate::types::TypeConfig;

#[derive(Default)]
struct Counter(Mutex<u64>);

impl StateMachine for Counter {
    fn apply(&self, _index: u64, _proposal: &[u8]) -> Vec<u8> {
        let mut n = self.0.lock();
        *n += 1;
        n.to_le_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.lock().to_le_bytes().to_vec()
    }
    fn restore(&self, _index: u64, data: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = data
            .try_into()
            .map_err(|_| "bad counter snapshot".to_string())?;
        *self.0.lock() = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// Builds stores in clear, or sealed under a data key (as managers run them).
struct Builder {
    sealed: bool,
}

impl StoreBuilder<TypeConfig, LogStore, SmStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, SmStore), StorageError<TypeConfig>> {
        let err = |e: String| StorageError::read(TypeConfig::err_from_string(e));
        let dir = tempfile::tempdir().map_err(|e| err(e.to_string()))?;
        let cipher = self
            .sealed
            .then(|| crate::StorageCipher::with_key(1, &[3; crate::DATA_KEY_LEN]));
        let log = LogStore::open(&dir.path().join("raft.redb"), cipher.clone())
            .map_err(|e| err(e.to_string()))?;
        let snapshots = SnapshotStore::open(&dir.path().join("snapshots.redb"), cipher)
            .map_err(|e| err(e.to_string()))?;
        let sm = SmStore::new(Arc::new(Counter::default()), snapshots);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder { sealed: false })
        .await
        .expect("storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_sealed() {
    Suite::test_all(Builder { sealed: true })
        .await
        .expect("storage suite, sealed");
}
