//! Reading the component topology's state from an engine snapshot.

use lockstep::{Error, RecordId, Snapshot};
use std::ops::Bound;

use super::invariants::ComponentsView;
use super::{Components, Outcome, TOPOLOGY};

/// Every component and link, from one snapshot (so the view is consistent across partitions).
pub fn read_view(snapshot: &Snapshot<'_>, handles: &Components) -> Result<ComponentsView, Error> {
    let components = snapshot
        .range(
            &handles.components,
            Bound::Unbounded,
            Bound::Unbounded,
            usize::MAX,
        )?
        .into_iter()
        .collect();
    let links = snapshot
        .set_entries(&handles.children, usize::MAX)?
        .into_iter()
        .collect();
    Ok(ComponentsView { components, links })
}

/// The outcome recorded for the command appended at `record`, with the batch that recorded it.
pub fn read_outcome(
    snapshot: &Snapshot<'_>,
    record: RecordId,
) -> Result<Option<(Outcome, u64)>, Error> {
    Ok(snapshot
        .outcome::<Outcome>(TOPOLOGY, record)?
        .map(|o| (o.value, o.batch_id)))
}
