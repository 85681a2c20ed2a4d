//! Read-model rows: key → value in generations. Queries read the active generation; a rebuild
//! fills the next one and then switches to it in one write, so readers never see a half-built
//! model. Key: generation u32 BE ‖ row key.
//!
//! Beside its rows a generation keeps an index: what the reader keeps in memory of all rows
//! (open sagas, counts), written in the same batch as the rows it follows from, so it is read
//! at start instead of every row. Key: generation ‖ 0xFF ‖ index key (0xFF starts no UTF-8
//! row key, so rows and index never mix).
//!
//! A new generation is numbered past every one used before, so the rows a rebuild left behind
//! (interrupted, abandoned, or replaced by a switch) are never in its way: they are swept a part
//! at a time, while the new one fills.

use crate::store::decode_u64;
use crate::{StorageError, Store};

const ACTIVE_GENERATION: &[u8] = b"models_generation";
/// The highest generation ever handed out (rows may not show it: none written yet, or swept).
const HIGHEST_GENERATION: &[u8] = b"models_generation_highest";

/// Where a generation's index begins, after its rows.
const INDEX: u8 = 0xFF;

fn model_key(generation: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn index_key(generation: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.extend_from_slice(&generation.to_be_bytes());
    k.push(INDEX);
    k.extend_from_slice(key.as_bytes());
    k
}

/// An index entry written (`Some`) or deleted (`None`).
pub type IndexWrite = (String, Option<Vec<u8>>);

impl Store {
    /// The generation queries read.
    pub fn active_models(&self) -> Result<u32, StorageError> {
        self.generation_at(ACTIVE_GENERATION)
    }

    /// The generation stored under `key` in `meta` (0 if none).
    fn generation_at(&self, key: &[u8]) -> Result<u32, StorageError> {
        Ok(self
            .inner
            .meta
            .get(key)?
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

    /// Write rows of `generation` and what they change of its index in one batch (atomic).
    /// Not durable until [`Store::flush`].
    pub fn write_models(
        &self,
        generation: u32,
        rows: &[(String, Vec<u8>)],
        index: &[IndexWrite],
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (key, value) in rows {
            batch.insert(model_key(generation, key), value.as_slice());
        }
        for (key, value) in index {
            match value {
                Some(value) => batch.insert(index_key(generation, key), value.as_slice()),
                None => batch.remove(index_key(generation, key)),
            }
        }
        self.inner.models.apply_batch(batch)?;
        Ok(())
    }

    /// The index entries of `generation` whose keys start with `prefix`, in key order.
    pub fn model_index<'a>(
        &'a self,
        generation: u32,
        prefix: &str,
    ) -> impl Iterator<Item = Result<(String, Vec<u8>), StorageError>> + 'a {
        self.inner
            .models
            .scan_prefix(index_key(generation, prefix))
            .map(|item| {
                let (key, value) = item?;
                let key = key.get(5..).unwrap_or_default();
                Ok((String::from_utf8_lossy(key).into_owned(), value.to_vec()))
            })
    }

    /// Make `generation` the one queries read.
    pub fn switch_models(&self, generation: u32) -> Result<(), StorageError> {
        self.inner
            .meta
            .insert(ACTIVE_GENERATION, &u64::from(generation).to_be_bytes())?;
        Ok(())
    }

    /// A generation to fill: past the active one, every one handed out before, and every one
    /// that has rows, so nothing is in it yet.
    pub fn new_models(&self) -> Result<u32, StorageError> {
        let highest = self.generation_at(HIGHEST_GENERATION)?;
        let with_rows = match self.inner.models.last()? {
            Some((key, _)) => generation_of(&key)?,
            None => 0,
        };
        let next = highest
            .max(with_rows)
            .max(self.active_models()?)
            .checked_add(1)
            .ok_or(StorageError::Malformed {
                what: "read model generation",
                reason: "every generation number has been used".into(),
            })?;
        self.inner
            .meta
            .insert(HIGHEST_GENERATION, &u64::from(next).to_be_bytes())?;
        Ok(next)
    }

    /// Delete up to `limit` rows and index entries of the generations below `below`, except
    /// `keep`: what earlier rebuilds left, a part at a time, so that no one batch holds a whole
    /// model. Returns how many it deleted: 0 once none are left.
    pub fn sweep_models(&self, below: u32, keep: u32, limit: usize) -> Result<usize, StorageError> {
        let models = &self.inner.models;
        let mut batch = sled::Batch::default();
        let (mut deleted, mut from) = (0, 0u32);
        while deleted < limit && from < below {
            // The next generation below `below` that has rows.
            let Some(key) = models
                .range(from.to_be_bytes()..below.to_be_bytes())
                .keys()
                .next()
                .transpose()?
            else {
                break;
            };
            let generation = generation_of(&key)?;
            if generation != keep {
                for key in models
                    .scan_prefix(generation.to_be_bytes())
                    .keys()
                    .take(limit - deleted)
                {
                    batch.remove(key?);
                    deleted += 1;
                }
            }
            // Below `below`, so this does not overflow.
            from = generation + 1;
        }
        models.apply_batch(batch)?;
        Ok(deleted)
    }

    /// Every row of `generation`, in key order, read as it is iterated (a model may not fit in
    /// memory).
    pub fn models(
        &self,
        generation: u32,
    ) -> impl Iterator<Item = Result<(String, Vec<u8>), StorageError>> + '_ {
        self.inner
            .models
            .range(model_key(generation, "")..index_key(generation, ""))
            .map(|item| {
                let (key, value) = item?;
                let id = key.get(4..).unwrap_or_default();
                Ok((String::from_utf8_lossy(id).into_owned(), value.to_vec()))
            })
    }
}

fn generation_of(key: &[u8]) -> Result<u32, StorageError> {
    key.first_chunk::<4>()
        .map(|g| u32::from_be_bytes(*g))
        .ok_or(StorageError::Malformed {
            what: "read model key",
            reason: format!("{} bytes, shorter than its generation", key.len()),
        })
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreConfig};

    #[test]
    fn generations_switch_atomically_and_are_swept_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.active_models().unwrap(), 0);
        store
            .write_models(0, &[("o1".into(), b"old".to_vec())], &[])
            .unwrap();
        store
            .write_models(
                1,
                &[("o1".into(), b"new".to_vec()), ("o2".into(), b"x".to_vec())],
                &[],
            )
            .unwrap();
        assert_eq!(store.model(0, "o1").unwrap().unwrap(), b"old");
        store.switch_models(1).unwrap();
        assert_eq!(store.active_models().unwrap(), 1);
        assert_eq!(store.sweep_models(1, 1, 100).unwrap(), 1);
        assert!(store.model(0, "o1").unwrap().is_none());
        assert_eq!(store.models(1).count(), 2);
        drop(store);
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.active_models().unwrap(), 1, "the switch is durable");
    }

    #[test]
    fn an_index_is_written_with_its_rows_kept_apart_from_them_and_swept_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let index = |key: &str, value: Option<&[u8]>| (key.to_string(), value.map(<[u8]>::to_vec));
        store
            .write_models(
                1,
                &[
                    ("o1".into(), b"row".to_vec()),
                    ("o2".into(), b"row".to_vec()),
                ],
                &[
                    index("open/o1", Some(b"a")),
                    index("open/o2", Some(b"b")),
                    index("ended/X", Some(b"1")),
                ],
            )
            .unwrap();
        store
            .write_models(2, &[], &[index("open/o9", Some(b"other"))])
            .unwrap();
        store
            .write_models(1, &[], &[index("open/o1", None)])
            .unwrap();
        let read = |generation, prefix| -> Vec<(String, Vec<u8>)> {
            store
                .model_index(generation, prefix)
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(read(1, "open/"), [("open/o2".to_string(), b"b".to_vec())]);
        assert_eq!(read(1, "").len(), 2);
        let rows: Vec<String> = store.models(1).map(|r| r.unwrap().0).collect();
        assert_eq!(rows, ["o1", "o2"], "the index is not a row");
        assert_eq!(store.model(1, "open/o2").unwrap(), None);
        assert_eq!(store.sweep_models(2, 0, 100).unwrap(), 4);
        assert!(read(1, "").is_empty(), "swept with its rows");
        assert_eq!(read(2, "open/").len(), 1, "another generation's stays");
    }

    #[test]
    fn a_new_generation_is_past_every_one_used_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.new_models().unwrap(), 1);
        // An interrupted rebuild of an older build left rows further on.
        store
            .write_models(7, &[("o1".into(), b"x".to_vec())], &[])
            .unwrap();
        assert_eq!(store.new_models().unwrap(), 8);
        // Handed out, nothing written, then swept: not handed out again.
        assert_eq!(store.sweep_models(8, 0, 100).unwrap(), 1);
        assert_eq!(store.new_models().unwrap(), 9);
        drop(store);
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.new_models().unwrap(), 10);
    }

    #[test]
    fn a_sweep_deletes_old_generations_a_part_at_a_time_and_keeps_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let rows = |n: usize| -> Vec<(String, Vec<u8>)> {
            (0..n).map(|i| (format!("o{i}"), b"row".to_vec())).collect()
        };
        for generation in [0, 2, 3, 5, 6] {
            store.write_models(generation, &rows(5), &[]).unwrap();
        }
        // Below 5, except 3: generations 0 and 2, ten rows, four at a time.
        let mut parts = Vec::new();
        loop {
            match store.sweep_models(5, 3, 4).unwrap() {
                0 => break,
                n => parts.push(n),
            }
        }
        assert_eq!(parts, [4, 4, 2]);
        for (generation, left) in [(0, 0), (2, 0), (3, 5), (5, 5), (6, 5)] {
            assert_eq!(
                store.models(generation).count(),
                left,
                "generation {generation}"
            );
        }
    }
}
