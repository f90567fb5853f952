//! openraft's own storage conformance suite, run against the sled-backed
//! log store and state machine in a fresh temporary directory per case.

use baton_state::Limits;
use baton_store::{LogStore, NodeId, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};

struct TempStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStore {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, state) = baton_store::open(dir.path(), Limits::default())
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, state))
    }
}

#[test]
// The error type is the one openraft's Suite returns.
#[allow(clippy::result_large_err)]
fn baton_store_passes_the_openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(TempStore)
}
