//! Read-model rows: key → value in generations. Queries read the active generation; a rebuild
//! fills the next one and then switches to it in one write, so readers never see a half-built
//! model. Key: generation u32 BE ‖ row key.

use crate::store::decode_u64;
use crate::{StorageError, Store};

const ACTIVE_GENERATION: &[u8] = b"models_generation";

fn model_key(generation: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

impl Store {
    /// The generation queries read.
    pub fn active_models(&self) -> Result<u32, StorageError> {
        Ok(self
            .inner
            .meta
            .get(ACTIVE_GENERATION)?
            .and_then(|v| decode_u64(&v))
            .map_or(0, |g| g as u32))
    }

    /// One row of `generation`.
    pub fn model(&self, generation: u32, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .inner
            .models
            .get(model_key(generation, key))?
            .map(|v| v.to_vec()))
    }

    /// Write rows of `generation` in one batch (atomic). Not durable until [`Store::flush`].
    pub fn write_models(
        &self,
        generation: u32,
        rows: &[(String, Vec<u8>)],
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (key, value) in rows {
            batch.insert(model_key(generation, key), value.as_slice());
        }
        self.inner.models.apply_batch(batch)?;
        Ok(())
    }

    /// Make `generation` the one queries read.
    pub fn switch_models(&self, generation: u32) -> Result<(), StorageError> {
        self.inner
            .meta
            .insert(ACTIVE_GENERATION, &u64::from(generation).to_be_bytes())?;
        Ok(())
    }

    /// Delete every row of `generation`. Returns how many.
    pub fn drop_models(&self, generation: u32) -> Result<usize, StorageError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.inner.models.scan_prefix(generation.to_be_bytes()) {
            let (key, _) = item?;
            batch.remove(key);
            n += 1;
        }
        self.inner.models.apply_batch(batch)?;
        Ok(n)
    }

    /// Every row of `generation`, in key order.
    pub fn models(&self, generation: u32) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.inner
            .models
            .scan_prefix(generation.to_be_bytes())
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    String::from_utf8_lossy(&key[4..]).into_owned(),
                    value.to_vec(),
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreConfig};

    #[test]
    fn generations_switch_atomically_and_drop_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.active_models().unwrap(), 0);
        store
            .write_models(0, &[("o1".into(), b"old".to_vec())])
            .unwrap();
        store
            .write_models(
                1,
                &[("o1".into(), b"new".to_vec()), ("o2".into(), b"x".to_vec())],
            )
            .unwrap();
        assert_eq!(store.model(0, "o1").unwrap().unwrap(), b"old");
        store.switch_models(1).unwrap();
        assert_eq!(store.active_models().unwrap(), 1);
        assert_eq!(store.drop_models(0).unwrap(), 1);
        assert!(store.model(0, "o1").unwrap().is_none());
        assert_eq!(store.models(1).unwrap().len(), 2);
        drop(store);
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.active_models().unwrap(), 1, "the switch is durable");
    }
}
