//! Typed handles for depots and PStates.
//!
//! A handle is a cheap `Clone` that carries a name, a partition count and the Rust types of what
//! it holds. Handles are created before the engine opens (depots directly, PStates through a
//! [`TopologyBuilder`](crate::TopologyBuilder)) and are how both topology code and clients name
//! what they read and write; the types stop a `PState<String, u64>` from being read as anything
//! else at compile time, and the envelope checksum catches what types cannot (see
//! [`crate::codec`]).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{encode_envelope, CodecError};
use crate::hash::partition_for_key;
use crate::keycodec::KeyCodecError;

/// Largest partition count a depot or topology may declare.
pub const PARTITIONS_MAX: u32 = 4096;
/// Longest name a depot, PState or topology may have, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Default limit on one encoded depot record.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Hard ceiling on any record limit: one record must always fit a batch and a network frame.
pub const RECORD_BYTES_CEILING: usize = 64 << 20;

/// A definition that cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Names are 1 to 64 bytes of ASCII letters, digits, `_`, `-` and `.`.
    #[error(
        "invalid name {name:?}: use 1 to {NAME_BYTES_MAX} ASCII letters, digits, '_', '-' or '.'"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// Partition counts are 1 to [`PARTITIONS_MAX`].
    #[error("{what} {name:?}: partition count {partitions} is not in 1..={PARTITIONS_MAX}")]
    InvalidPartitions {
        /// "depot" or "topology".
        what: &'static str,
        /// Its name.
        name: String,
        /// The count as given.
        partitions: u32,
    },
    /// A record limit of zero or above [`RECORD_BYTES_CEILING`].
    #[error("depot {name:?}: record limit {bytes} is not in 1..={RECORD_BYTES_CEILING} bytes")]
    InvalidRecordLimit {
        /// The depot.
        name: String,
        /// The limit as given.
        bytes: usize,
    },
    /// Two things of one kind share a name.
    #[error("{what} {name:?} is declared twice")]
    Duplicate {
        /// "depot", "pstate" or "topology".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A topology consumes a depot with a different partition count.
    #[error("topology {topology:?} has {topology_partitions} partitions but depot {depot:?} has {depot_partitions}")]
    PartitionMismatch {
        /// The topology.
        topology: String,
        /// Its partition count.
        topology_partitions: u32,
        /// The depot.
        depot: String,
        /// Its partition count.
        depot_partitions: u32,
    },
    /// A topology consumes no depot, so no batch would ever run.
    #[error("topology {0:?} consumes no depot")]
    NoInput(String),
    /// A topology names a depot the engine was not given.
    #[error(
        "topology {topology:?} consumes depot {depot:?}, which is not declared in this engine"
    )]
    UnknownDepot {
        /// The topology.
        topology: String,
        /// The missing depot.
        depot: String,
    },
    /// A limit that must be positive is zero.
    #[error("topology {topology:?}: {limit} must be at least 1")]
    ZeroLimit {
        /// The topology.
        topology: String,
        /// Which limit.
        limit: &'static str,
    },
}

pub(crate) fn validate_name(name: &str) -> Result<(), SchemaError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SchemaError::InvalidName {
            name: name.to_string(),
        })
    }
}

pub(crate) fn validate_partitions(
    what: &'static str,
    name: &str,
    partitions: u32,
) -> Result<(), SchemaError> {
    if (1..=PARTITIONS_MAX).contains(&partitions) {
        Ok(())
    } else {
        Err(SchemaError::InvalidPartitions {
            what,
            name: name.to_string(),
            partitions,
        })
    }
}

/// The untyped part of a depot declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepotSpec {
    /// Unique among the engine's depots.
    pub name: String,
    /// Fixed for the life of the data directory.
    pub partitions: u32,
    /// Largest encoded record (envelope included) an append accepts.
    pub record_bytes_max: usize,
}

/// Why a record cannot be routed to a partition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The partition key does not encode.
    #[error("partition key does not encode: {0}")]
    Key(#[from] KeyCodecError),
    /// An explicit partitioner chose a partition that does not exist.
    #[error("partitioner chose partition {partition} of {partitions}")]
    OutOfRange {
        /// What it chose.
        partition: u32,
        /// How many there are.
        partitions: u32,
    },
}

type RouteFn<T> = dyn Fn(&T) -> Result<u32, RouteError> + Send + Sync;

/// A durable, append-only, partitioned log of records of type `T`.
///
/// ```
/// use lockstep_core::Depot;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Click { user: String, page: String }
///
/// // Records with the same user go to the same partition, in append order.
/// let clicks = Depot::<Click>::hashed("clicks", 8, |c| c.user.clone()).unwrap();
/// let p = clicks.partition_of(&Click { user: "ada".into(), page: "/".into() }).unwrap();
/// assert!(p < 8);
/// ```
pub struct Depot<T> {
    spec: Arc<DepotSpec>,
    route: Arc<RouteFn<T>>,
    _records: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Depot<T> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            route: self.route.clone(),
            _records: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Depot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Depot").field("spec", &self.spec).finish()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Depot<T> {
    /// A depot whose records go to the partition that owns `key(record)`, hashed exactly as
    /// PState keys are, so a topology can keep the state a record drives on its partition.
    pub fn hashed<K, F>(name: &str, partitions: u32, key: F) -> Result<Self, SchemaError>
    where
        K: Serialize,
        F: Fn(&T) -> K + Send + Sync + 'static,
    {
        Self::with_route(name, partitions, move |record: &T| {
            Ok(partition_for_key(&key(record), partitions)?)
        })
    }

    /// A depot whose records name their partition themselves; a choice outside
    /// `0..partitions` is refused at append time.
    pub fn explicit<F>(name: &str, partitions: u32, partition: F) -> Result<Self, SchemaError>
    where
        F: Fn(&T) -> u32 + Send + Sync + 'static,
    {
        Self::with_route(name, partitions, move |record: &T| {
            let chosen = partition(record);
            if chosen < partitions {
                Ok(chosen)
            } else {
                Err(RouteError::OutOfRange {
                    partition: chosen,
                    partitions,
                })
            }
        })
    }

    fn with_route<F>(name: &str, partitions: u32, route: F) -> Result<Self, SchemaError>
    where
        F: Fn(&T) -> Result<u32, RouteError> + Send + Sync + 'static,
    {
        validate_name(name)?;
        validate_partitions("depot", name, partitions)?;
        Ok(Self {
            spec: Arc::new(DepotSpec {
                name: name.to_string(),
                partitions,
                record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            }),
            route: Arc::new(route),
            _records: PhantomData,
        })
    }

    /// Sets the largest encoded record this depot accepts (default 1 MiB).
    pub fn with_record_bytes_max(mut self, bytes: usize) -> Result<Self, SchemaError> {
        if bytes == 0 || bytes > RECORD_BYTES_CEILING {
            return Err(SchemaError::InvalidRecordLimit {
                name: self.spec.name.clone(),
                bytes,
            });
        }
        Arc::make_mut(&mut self.spec).record_bytes_max = bytes;
        Ok(self)
    }

    /// The partition `record` goes to.
    pub fn partition_of(&self, record: &T) -> Result<u32, RouteError> {
        (self.route)(record)
    }

    /// The record as it is stored: the versioned, checksummed envelope.
    pub fn encode(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        encode_envelope(record, self.spec.record_bytes_max)
    }
}

impl<T> Depot<T> {
    /// The depot's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The depot's partition count.
    pub fn partitions(&self) -> u32 {
        self.spec.partitions
    }

    /// The untyped declaration.
    pub fn spec(&self) -> &Arc<DepotSpec> {
        &self.spec
    }
}

/// How a PState lays out its values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum PStateKind {
    /// One value per key.
    Map,
    /// A set of elements per key, each element its own entry ("subindexed"): adding one element
    /// writes one entry whatever the set's size.
    Set,
}

/// The untyped part of a PState declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PStateSpec {
    /// Unique among the engine's PStates.
    pub name: String,
    /// The topology that owns (writes) it.
    pub topology: Arc<str>,
    /// The owning topology's partition count.
    pub partitions: u32,
    /// Map or set.
    pub kind: PStateKind,
    /// Position among the owning topology's PStates.
    pub index: usize,
}

/// Ties a handle to its key and value types without owning either (and stays `Send + Sync`).
type Marker<A, B> = PhantomData<fn(A, B) -> (A, B)>;

/// A partitioned, durable, ordered map from `K` to `V`, owned by one topology.
///
/// Each key lives on the partition [`partition_for_key`] names; only that partition's handler
/// may write it. Created by [`TopologyBuilder::pstate`](crate::TopologyBuilder::pstate).
pub struct PState<K, V> {
    spec: Arc<PStateSpec>,
    _types: Marker<K, V>,
}

/// A partitioned, durable map from `K` to a set of `E`, stored one element per entry.
///
/// Created by [`TopologyBuilder::set_pstate`](crate::TopologyBuilder::set_pstate).
pub struct SetPState<K, E> {
    spec: Arc<PStateSpec>,
    _types: Marker<K, E>,
}

macro_rules! pstate_handle_common {
    ($handle:ident) => {
        impl<A, B> Clone for $handle<A, B> {
            fn clone(&self) -> Self {
                Self {
                    spec: self.spec.clone(),
                    _types: PhantomData,
                }
            }
        }

        impl<A, B> fmt::Debug for $handle<A, B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($handle))
                    .field("spec", &self.spec)
                    .finish()
            }
        }

        impl<A, B> $handle<A, B> {
            pub(crate) fn new(spec: PStateSpec) -> Self {
                Self {
                    spec: Arc::new(spec),
                    _types: PhantomData,
                }
            }

            /// The PState's name.
            pub fn name(&self) -> &str {
                &self.spec.name
            }

            /// The untyped declaration.
            pub fn spec(&self) -> &Arc<PStateSpec> {
                &self.spec
            }
        }
    };
}

pstate_handle_common!(PState);
pstate_handle_common!(SetPState);

impl<K: Serialize, V> PState<K, V> {
    /// The partition that owns `key`.
    pub fn partition_of(&self, key: &K) -> Result<u32, KeyCodecError> {
        partition_for_key(key, self.spec.partitions)
    }
}

impl<K: Serialize, E> SetPState<K, E> {
    /// The partition that owns the set under `key`.
    pub fn partition_of(&self, key: &K) -> Result<u32, KeyCodecError> {
        partition_for_key(key, self.spec.partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_declarations() {
        assert!(matches!(
            Depot::<u32>::hashed("", 4, |r| *r),
            Err(SchemaError::InvalidName { .. })
        ));
        assert!(matches!(
            Depot::<u32>::hashed("has space", 4, |r| *r),
            Err(SchemaError::InvalidName { .. })
        ));
        assert!(matches!(
            Depot::<u32>::hashed("ok", 0, |r| *r),
            Err(SchemaError::InvalidPartitions { .. })
        ));
        assert!(matches!(
            Depot::<u32>::hashed("ok", PARTITIONS_MAX + 1, |r| *r),
            Err(SchemaError::InvalidPartitions { .. })
        ));
        let depot = Depot::<u32>::hashed("ok", 4, |r| *r).expect("valid");
        assert!(depot.clone().with_record_bytes_max(0).is_err());
        assert!(depot
            .with_record_bytes_max(RECORD_BYTES_CEILING + 1)
            .is_err());
    }

    #[test]
    fn explicit_partitioner_is_range_checked() {
        let depot = Depot::<u32>::explicit("explicit", 4, |r| *r).expect("valid");
        assert_eq!(depot.partition_of(&3).expect("in range"), 3);
        assert!(matches!(
            depot.partition_of(&4),
            Err(RouteError::OutOfRange {
                partition: 4,
                partitions: 4
            })
        ));
    }

    #[test]
    fn oversize_records_are_refused() {
        let depot = Depot::<String>::hashed("small", 2, |r| r.clone())
            .expect("valid")
            .with_record_bytes_max(16)
            .expect("valid limit");
        assert!(depot.encode(&"short".to_string()).is_ok());
        assert!(matches!(
            depot.encode(&"x".repeat(100)),
            Err(CodecError::TooLarge { bytes_max: 16, .. })
        ));
    }
}
