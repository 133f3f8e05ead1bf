//! Stable ids for names: depots, topologies and PStates get a `u32` the first time a data
//! directory sees them, and keep it. Keys on disk carry ids, not names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lockstep_core::store::StoreError;
use lockstep_core::{DepotSpec, PStateKind, Topology};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::RocksStore;

const FORMAT_KEY: &[u8] = b"format";
const NEXT_ID_KEY: &[u8] = b"catalog/next-id";
/// The on-disk format this release writes. 2 added each producer state's last append time;
/// a format-1 directory opens (its producer states read without a time) and is marked 2.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format this release reads.
const FORMAT_VERSION_OLDEST: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CatalogEntry {
    id: u32,
    partitions: u32,
    /// For PStates: the owning topology and the layout.
    owner: Option<String>,
    kind: Option<PStateKind>,
}

impl CatalogEntry {
    fn describe(&self) -> String {
        let mut text = format!("{} partitions", self.partitions);
        if let Some(owner) = &self.owner {
            text.push_str(&format!(", owner {owner:?}"));
        }
        if let Some(kind) = self.kind {
            text.push_str(&format!(", {kind:?}"));
        }
        text
    }
}

/// The name used for a topology's outcome table; `$` cannot appear in user names.
pub(crate) fn outcome_table_name(topology: &str) -> String {
    format!("$outcomes.{topology}")
}

/// Ids for everything an engine declares.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) depots: BTreeMap<String, u32>,
    pub(crate) topologies: BTreeMap<String, u32>,
    pub(crate) pstates: BTreeMap<String, u32>,
}

struct Resolver<'a> {
    store: &'a RocksStore,
    /// Catalog keys of topologies being retired: absent, for the names declared now.
    retired_keys: &'a BTreeSet<Vec<u8>>,
    next_id: u32,
    pending: Vec<lockstep_core::store::Entry>,
}

impl Resolver<'_> {
    fn resolve(
        &mut self,
        what: &'static str,
        name: &str,
        declared: CatalogEntry,
    ) -> Result<u32, Error> {
        let key = format!("catalog/{what}/{name}").into_bytes();
        let stored = match self.retired_keys.contains(&key) {
            true => None,
            false => self.store.meta_get::<CatalogEntry>(&key)?,
        };
        if let Some(stored) = stored {
            let comparable = CatalogEntry {
                id: stored.id,
                ..declared.clone()
            };
            if stored != comparable {
                return Err(Error::CatalogMismatch {
                    what,
                    name: name.to_string(),
                    stored: stored.describe(),
                    declared: declared.describe(),
                });
            }
            return Ok(stored.id);
        }
        let id = self.next_id;
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or_else(|| StoreError::Corruption("catalog ran out of ids".to_string()))?;
        let entry = CatalogEntry { id, ..declared };
        self.pending.push((key, RocksStore::encode_meta(&entry)?));
        Ok(id)
    }
}

const DEPOT_PREFIX: &str = "catalog/depot/";
const TOPOLOGY_PREFIX: &str = "catalog/topology/";
const PSTATE_PREFIX: &str = "catalog/pstate/";

/// Every catalog entry under `prefix` (one kind of name), in name order.
fn stored_entries(store: &RocksStore, prefix: &str) -> Result<Vec<(String, CatalogEntry)>, Error> {
    let mut entries = Vec::new();
    for (key, value) in store.meta_entries_with_prefix(prefix.as_bytes())? {
        let name = key
            .get(prefix.len()..)
            .and_then(|name| std::str::from_utf8(name).ok())
            .ok_or_else(|| StoreError::Corruption(format!("malformed catalog key {key:02x?}")))?;
        let entry: CatalogEntry = lockstep_core::decode_envelope(&value)
            .map_err(|e| StoreError::Corruption(format!("catalog entry of {name:?}: {e}")))?;
        entries.push((name.to_string(), entry));
    }
    Ok(entries)
}

/// The topologies the directory holds, by name, with their ids, in name order.
pub(crate) fn stored_topologies(store: &RocksStore) -> Result<Vec<(String, u32)>, Error> {
    Ok(stored_entries(store, TOPOLOGY_PREFIX)?
        .into_iter()
        .map(|(name, entry)| (name, entry.id))
        .collect())
}

/// The names of the depots the directory holds, by id.
pub(crate) fn stored_depot_names(store: &RocksStore) -> Result<BTreeMap<u32, String>, Error> {
    Ok(stored_entries(store, DEPOT_PREFIX)?
        .into_iter()
        .map(|(name, entry)| (entry.id, name))
        .collect())
}

/// A topology removed from the directory by retirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetiredTopology {
    pub(crate) name: String,
    pub(crate) id: u32,
    /// Its PStates (outcome table included), by name, with their ids.
    pub(crate) pstates: Vec<(String, u32)>,
}

/// The directory's format (`None` for a new one), if this release reads it.
fn check_format(store: &RocksStore) -> Result<Option<u32>, Error> {
    let stored_format = store.meta_get::<u32>(FORMAT_KEY)?;
    match stored_format {
        Some(found) if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&found) => {
            Err(Error::Format {
                found,
                supported: FORMAT_VERSION,
            })
        }
        _ => Ok(stored_format),
    }
}

/// What retiring `names` deletes: each topology the directory holds, with its PStates, and
/// the catalog keys of both. Reads only. Names the directory does not hold are left out, so
/// retiring again does nothing more.
fn plan_retirement(
    store: &RocksStore,
    names: &BTreeSet<String>,
) -> Result<(Vec<RetiredTopology>, BTreeSet<Vec<u8>>), Error> {
    let mut retired = Vec::new();
    let mut catalog_keys = BTreeSet::new();
    if names.is_empty() {
        return Ok((retired, catalog_keys));
    }
    let pstates = stored_entries(store, PSTATE_PREFIX)?;
    for name in names {
        let key = format!("{TOPOLOGY_PREFIX}{name}").into_bytes();
        let Some(entry) = store.meta_get::<CatalogEntry>(&key)? else {
            continue;
        };
        catalog_keys.insert(key);
        let owned: Vec<(String, u32)> = pstates
            .iter()
            .filter(|(_, pstate)| pstate.owner.as_deref() == Some(name.as_str()))
            .map(|(pstate_name, pstate)| (pstate_name.clone(), pstate.id))
            .collect();
        catalog_keys.extend(
            owned
                .iter()
                .map(|(pstate_name, _)| format!("{PSTATE_PREFIX}{pstate_name}").into_bytes()),
        );
        retired.push(RetiredTopology {
            name: name.clone(),
            id: entry.id,
            pstates: owned,
        });
    }
    Ok((retired, catalog_keys))
}

/// Checks the directory's format, retires the topologies named in `retire` (see
/// `EngineBuilder::retire_topology`), and loads ids for every declared name, assigning ids to
/// new ones; refuses declarations that contradict the data directory (as it is without the
/// retired topologies) before anything is written. The retirements, the new ids and the
/// format are then written in one synced batch (recovery step R2).
pub(crate) fn resolve(
    store: &RocksStore,
    depots: &[Arc<DepotSpec>],
    topologies: &[Topology],
    retire: &[String],
) -> Result<(Catalog, Vec<RetiredTopology>), Error> {
    let stored_format = check_format(store)?;
    let retire: BTreeSet<String> = retire.iter().cloned().collect();
    let (retired, retired_keys) = plan_retirement(store, &retire)?;
    let next_id = store.meta_get::<u32>(NEXT_ID_KEY)?.unwrap_or(1);
    let mut resolver = Resolver {
        store,
        retired_keys: &retired_keys,
        next_id,
        pending: Vec::new(),
    };
    let mut catalog = Catalog::default();
    for depot in depots {
        let entry = CatalogEntry {
            id: 0,
            partitions: depot.partitions,
            owner: None,
            kind: None,
        };
        let id = resolver.resolve("depot", &depot.name, entry)?;
        catalog.depots.insert(depot.name.clone(), id);
    }
    for topology in topologies {
        let entry = CatalogEntry {
            id: 0,
            partitions: topology.partitions(),
            owner: None,
            kind: None,
        };
        let id = resolver.resolve("topology", topology.name(), entry)?;
        catalog.topologies.insert(topology.name().to_string(), id);
        let outcome_entry = CatalogEntry {
            id: 0,
            partitions: topology.partitions(),
            owner: Some(topology.name().to_string()),
            kind: Some(PStateKind::Map),
        };
        let outcome_name = outcome_table_name(topology.name());
        let id = resolver.resolve("pstate", &outcome_name, outcome_entry)?;
        catalog.pstates.insert(outcome_name, id);
        for pstate in topology.pstates() {
            let entry = CatalogEntry {
                id: 0,
                partitions: pstate.partitions,
                owner: Some(pstate.topology.to_string()),
                kind: Some(pstate.kind),
            };
            let id = resolver.resolve("pstate", &pstate.name, entry)?;
            catalog.pstates.insert(pstate.name.clone(), id);
        }
    }
    if !resolver.pending.is_empty() || stored_format != Some(FORMAT_VERSION) || !retired.is_empty()
    {
        let mut entries = std::mem::take(&mut resolver.pending);
        entries.push((
            FORMAT_KEY.to_vec(),
            RocksStore::encode_meta(&FORMAT_VERSION)?,
        ));
        entries.push((
            NEXT_ID_KEY.to_vec(),
            RocksStore::encode_meta(&resolver.next_id)?,
        ));
        let topology_ids: Vec<u32> = retired.iter().map(|t| t.id).collect();
        let pstate_ids: Vec<u32> = retired
            .iter()
            .flat_map(|t| t.pstates.iter().map(|(_, id)| *id))
            .collect();
        let catalog_deletes: Vec<Vec<u8>> = retired_keys.into_iter().collect();
        store.write_catalog(&entries, &catalog_deletes, &topology_ids, &pstate_ids)?;
    }
    Ok((catalog, retired))
}

/// The partition count the directory's catalog holds for a depot, if it has one.
pub(crate) fn stored_depot_partitions(
    store: &RocksStore,
    depot: &str,
) -> Result<Option<u32>, Error> {
    let key = format!("{DEPOT_PREFIX}{depot}").into_bytes();
    Ok(store
        .meta_get::<CatalogEntry>(&key)?
        .map(|entry| entry.partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_format(store: &RocksStore) -> Option<u32> {
        store.meta_get::<u32>(FORMAT_KEY).expect("read format")
    }

    /// A new directory is marked with this release's format, an older supported one is
    /// upgraded to it, and a newer one is refused, untouched.
    #[test]
    fn formats_are_marked_upgraded_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
        resolve(&store, &[], &[], &[]).expect("new directory");
        assert_eq!(stored_format(&store), Some(FORMAT_VERSION));

        let oldest = RocksStore::encode_meta(&FORMAT_VERSION_OLDEST).expect("encode");
        store
            .meta_put_all(&[(FORMAT_KEY.to_vec(), oldest)])
            .expect("put");
        resolve(&store, &[], &[], &[]).expect("oldest supported format");
        assert_eq!(stored_format(&store), Some(FORMAT_VERSION));

        let newer = RocksStore::encode_meta(&(FORMAT_VERSION + 1)).expect("encode");
        store
            .meta_put_all(&[(FORMAT_KEY.to_vec(), newer)])
            .expect("put");
        let refused = resolve(&store, &[], &[], &[]);
        assert!(matches!(
            refused,
            Err(Error::Format { found, supported: FORMAT_VERSION }) if found == FORMAT_VERSION + 1
        ));
        assert_eq!(stored_format(&store), Some(FORMAT_VERSION + 1));
    }
}
