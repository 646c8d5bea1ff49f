//! The tables themselves: one persistent map per kind, the name index, the task secondary
//! indexes, and the checked application of transactions to them.
//!
//! Everything here is an `imbl` structure, so cloning `Tables` is O(1) and a clone is an
//! independent snapshot. Keys are shared strings (`Key`) and values `Arc<StoreObject>`
//! because imbl copies whole tree nodes on write; with shared keys and values such a copy is
//! only refcount bumps.
//!
//! Transactions are applied in place and undone on failure, rather than applied to a clone
//! and swapped in: a clone shares every node with the live tables, so each write would copy
//! the nodes on its path. In place, nodes are copied only while some view still shares them.

use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use shoal_api::object::Kind;
use shoal_api::v1::{StoreAction, StoreActionKind, StoreObject, Task, Transaction};

use crate::envelope;
use crate::error::{ApplyError, RestoreError};
use crate::key::Key;
use crate::watch::{Change, ChangeAction};

type IdSet = OrdSet<Key>;

/// All objects of one kind.
#[derive(Clone, Default)]
pub(crate) struct Table {
    pub(crate) by_id: OrdMap<Key, Arc<StoreObject>>,
    /// Name → id, for non-empty names only (tasks never have one).
    pub(crate) by_name: OrdMap<Key, Key>,
}

impl Table {
    /// Objects whose id starts with `prefix`, in id order.
    pub(crate) fn with_id_prefix<'a, 'p>(
        &'a self,
        prefix: &'p str,
    ) -> impl Iterator<Item = &'a Arc<StoreObject>> + use<'a, 'p> {
        self.by_id
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(id, _)| id.starts_with(prefix))
            .map(|(_, object)| object)
    }
}

/// Secondary indexes over tasks: each maps a field's value to the ids of the tasks holding it.
#[derive(Clone, Default)]
pub(crate) struct TaskIndexes {
    pub(crate) by_service: OrdMap<Key, IdSet>,
    pub(crate) by_node: OrdMap<Key, IdSet>,
    /// Keyed by the raw enum value so that an unknown state still indexes.
    pub(crate) by_desired_state: OrdMap<i32, IdSet>,
    /// Service id → (slot, task id). Most slots hold one task or a few, and an imbl set has a
    /// fixed-size node even for one element, so slots are not sets of their own: a slot's
    /// tasks are a range of its service's set.
    pub(crate) by_slot: OrdMap<Key, OrdSet<(u64, Key)>>,
}

impl TaskIndexes {
    fn insert(&mut self, task: &Task, id: &Key) {
        add(&mut self.by_service, task.service_id.as_str(), id);
        add(&mut self.by_node, task.node_id.as_str(), id);
        add(&mut self.by_desired_state, &task.desired_state, id);
        self.add_slot(task, id);
    }

    fn add_slot(&mut self, task: &Task, id: &Key) {
        let entry = (task.slot, id.clone());
        match self.by_slot.get_mut(task.service_id.as_str()) {
            Some(slots) => {
                slots.insert(entry);
            }
            None => {
                self.by_slot
                    .insert(Key::from(task.service_id.as_str()), OrdSet::unit(entry));
            }
        }
    }

    fn remove_slot(&mut self, task: &Task, id: &Key) {
        let service_id = task.service_id.as_str();
        if let Some(slots) = self.by_slot.get_mut(service_id) {
            slots.remove(&(task.slot, id.clone()));
            if slots.is_empty() {
                self.by_slot.remove(service_id);
            }
        }
    }

    fn remove(&mut self, task: &Task, id: &Key) {
        drop_id(&mut self.by_service, task.service_id.as_str(), id);
        drop_id(&mut self.by_node, task.node_id.as_str(), id);
        drop_id(&mut self.by_desired_state, &task.desired_state, id);
        self.remove_slot(task, id);
    }

    /// Moves a task between index entries, touching only the indexes whose field changed:
    /// most task writes are status reports that change none of them.
    fn replace(&mut self, old: &Task, new: &Task, id: &Key) {
        if old.service_id != new.service_id {
            drop_id(&mut self.by_service, old.service_id.as_str(), id);
            add(&mut self.by_service, new.service_id.as_str(), id);
        }
        if old.service_id != new.service_id || old.slot != new.slot {
            self.remove_slot(old, id);
            self.add_slot(new, id);
        }
        if old.node_id != new.node_id {
            drop_id(&mut self.by_node, old.node_id.as_str(), id);
            add(&mut self.by_node, new.node_id.as_str(), id);
        }
        if old.desired_state != new.desired_state {
            drop_id(&mut self.by_desired_state, &old.desired_state, id);
            add(&mut self.by_desired_state, &new.desired_state, id);
        }
    }
}

/// Index keys that can be made from their borrowed form; an existing key is reused rather
/// than allocated again.
trait IndexKey: Ord + Clone {
    type Borrowed: Ord + ?Sized;
    fn make(borrowed: &Self::Borrowed) -> Self;
}

impl IndexKey for Key {
    type Borrowed = str;
    fn make(borrowed: &str) -> Key {
        Key::from(borrowed)
    }
}

impl IndexKey for i32 {
    type Borrowed = i32;
    fn make(borrowed: &i32) -> i32 {
        *borrowed
    }
}

fn add<K>(index: &mut OrdMap<K, IdSet>, key: &K::Borrowed, id: &Key)
where
    K: IndexKey + std::borrow::Borrow<K::Borrowed>,
{
    match index.get_mut(key) {
        Some(ids) => {
            ids.insert(id.clone());
        }
        None => {
            index.insert(K::make(key), OrdSet::unit(id.clone()));
        }
    }
}

/// Removes `id` under `key`, dropping the entry once empty so that the index never
/// accumulates dead keys (node ids, services) over the cluster's life.
fn drop_id<K, BK>(index: &mut OrdMap<K, IdSet>, key: &BK, id: &Key)
where
    K: Ord + Clone + std::borrow::Borrow<BK>,
    BK: Ord + ?Sized,
{
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// The whole content of the store at one point.
#[derive(Clone, Default)]
pub(crate) struct Tables {
    kinds: [Table; Kind::ALL.len()],
    pub(crate) tasks: TaskIndexes,
}

/// How to take back one write of a failed transaction.
enum Undo {
    Delete(Kind, Key),
    Restore(Kind, Arc<StoreObject>),
}

impl Tables {
    pub(crate) fn table(&self, kind: Kind) -> &Table {
        &self.kinds[kind as usize]
    }

    fn table_mut(&mut self, kind: Kind) -> &mut Table {
        &mut self.kinds[kind as usize]
    }

    /// Stores `object` under its id, keeping the name and task indexes in step, and returns
    /// the value it replaced. Checks are the caller's business.
    fn put(&mut self, kind: Kind, object: Arc<StoreObject>) -> Option<Arc<StoreObject>> {
        let id = object.id().unwrap_or_default();
        let (key, previous) = match self.table(kind).by_id.get_key_value(id) {
            Some((key, previous)) => (key.clone(), Some(previous.clone())),
            None => (Key::from(id), None),
        };
        let table = self.table_mut(kind);
        let old_name = previous.as_deref().map_or("", envelope::name);
        let new_name = envelope::name(&object);
        if old_name != new_name {
            if !old_name.is_empty() {
                table.by_name.remove(old_name);
            }
            if !new_name.is_empty() {
                table.by_name.insert(Key::from(new_name), key.clone());
            }
        }
        if let Some(new) = envelope::downcast::<Task>(&object) {
            match previous.as_deref().and_then(envelope::downcast::<Task>) {
                Some(old) => self.tasks.replace(old, new, &key),
                None => self.tasks.insert(new, &key),
            }
        }
        self.table_mut(kind).by_id.insert(key, object);
        previous
    }

    fn delete(&mut self, kind: Kind, id: &str) -> Option<Arc<StoreObject>> {
        let table = self.table_mut(kind);
        let (key, removed) = table.by_id.remove_with_key(id)?;
        let name = envelope::name(&removed);
        if !name.is_empty() {
            table.by_name.remove(name);
        }
        if let Some(task) = envelope::downcast::<Task>(&removed) {
            self.tasks.remove(task, &key);
        }
        Some(removed)
    }

    /// Applies every action in order, each seeing the ones before it. On error every write
    /// already made is undone, newest first, which restores the content and the indexes.
    pub(crate) fn apply(
        &mut self,
        index: u64,
        txn: &Transaction,
    ) -> Result<Vec<Change>, ApplyError> {
        let mut changes = Vec::with_capacity(txn.actions.len());
        let mut undo = Vec::with_capacity(txn.actions.len());
        for (position, action) in txn.actions.iter().enumerate() {
            match self.apply_action(index, position, action, &mut undo) {
                Ok(change) => changes.push(change),
                Err(error) => {
                    self.roll_back(undo);
                    return Err(error);
                }
            }
        }
        Ok(changes)
    }

    fn roll_back(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Delete(kind, id) => {
                    self.delete(kind, &id);
                }
                Undo::Restore(kind, previous) => {
                    self.put(kind, previous);
                }
            }
        }
    }

    fn apply_action(
        &mut self,
        index: u64,
        position: usize,
        action: &StoreAction,
        undo: &mut Vec<Undo>,
    ) -> Result<Change, ApplyError> {
        let malformed = |reason| ApplyError::Malformed {
            action: position,
            reason,
        };
        let action_kind =
            StoreActionKind::try_from(action.kind).map_err(|_| malformed("unknown action kind"))?;
        let object = action.object.as_ref().ok_or(malformed("no object"))?;
        let kind = object.kind().ok_or(malformed("empty object"))?;
        let id = object.id().unwrap_or_default();
        if id.is_empty() {
            return Err(malformed("object has no id"));
        }
        let not_found = || ApplyError::NotFound {
            kind,
            id: id.to_owned(),
        };
        let table = self.table(kind);
        let (action, undo_step, stored) = match action_kind {
            StoreActionKind::Unspecified => return Err(malformed("unspecified action kind")),
            StoreActionKind::Create => {
                if table.by_id.contains_key(id) {
                    return Err(ApplyError::AlreadyExists {
                        kind,
                        id: id.to_owned(),
                    });
                }
                check_name_free(table, kind, id, envelope::name(object))?;
                let stored = stamp(object, index);
                self.put(kind, stored.clone());
                (
                    ChangeAction::Created,
                    Undo::Delete(kind, Key::from(id)),
                    stored,
                )
            }
            StoreActionKind::Update => {
                let current = table.by_id.get(id).ok_or_else(not_found)?;
                check_version(kind, id, envelope::version(object), current)?;
                check_name_free(table, kind, id, envelope::name(object))?;
                let stored = stamp(object, index);
                let previous = self.put(kind, stored.clone()).ok_or_else(not_found)?;
                (ChangeAction::Updated, Undo::Restore(kind, previous), stored)
            }
            StoreActionKind::Remove => {
                let current = table.by_id.get(id).ok_or_else(not_found)?;
                // Version 0 means "whatever is stored": removal by reference, without a read.
                let expected = envelope::version(object);
                if expected != 0 {
                    check_version(kind, id, expected, current)?;
                }
                let removed = self.delete(kind, id).ok_or_else(not_found)?;
                (
                    ChangeAction::Removed,
                    Undo::Restore(kind, removed.clone()),
                    removed,
                )
            }
        };
        undo.push(undo_step);
        Ok(Change {
            action,
            kind,
            object: stored,
        })
    }

    /// Builds tables from a snapshot's objects, refusing anything a transaction could not
    /// have produced.
    pub(crate) fn from_objects(objects: Vec<StoreObject>) -> Result<Tables, RestoreError> {
        let mut tables = Tables::default();
        for (position, object) in objects.into_iter().enumerate() {
            let kind = object
                .kind()
                .ok_or(RestoreError::EmptyObject { position })?;
            let id = object.id().unwrap_or_default();
            if id.is_empty() {
                return Err(RestoreError::MissingId { kind, position });
            }
            let table = tables.table(kind);
            if table.by_id.contains_key(id) {
                return Err(RestoreError::DuplicateId {
                    kind,
                    id: id.to_owned(),
                });
            }
            let name = envelope::name(&object);
            if !name.is_empty() && table.by_name.contains_key(name) {
                return Err(RestoreError::DuplicateName {
                    kind,
                    name: name.to_owned(),
                });
            }
            tables.put(kind, Arc::new(object));
        }
        Ok(tables)
    }

    /// Panics unless the name and task indexes say exactly what a rebuild from the objects
    /// would say.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let objects = Kind::ALL
            .iter()
            .flat_map(|kind| self.table(*kind).by_id.values())
            .map(|object| StoreObject::clone(object))
            .collect();
        let rebuilt = Tables::from_objects(objects).expect("stored objects rebuild");
        for kind in Kind::ALL {
            assert!(
                self.table(kind).by_name == rebuilt.table(kind).by_name,
                "{kind} names"
            );
        }
        let (have, want) = (&self.tasks, &rebuilt.tasks);
        assert!(have.by_service == want.by_service, "tasks by service");
        assert!(have.by_node == want.by_node, "tasks by node");
        assert!(
            have.by_desired_state == want.by_desired_state,
            "tasks by desired state"
        );
        assert!(have.by_slot == want.by_slot, "tasks by slot");
    }
}

/// A copy of `object` as stored at `index`: apply sets the version and nothing else, so that
/// every replica stores the same bytes.
fn stamp(object: &StoreObject, index: u64) -> Arc<StoreObject> {
    let mut stored = object.clone();
    envelope::set_version(&mut stored, index);
    Arc::new(stored)
}

fn check_version(
    kind: Kind,
    id: &str,
    expected: u64,
    current: &StoreObject,
) -> Result<(), ApplyError> {
    let actual = envelope::version(current);
    if expected == actual {
        Ok(())
    } else {
        Err(ApplyError::VersionConflict {
            kind,
            id: id.to_owned(),
            expected,
            actual,
        })
    }
}

fn check_name_free(table: &Table, kind: Kind, id: &str, name: &str) -> Result<(), ApplyError> {
    match table.by_name.get(name) {
        Some(holder) if !name.is_empty() && &**holder != id => Err(ApplyError::NameConflict {
            kind,
            name: name.to_owned(),
            id: holder.to_string(),
        }),
        _ => Ok(()),
    }
}
