//! Read access: a `View` is a consistent snapshot of the tables at one applied index, with
//! typed reads, reference resolution and the task secondary indexes.

use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use shoal_api::object::{Kind, Object};
use shoal_api::v1::{Cluster, StoreObject, StoreSnapshot, Task, TaskState};

use crate::envelope;
use crate::error::LookupError;
use crate::key::Key;
use crate::snapshot::SNAPSHOT_FORMAT;
use crate::tables::Tables;

/// The store as it was at one applied index. Cloning is O(1) and a view never changes, so a
/// loop can hold one for as long as it likes while the store moves on. Reads borrow from the
/// view; clone what must outlive it.
#[derive(Clone)]
pub struct View {
    tables: Tables,
    index: u64,
}

impl View {
    pub(crate) fn new(tables: Tables, index: u64) -> View {
        View { tables, index }
    }

    /// The applied log index this view reflects (0 for an empty, never-written store).
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn get<T: Object>(&self, id: &str) -> Option<&T> {
        self.object(T::KIND, id)
            .and_then(|object| envelope::downcast(object))
    }

    /// By unique name; tasks have none and are never found this way.
    pub fn get_by_name<T: Object>(&self, name: &str) -> Option<&T> {
        let id = self.tables.table(T::KIND).by_name.get(name)?;
        self.get(id)
    }

    /// Every object of type `T`, ordered by id.
    pub fn list<T: Object>(&self) -> Vec<&T> {
        self.iter().collect()
    }

    /// Like `list`, without collecting.
    pub fn iter<T: Object>(&self) -> impl Iterator<Item = &T> + '_ {
        self.objects(T::KIND)
            .filter_map(|object| envelope::downcast(object))
    }

    pub fn count<T: Object>(&self) -> usize {
        self.tables.table(T::KIND).by_id.len()
    }

    /// Resolves what a user typed: a full id, else an exact name, else a unique id prefix.
    pub fn lookup<T: Object>(&self, reference: &str) -> Result<&T, LookupError> {
        let not_found = || LookupError::NotFound {
            kind: T::KIND,
            reference: reference.to_owned(),
        };
        // An empty prefix would match everything; it names nothing.
        if reference.is_empty() {
            return Err(not_found());
        }
        if let Some(found) = self.get(reference).or_else(|| self.get_by_name(reference)) {
            return Ok(found);
        }
        let mut matches = self.tables.table(T::KIND).with_id_prefix(reference);
        match (matches.next(), matches.next()) {
            (Some(only), None) => envelope::downcast(only).ok_or_else(not_found),
            (Some(_), Some(_)) => Err(LookupError::Ambiguous {
                kind: T::KIND,
                reference: reference.to_owned(),
                count: 2 + matches.count(),
            }),
            (None, _) => Err(not_found()),
        }
    }

    /// The cluster object (there is one once the swarm is initialised).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.iter().next()
    }

    /// Untyped read, for code that handles every kind alike (watch streams, inspect).
    pub fn object(&self, kind: Kind, id: &str) -> Option<&Arc<StoreObject>> {
        self.tables.table(kind).by_id.get(id)
    }

    /// Untyped listing of one kind, ordered by id.
    pub fn objects(&self, kind: Kind) -> impl Iterator<Item = &Arc<StoreObject>> + '_ {
        self.tables.table(kind).by_id.values()
    }

    /// Tasks of a service, ordered by task id.
    pub fn tasks_by_service(&self, service_id: &str) -> Vec<&Task> {
        self.tasks_in(self.tables.tasks.by_service.get(service_id))
    }

    /// Tasks assigned to a node, ordered by task id. `""` gives the tasks not yet assigned.
    pub fn tasks_by_node(&self, node_id: &str) -> Vec<&Task> {
        self.tasks_in(self.tables.tasks.by_node.get(node_id))
    }

    pub fn tasks_by_desired_state(&self, state: TaskState) -> Vec<&Task> {
        self.tasks_in(self.tables.tasks.by_desired_state.get(&(state as i32)))
    }

    /// Tasks filling one slot of a service (the current one and its retained history). Slot 0
    /// holds a global service's tasks.
    pub fn tasks_by_slot(&self, service_id: &str, slot: u64) -> Vec<&Task> {
        let Some(slots) = self.tables.tasks.by_slot.get(service_id) else {
            return Vec::new();
        };
        // "" sorts before every id, so (slot, "") starts the slot and (slot + 1, "") ends it.
        let first = Key::from("");
        let end = match slot.checked_add(1) {
            Some(next) => Bound::Excluded((next, first.clone())),
            None => Bound::Unbounded,
        };
        slots
            .range((Bound::Included((slot, first)), end))
            .filter_map(|(_, id)| self.get::<Task>(id))
            .collect()
    }

    /// The slots of a service that hold at least one task, in order.
    pub fn slots_of_service(&self, service_id: &str) -> Vec<u64> {
        let mut slots: Vec<u64> = self
            .tables
            .tasks
            .by_slot
            .get(service_id)
            .map(|entries| entries.iter().map(|(slot, _)| *slot).collect())
            .unwrap_or_default();
        slots.dedup();
        slots
    }

    fn tasks_in(&self, ids: Option<&OrdSet<Key>>) -> Vec<&Task> {
        ids.map_or_else(Vec::new, |ids| {
            ids.iter().filter_map(|id| self.get::<Task>(id)).collect()
        })
    }

    /// The whole content in the snapshot format: objects by kind (in `Kind::ALL` order), then
    /// by id, so that equal stores give equal bytes.
    pub fn snapshot(&self) -> StoreSnapshot {
        let objects = Kind::ALL
            .iter()
            .flat_map(|kind| self.objects(*kind))
            .map(|object| StoreObject::clone(object))
            .collect();
        StoreSnapshot {
            format: SNAPSHOT_FORMAT,
            index: self.index,
            objects,
        }
    }
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: OrdMap<&'static str, usize> = Kind::ALL
            .iter()
            .map(|kind| (kind.noun(), self.tables.table(*kind).by_id.len()))
            .collect();
        f.debug_struct("View")
            .field("index", &self.index)
            .field("objects", &counts)
            .finish()
    }
}
