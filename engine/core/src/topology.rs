//! Topology definitions: which depots a topology consumes, which PStates it owns, and the
//! handlers that run per record and per message. Built without I/O, validated into an immutable
//! [`Topology`], then handed to the engine.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::decode_envelope;
use crate::ctx::{Ctx, HandlerError};
use crate::schema::{
    validate_name, validate_partitions, Depot, DepotSpec, PState, PStateKind, PStateSpec,
    SchemaError, SetPState,
};

/// The message type of a topology that never sends messages.
pub type NoMessages = std::convert::Infallible;

/// Default bound on message rounds per batch (see [`TopologyBuilder::rounds_max`]).
pub const ROUNDS_MAX_DEFAULT: u32 = 100_000;
/// Default bound on messages in flight in one round (see
/// [`TopologyBuilder::round_messages_max`]).
pub const ROUND_MESSAGES_MAX_DEFAULT: usize = 1_000_000;

/// Where a depot record sits: the position an append returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId {
    /// Catalog id of the depot (stable for the data directory).
    pub depot_id: u32,
    /// Partition within the depot.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

pub(crate) type RecordFn<M> =
    dyn Fn(&mut Ctx<'_, M>, &[u8]) -> Result<(), HandlerError> + Send + Sync;
pub(crate) type MessageFn<M> = dyn Fn(&mut Ctx<'_, M>, M) -> Result<(), HandlerError> + Send + Sync;

pub(crate) struct Consumer<M> {
    pub(crate) depot: Arc<DepotSpec>,
    pub(crate) handler: Arc<RecordFn<M>>,
}

/// Builds a [`Topology`].
///
/// ```
/// use lockstep_core::{Depot, NoMessages, TopologyBuilder};
///
/// let words = Depot::<String>::hashed("words", 4, |w| w.clone()).unwrap();
/// let mut builder = TopologyBuilder::<NoMessages>::new("word-count", 4);
/// let counts = builder.pstate::<String, u64>("word-counts");
/// builder.consume(&words, move |ctx, word: String| {
///     let n = ctx.get(&counts, &word)?.unwrap_or(0);
///     ctx.put(&counts, &word, &(n + 1))
/// });
/// let topology = builder.build().unwrap();
/// assert_eq!(topology.name(), "word-count");
/// ```
pub struct TopologyBuilder<M> {
    name: Arc<str>,
    partitions: u32,
    consumers: Vec<Consumer<M>>,
    on_message: Option<Arc<MessageFn<M>>>,
    pstates: Vec<Arc<PStateSpec>>,
    rounds_max: u32,
    round_messages_max: usize,
    delivery: crate::exec::Delivery,
    // Errors from the chaining methods surface at build(), so declarations read top to bottom.
    first_error: Option<SchemaError>,
}

impl<M> fmt::Debug for TopologyBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopologyBuilder")
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl<M: Send + 'static> TopologyBuilder<M> {
    /// Starts a topology named `name` running on `partitions` partitions. Every depot it
    /// consumes must have the same partition count: depot partition `p` is handled on
    /// topology partition `p`.
    pub fn new(name: &str, partitions: u32) -> Self {
        let first_error = validate_name(name)
            .and_then(|()| validate_partitions("topology", name, partitions))
            .err();
        Self {
            name: Arc::from(name),
            partitions,
            consumers: Vec::new(),
            on_message: None,
            pstates: Vec::new(),
            rounds_max: ROUNDS_MAX_DEFAULT,
            round_messages_max: ROUND_MESSAGES_MAX_DEFAULT,
            delivery: crate::exec::Delivery::Parallel,
            first_error,
        }
    }

    fn declare(&mut self, name: &str, kind: PStateKind) -> PStateSpec {
        if let Err(e) = validate_name(name) {
            self.first_error.get_or_insert(e);
        }
        if self.pstates.iter().any(|p| p.name == name) {
            self.first_error.get_or_insert(SchemaError::Duplicate {
                what: "pstate",
                name: name.to_string(),
            });
        }
        let spec = PStateSpec {
            name: name.to_string(),
            topology: self.name.clone(),
            partitions: self.partitions,
            kind,
            index: self.pstates.len(),
        };
        self.pstates.push(Arc::new(spec.clone()));
        spec
    }

    /// Declares a map PState owned by this topology.
    pub fn pstate<K, V>(&mut self, name: &str) -> PState<K, V> {
        PState::new(self.declare(name, PStateKind::Map))
    }

    /// Declares a subindexed set PState owned by this topology.
    pub fn set_pstate<K, E>(&mut self, name: &str) -> SetPState<K, E> {
        SetPState::new(self.declare(name, PStateKind::Set))
    }

    /// Consumes `depot`: `handler` runs once per record, on the record's partition, in offset
    /// order.
    pub fn consume<T, F>(&mut self, depot: &Depot<T>, handler: F) -> &mut Self
    where
        T: DeserializeOwned,
        F: Fn(&mut Ctx<'_, M>, T) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        if self.consumers.iter().any(|c| c.depot.name == depot.name()) {
            self.first_error.get_or_insert(SchemaError::Duplicate {
                what: "consumed depot",
                name: depot.name().to_string(),
            });
        }
        let decode_then_handle = move |ctx: &mut Ctx<'_, M>, bytes: &[u8]| {
            let record: T = decode_envelope(bytes).map_err(HandlerError::RecordDecode)?;
            handler(ctx, record)
        };
        self.consumers.push(Consumer {
            depot: depot.spec().clone(),
            handler: Arc::new(decode_then_handle),
        });
        self
    }

    /// Handles messages sent with [`Ctx::send`]; runs on the destination partition in the round
    /// after the send.
    pub fn on_message<F>(&mut self, handler: F) -> &mut Self
    where
        F: Fn(&mut Ctx<'_, M>, M) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.on_message = Some(Arc::new(handler));
        self
    }

    /// Fails a batch that still has messages after this many rounds (default 100,000). A cycle
    /// of messages would otherwise never end; a deep cascade needs one round per level.
    pub fn rounds_max(&mut self, rounds: u32) -> &mut Self {
        self.rounds_max = rounds;
        self
    }

    /// Fails a batch whose one round sends more messages than this (default 1,000,000), which
    /// bounds the memory a batch's messages take.
    pub fn round_messages_max(&mut self, messages: usize) -> &mut Self {
        self.round_messages_max = messages;
        self
    }

    /// Chooses how records are handed to handlers (default [`Delivery::Parallel`]); with
    /// [`Delivery::Serializable`] a batch is equivalent to applying its records one at a time in
    /// append order (see [`crate::exec`]). With serializable delivery, `rounds_max` bounds the
    /// rounds of one record's messages.
    ///
    /// [`Delivery::Parallel`]: crate::exec::Delivery::Parallel
    /// [`Delivery::Serializable`]: crate::exec::Delivery::Serializable
    pub fn delivery(&mut self, delivery: crate::exec::Delivery) -> &mut Self {
        self.delivery = delivery;
        self
    }

    /// Validates the definition.
    pub fn build(self) -> Result<Topology, SchemaError> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        if self.consumers.is_empty() {
            return Err(SchemaError::NoInput(self.name.to_string()));
        }
        for consumer in &self.consumers {
            if consumer.depot.partitions != self.partitions {
                return Err(SchemaError::PartitionMismatch {
                    topology: self.name.to_string(),
                    topology_partitions: self.partitions,
                    depot: consumer.depot.name.clone(),
                    depot_partitions: consumer.depot.partitions,
                });
            }
        }
        if self.rounds_max == 0 {
            return Err(SchemaError::ZeroLimit {
                topology: self.name.to_string(),
                limit: "rounds_max",
            });
        }
        if self.round_messages_max == 0 {
            return Err(SchemaError::ZeroLimit {
                topology: self.name.to_string(),
                limit: "round_messages_max",
            });
        }
        let run = crate::exec::TypedTopology {
            name: self.name,
            partitions: self.partitions,
            consumers: self.consumers,
            on_message: self.on_message,
            pstates: self.pstates,
            rounds_max: self.rounds_max,
            round_messages_max: self.round_messages_max,
            delivery: self.delivery,
        };
        Ok(Topology {
            inner: Arc::new(run),
        })
    }
}

/// A validated topology, ready to hand to the engine. Cheap to clone.
#[derive(Clone)]
pub struct Topology {
    pub(crate) inner: Arc<dyn crate::exec::RunBatch>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name())
            .field("partitions", &self.partitions())
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// The topology's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Its partition count.
    pub fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    /// The depots it consumes, in declaration order (the order a partition handles them in).
    pub fn consumed_depots(&self) -> Vec<Arc<DepotSpec>> {
        self.inner.consumed_depots()
    }

    /// The PStates it owns, in declaration order.
    pub fn pstates(&self) -> &[Arc<PStateSpec>] {
        self.inner.pstates()
    }

    /// Names used by this topology, for duplicate checks across topologies.
    pub fn pstate_names(&self) -> BTreeSet<&str> {
        self.pstates().iter().map(|p| p.name.as_str()).collect()
    }

    /// Runs one batch over `input` against committed state `base`; see [`crate::exec`].
    #[doc(hidden)]
    pub fn execute(
        &self,
        input: crate::exec::BatchInput,
        ids: &crate::exec::ResolvedIds,
        base: &dyn crate::store::StateRead,
        threads: usize,
    ) -> Result<crate::exec::BatchOutput, crate::exec::BatchError> {
        self.inner.execute(input, ids, base, threads)
    }
}
