//! Behaviour of the store through its public API: transactions and their checks, indexes,
//! lookups, snapshots and watches.

use std::time::{Duration, Instant};

use shoal_api::object::{Kind, Object};
use shoal_api::v1::{
    Annotations, Network, NetworkSpec, Node, NodeSpec, Secret, SecretSpec, Service, ServiceSpec,
    StoreAction, StoreActionKind, StoreObject, StoreSnapshot, Task, TaskState, Transaction,
};

use crate::{
    ApplyError, ChangeAction, LookupError, RestoreError, SNAPSHOT_FORMAT, Store, WatchError,
    decode_snapshot, encode_snapshot,
};

fn annotations(name: &str) -> Option<Annotations> {
    Some(Annotations {
        name: name.to_owned(),
        ..Default::default()
    })
}

fn node(id: &str, name: &str) -> Node {
    Node {
        id: id.to_owned(),
        spec: Some(NodeSpec {
            annotations: annotations(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.to_owned(),
        spec: Some(ServiceSpec {
            annotations: annotations(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn network(id: &str, name: &str) -> Network {
    Network {
        id: id.to_owned(),
        spec: Some(NetworkSpec {
            annotations: annotations(name),
            driver: "overlay".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret(id: &str, name: &str) -> Secret {
    Secret {
        id: id.to_owned(),
        spec: Some(SecretSpec {
            annotations: annotations(name),
            data: b"hush".to_vec(),
        }),
        ..Default::default()
    }
}

fn task(id: &str, service_id: &str, slot: u64, node_id: &str, desired: TaskState) -> Task {
    Task {
        id: id.to_owned(),
        service_id: service_id.to_owned(),
        slot,
        node_id: node_id.to_owned(),
        desired_state: desired as i32,
        ..Default::default()
    }
}

fn action<T: Object>(kind: StoreActionKind, object: T) -> StoreAction {
    StoreAction {
        kind: kind as i32,
        object: Some(object.into_store_object()),
    }
}

fn create<T: Object>(object: T) -> StoreAction {
    action(StoreActionKind::Create, object)
}

fn update<T: Object>(object: T) -> StoreAction {
    action(StoreActionKind::Update, object)
}

fn remove<T: Object>(object: T) -> StoreAction {
    action(StoreActionKind::Remove, object)
}

fn txn(actions: Vec<StoreAction>) -> Transaction {
    Transaction { actions }
}

/// The object re-read from the store, ready to be modified and written back.
fn read<T: Object>(store: &Store, id: &str) -> T {
    store.view().get::<T>(id).cloned().expect("object stored")
}

fn ids(tasks: Vec<&Task>) -> Vec<&str> {
    tasks.into_iter().map(|t| t.id.as_str()).collect()
}

#[test]
fn create_update_remove() {
    let store = Store::new();
    let changes = store
        .apply(1, &txn(vec![create(node("n1", "web1"))]))
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].action, ChangeAction::Created);
    assert_eq!(changes[0].kind, Kind::Node);
    assert_eq!(changes[0].id(), "n1");
    assert_eq!(changes[0].get::<Node>().unwrap().version(), 1);

    let view = store.view();
    assert_eq!(view.index(), 1);
    assert_eq!(view.count::<Node>(), 1);
    assert_eq!(view.get::<Node>("n1").unwrap().version(), 1);
    assert_eq!(view.get_by_name::<Node>("web1").unwrap().id, "n1");

    let mut renamed = read::<Node>(&store, "n1");
    renamed.spec.as_mut().unwrap().annotations = annotations("web2");
    let changes = store.apply(2, &txn(vec![update(renamed)])).unwrap();
    assert_eq!(changes[0].action, ChangeAction::Updated);
    let after = store.view();
    assert_eq!(after.get::<Node>("n1").unwrap().version(), 2);
    assert!(after.get_by_name::<Node>("web1").is_none());
    assert_eq!(after.get_by_name::<Node>("web2").unwrap().id, "n1");
    // The earlier view is a snapshot: it still shows the old name and version.
    assert_eq!(view.get::<Node>("n1").unwrap().version(), 1);
    assert_eq!(view.get::<Node>("n1").unwrap().name(), "web1");

    let changes = store.apply(3, &txn(vec![remove(node("n1", ""))])).unwrap();
    assert_eq!(changes[0].action, ChangeAction::Removed);
    // A removal reports the last stored value, not what the remover sent.
    assert_eq!(changes[0].get::<Node>().unwrap().name(), "web2");
    assert_eq!(changes[0].get::<Node>().unwrap().version(), 2);
    let gone = store.view();
    assert!(gone.get::<Node>("n1").is_none());
    assert!(gone.get_by_name::<Node>("web2").is_none());
    assert_eq!(gone.count::<Node>(), 0);
    assert_eq!(store.applied_index(), 3);
}

#[test]
fn version_checks() {
    let store = Store::new();
    store.apply(1, &txn(vec![create(node("n1", "a"))])).unwrap();
    let stale = read::<Node>(&store, "n1");
    store.apply(2, &txn(vec![update(stale.clone())])).unwrap();

    let err = store
        .apply(3, &txn(vec![update(stale.clone())]))
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::VersionConflict {
            kind: Kind::Node,
            id: "n1".into(),
            expected: 1,
            actual: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "node n1 was changed concurrently: the write expected version 1, the store has 2"
    );

    // A removal with a version must match; with version 0 it removes whatever is there.
    let err = store.apply(4, &txn(vec![remove(stale)])).unwrap_err();
    assert!(matches!(err, ApplyError::VersionConflict { actual: 2, .. }));
    store.apply(5, &txn(vec![remove(node("n1", ""))])).unwrap();
    assert_eq!(store.view().count::<Node>(), 0);
}

#[test]
fn existence_checks() {
    let store = Store::new();
    store.apply(1, &txn(vec![create(node("n1", ""))])).unwrap();
    assert_eq!(
        store
            .apply(2, &txn(vec![create(node("n1", ""))]))
            .unwrap_err(),
        ApplyError::AlreadyExists {
            kind: Kind::Node,
            id: "n1".into()
        }
    );
    let err = store
        .apply(3, &txn(vec![update(node("zz", ""))]))
        .unwrap_err();
    assert_eq!(err.to_string(), "no such node: zz");
    assert!(matches!(
        store.apply(4, &txn(vec![remove(node("zz", ""))])),
        Err(ApplyError::NotFound { .. })
    ));
    // The same id under another kind is another object.
    store
        .apply(5, &txn(vec![create(service("n1", ""))]))
        .unwrap();
}

#[test]
fn failed_transaction_changes_nothing_but_the_index() {
    let store = Store::new();
    store
        .apply(
            1,
            &txn(vec![create(node("n1", "a")), create(service("s1", "web"))]),
        )
        .unwrap();
    let before = store.snapshot();
    let mut watcher = store.watch();

    let mut renamed = read::<Service>(&store, "s1");
    renamed.spec.as_mut().unwrap().annotations = annotations("api");
    let err = store
        .apply(
            2,
            &txn(vec![
                create(node("n2", "b")),
                update(renamed),
                create(task("t1", "s1", 1, "n1", TaskState::Running)),
                remove(node("n1", "")),
                // Last action fails: n1 is already gone within this very transaction.
                update(node("n1", "a")),
            ]),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        ApplyError::NotFound {
            kind: Kind::Node,
            ..
        }
    ));

    let after = store.snapshot();
    assert_eq!(after.objects, before.objects);
    let view = store.view();
    assert!(view.get::<Node>("n2").is_none());
    assert!(view.get_by_name::<Service>("web").is_some());
    assert!(view.get_by_name::<Service>("api").is_none());
    assert!(view.tasks_by_service("s1").is_empty());
    assert!(view.tasks_by_node("n1").is_empty());
    // The refusal was this entry's result: its index is consumed, and nobody is notified.
    assert_eq!(store.applied_index(), 2);
    assert_eq!(view.index(), 2);
    assert_eq!(watcher.try_next().unwrap(), None);
    store.assert_consistent();
}

#[test]
fn later_actions_see_earlier_ones() {
    let store = Store::new();
    let changes = store
        .apply(
            7,
            &txn(vec![
                create(node("n1", "a")),
                remove(node("n1", "")),
                create(node("n2", "a")),
            ]),
        )
        .unwrap();
    let actions: Vec<_> = changes.iter().map(|c| (c.action, c.id())).collect();
    assert_eq!(
        actions,
        [
            (ChangeAction::Created, "n1"),
            (ChangeAction::Removed, "n1"),
            (ChangeAction::Created, "n2")
        ]
    );
    assert_eq!(store.view().get_by_name::<Node>("a").unwrap().id, "n2");
}

#[test]
fn index_order_and_skip() {
    let store = Store::new();
    assert_eq!(
        store.apply(0, &txn(vec![])).unwrap_err(),
        ApplyError::StaleIndex {
            index: 0,
            applied: 0
        }
    );
    store.apply(5, &txn(vec![])).unwrap();
    // A second transaction of the same log entry (group commit) applies at the same index.
    store.apply(5, &txn(vec![create(node("n1", ""))])).unwrap();
    assert_eq!(
        store
            .view()
            .get::<Node>("n1")
            .unwrap()
            .meta
            .unwrap()
            .version,
        5
    );
    let stale = store
        .apply(4, &txn(vec![create(node("n9", ""))]))
        .unwrap_err();
    assert_eq!(
        stale.to_string(),
        "log index 4 is behind the applied index 5"
    );
    assert!(store.view().get::<Node>("n9").is_none());
    assert_eq!(store.applied_index(), 5);

    store.skip(6);
    assert_eq!(store.applied_index(), 6);
    store.skip(4);
    assert_eq!(store.applied_index(), 6);
    assert!(matches!(
        store.apply(3, &txn(vec![])),
        Err(ApplyError::StaleIndex { .. })
    ));
    assert_eq!(store.applied_index(), 6);
}

#[test]
fn malformed_actions_are_refused() {
    let store = Store::new();
    let cases = [
        (
            StoreAction {
                kind: StoreActionKind::Create as i32,
                object: None,
            },
            "malformed action 0: no object",
        ),
        (
            StoreAction {
                kind: StoreActionKind::Create as i32,
                object: Some(StoreObject { object: None }),
            },
            "malformed action 0: empty object",
        ),
        (
            action(StoreActionKind::Unspecified, node("n1", "")),
            "malformed action 0: unspecified action kind",
        ),
        (
            StoreAction {
                kind: 99,
                object: Some(node("n1", "").into_store_object()),
            },
            "malformed action 0: unknown action kind",
        ),
        (
            create(node("", "x")),
            "malformed action 0: object has no id",
        ),
        (remove(node("", "")), "malformed action 0: object has no id"),
    ];
    for (index, (bad, message)) in (1..).zip(cases) {
        let err = store.apply(index, &txn(vec![bad])).unwrap_err();
        assert!(matches!(err, ApplyError::Malformed { .. }), "{err:?}");
        assert_eq!(err.to_string(), message);
    }
    let err = store
        .apply(
            100,
            &txn(vec![create(node("n1", "")), create(node("", ""))]),
        )
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::Malformed {
            action: 1,
            reason: "object has no id"
        }
    );
    assert_eq!(store.view().count::<Node>(), 0);
}

#[test]
fn names_are_unique_within_a_kind() {
    let store = Store::new();
    store
        .apply(
            1,
            &txn(vec![create(node("n1", "web")), create(node("n2", "db"))]),
        )
        .unwrap();

    let err = store
        .apply(2, &txn(vec![create(node("n3", "web"))]))
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::NameConflict {
            kind: Kind::Node,
            name: "web".into(),
            id: "n1".into()
        }
    );
    assert_eq!(err.to_string(), "node name \"web\" is already in use by n1");

    // Within one transaction too.
    assert!(matches!(
        store.apply(
            3,
            &txn(vec![
                create(node("n3", "cache")),
                create(node("n4", "cache"))
            ])
        ),
        Err(ApplyError::NameConflict { .. })
    ));

    // Renaming onto a taken name is refused; keeping one's own name is fine.
    let mut n2 = read::<Node>(&store, "n2");
    n2.spec.as_mut().unwrap().annotations = annotations("web");
    assert!(matches!(
        store.apply(4, &txn(vec![update(n2)])),
        Err(ApplyError::NameConflict { .. })
    ));
    let same = read::<Node>(&store, "n1");
    store.apply(5, &txn(vec![update(same)])).unwrap();

    // A rename frees the old name, within the same transaction as well.
    let mut n1 = read::<Node>(&store, "n1");
    n1.spec.as_mut().unwrap().annotations = annotations("frontend");
    store
        .apply(6, &txn(vec![update(n1), create(node("n5", "web"))]))
        .unwrap();
    let view = store.view();
    assert_eq!(view.get_by_name::<Node>("web").unwrap().id, "n5");
    assert_eq!(view.get_by_name::<Node>("frontend").unwrap().id, "n1");

    // Names are per kind; unnamed objects and tasks never conflict.
    store
        .apply(
            7,
            &txn(vec![
                create(service("s1", "web")),
                create(network("w1", "web")),
                create(secret("x1", "web")),
                create(node("n6", "")),
                create(node("n7", "")),
                create(task("t1", "s1", 1, "", TaskState::Running)),
                create(task("t2", "s1", 1, "", TaskState::Running)),
            ]),
        )
        .unwrap();
    assert!(store.view().get_by_name::<Node>("").is_none());
}

#[test]
fn task_indexes_follow_every_write() {
    let store = Store::new();
    store
        .apply(
            1,
            &txn(vec![
                create(task("t1", "s1", 1, "n1", TaskState::Running)),
                create(task("t2", "s1", 2, "n1", TaskState::Running)),
                create(task("t3", "s2", 0, "n2", TaskState::Running)),
                create(task("t4", "s1", 1, "", TaskState::Shutdown)),
            ]),
        )
        .unwrap();
    let view = store.view();
    assert_eq!(ids(view.tasks_by_service("s1")), ["t1", "t2", "t4"]);
    assert_eq!(ids(view.tasks_by_node("n1")), ["t1", "t2"]);
    assert_eq!(ids(view.tasks_by_node("")), ["t4"]);
    assert_eq!(
        ids(view.tasks_by_desired_state(TaskState::Running)),
        ["t1", "t2", "t3"]
    );
    assert_eq!(ids(view.tasks_by_slot("s1", 1)), ["t1", "t4"]);
    assert_eq!(ids(view.tasks_by_slot("s2", 0)), ["t3"]);
    assert_eq!(view.slots_of_service("s1"), [1, 2]);

    // t1 moves node, service, slot and desired state at once.
    let mut moved = read::<Task>(&store, "t1");
    moved.node_id = "n2".into();
    moved.service_id = "s2".into();
    moved.slot = 3;
    moved.desired_state = TaskState::Shutdown as i32;
    // A status-only update must leave t2's entries where they are.
    let mut reported = read::<Task>(&store, "t2");
    reported.status = Some(Default::default());
    store
        .apply(2, &txn(vec![update(moved), update(reported)]))
        .unwrap();
    let view = store.view();
    assert_eq!(ids(view.tasks_by_service("s1")), ["t2", "t4"]);
    assert_eq!(ids(view.tasks_by_service("s2")), ["t1", "t3"]);
    assert_eq!(ids(view.tasks_by_node("n1")), ["t2"]);
    assert_eq!(ids(view.tasks_by_node("n2")), ["t1", "t3"]);
    assert_eq!(
        ids(view.tasks_by_desired_state(TaskState::Running)),
        ["t2", "t3"]
    );
    assert_eq!(
        ids(view.tasks_by_desired_state(TaskState::Shutdown)),
        ["t1", "t4"]
    );
    assert_eq!(ids(view.tasks_by_slot("s1", 1)), ["t4"]);
    assert_eq!(ids(view.tasks_by_slot("s2", 3)), ["t1"]);
    assert_eq!(view.slots_of_service("s2"), [0, 3]);
    // The indexes hand out the current value, not the one at indexing time.
    assert_eq!(view.tasks_by_node("n1")[0].version(), 2);

    store
        .apply(
            3,
            &txn(vec![
                remove(task("t1", "", 0, "", TaskState::New)),
                remove(task("t2", "", 0, "", TaskState::New)),
                remove(task("t4", "", 0, "", TaskState::New)),
            ]),
        )
        .unwrap();
    let view = store.view();
    assert!(view.tasks_by_service("s1").is_empty());
    assert!(view.tasks_by_node("n1").is_empty());
    assert!(view.tasks_by_node("").is_empty());
    assert!(view.tasks_by_desired_state(TaskState::Shutdown).is_empty());
    assert!(view.tasks_by_slot("s1", 1).is_empty());
    assert!(view.slots_of_service("s1").is_empty());
    assert_eq!(view.slots_of_service("s2"), [0]);
    assert_eq!(ids(view.tasks_by_node("n2")), ["t3"]);
    store.assert_consistent();
}

#[test]
fn lookup_by_id_name_and_prefix() {
    let store = Store::new();
    store
        .apply(
            1,
            &txn(vec![
                create(node("abc111", "web1")),
                create(node("abd222", "web2")),
                create(node("xyz333", "abc111x")),
                // Named like another node's id: the id wins.
                create(node("qqq444", "abd222")),
            ]),
        )
        .unwrap();
    let view = store.view();
    assert_eq!(view.lookup::<Node>("abc111").unwrap().id, "abc111");
    assert_eq!(view.lookup::<Node>("abd222").unwrap().id, "abd222");
    assert_eq!(view.lookup::<Node>("web2").unwrap().id, "abd222");
    assert_eq!(view.lookup::<Node>("abc").unwrap().id, "abc111");
    assert_eq!(view.lookup::<Node>("x").unwrap().id, "xyz333");
    // An exact name beats a prefix match.
    assert_eq!(view.lookup::<Node>("abc111x").unwrap().id, "xyz333");

    let ambiguous = view.lookup::<Node>("ab").unwrap_err();
    assert_eq!(
        ambiguous,
        LookupError::Ambiguous {
            kind: Kind::Node,
            reference: "ab".into(),
            count: 2
        }
    );
    assert_eq!(
        ambiguous.to_string(),
        "node reference \"ab\" is ambiguous: it matches 2 nodes"
    );
    let missing = view.lookup::<Node>("web3").unwrap_err();
    assert_eq!(missing.to_string(), "no such node: web3");
    assert!(matches!(
        view.lookup::<Node>(""),
        Err(LookupError::NotFound { .. })
    ));
    // Kinds do not leak into each other.
    assert!(view.lookup::<Service>("web1").is_err());
}

fn populated_store() -> Store {
    let store = Store::new();
    store
        .apply(
            3,
            &txn(vec![
                create(node("n2", "beta")),
                create(node("n1", "alpha")),
                create(service("s1", "web")),
                create(task("t2", "s1", 2, "n2", TaskState::Running)),
                create(task("t1", "s1", 1, "n1", TaskState::Running)),
                create(network("w1", "ingress")),
                create(secret("x1", "pw")),
            ]),
        )
        .unwrap();
    let mut t1 = read::<Task>(&store, "t1");
    t1.desired_state = TaskState::Shutdown as i32;
    store.apply(8, &txn(vec![update(t1)])).unwrap();
    store
}

#[test]
fn snapshot_round_trip() {
    let store = populated_store();
    let snapshot = store.snapshot();
    assert_eq!(snapshot.format, SNAPSHOT_FORMAT);
    assert_eq!(snapshot.index, 8);
    let order: Vec<_> = snapshot
        .objects
        .iter()
        .map(|o| (o.kind().unwrap(), o.id().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            (Kind::Node, "n1"),
            (Kind::Node, "n2"),
            (Kind::Service, "s1"),
            (Kind::Task, "t1"),
            (Kind::Task, "t2"),
            (Kind::Network, "w1"),
            (Kind::Secret, "x1"),
        ]
    );

    let bytes = encode_snapshot(&snapshot);
    let copy = Store::new();
    copy.restore(decode_snapshot(&bytes).unwrap()).unwrap();
    assert_eq!(copy.applied_index(), 8);
    assert_eq!(copy.snapshot(), snapshot);
    assert_eq!(encode_snapshot(&copy.snapshot()), bytes);

    // The indexes are rebuilt, not just the tables.
    let view = copy.view();
    assert_eq!(view.get_by_name::<Node>("beta").unwrap().id, "n2");
    assert_eq!(ids(view.tasks_by_node("n1")), ["t1"]);
    assert_eq!(
        ids(view.tasks_by_desired_state(TaskState::Shutdown)),
        ["t1"]
    );
    assert_eq!(ids(view.tasks_by_slot("s1", 2)), ["t2"]);
    assert_eq!(view.get::<Task>("t1").unwrap().version(), 8);

    // Writes continue from the restored index, with the restored versions.
    let t2 = view.get::<Task>("t2").cloned().unwrap();
    copy.apply(9, &txn(vec![update(t2)])).unwrap();
}

#[test]
fn restore_refuses_bad_snapshots() {
    let good = populated_store().snapshot();
    let store = Store::new();
    store
        .apply(1, &txn(vec![create(node("keep", "me"))]))
        .unwrap();
    let before = store.snapshot();

    let with_objects = |objects: Vec<StoreObject>| StoreSnapshot {
        objects,
        ..good.clone()
    };
    let cases: Vec<(StoreSnapshot, RestoreError)> = vec![
        (
            StoreSnapshot {
                format: 2,
                ..good.clone()
            },
            RestoreError::UnknownFormat {
                format: 2,
                known: 1,
            },
        ),
        (
            with_objects(vec![
                node("n1", "").into_store_object(),
                StoreObject { object: None },
            ]),
            RestoreError::EmptyObject { position: 1 },
        ),
        (
            with_objects(vec![secret("", "pw").into_store_object()]),
            RestoreError::MissingId {
                kind: Kind::Secret,
                position: 0,
            },
        ),
        (
            with_objects(vec![
                node("n1", "a").into_store_object(),
                node("n1", "b").into_store_object(),
            ]),
            RestoreError::DuplicateId {
                kind: Kind::Node,
                id: "n1".into(),
            },
        ),
        (
            with_objects(vec![
                service("s1", "web").into_store_object(),
                service("s2", "web").into_store_object(),
            ]),
            RestoreError::DuplicateName {
                kind: Kind::Service,
                name: "web".into(),
            },
        ),
    ];
    for (snapshot, expected) in cases {
        assert_eq!(store.restore(snapshot).unwrap_err(), expected);
        assert_eq!(store.snapshot(), before);
    }
    assert!(matches!(
        decode_snapshot(b"\xff\xff\xff"),
        Err(RestoreError::Decode(_))
    ));
    assert_eq!(
        RestoreError::DuplicateName {
            kind: Kind::Service,
            name: "web".into()
        }
        .to_string(),
        "snapshot holds two services named \"web\""
    );
}

#[tokio::test]
async fn restore_resets_watchers() {
    let store = Store::new();
    let mut watcher = store.watch();
    store.apply(1, &txn(vec![create(node("old", ""))])).unwrap();
    store.restore(populated_store().snapshot()).unwrap();
    // Events before the reset are still delivered, then the reset, for good.
    assert_eq!(watcher.next().await.unwrap().index, 1);
    assert_eq!(watcher.next().await.unwrap_err(), WatchError::Reset);
    store.skip(9);
    store.apply(10, &txn(vec![create(node("n9", ""))])).unwrap();
    assert_eq!(watcher.next().await.unwrap_err(), WatchError::Reset);

    let (view, mut fresh) = store.view_and_watch();
    assert_eq!(view.index(), 10);
    assert!(view.get::<Node>("old").is_none());
    assert_eq!(view.get::<Node>("n1").unwrap().name(), "alpha");
    store
        .apply(11, &txn(vec![create(node("n10", ""))]))
        .unwrap();
    assert_eq!(fresh.next().await.unwrap().index, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_event_after_its_view_in_order() {
    const TOTAL: u64 = 1_000;
    let store = Store::new();
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            for index in 1..=TOTAL {
                let id = format!("t{index:05}");
                let mut actions = vec![create(task(&id, "s1", index, "", TaskState::Running))];
                if index > 1 {
                    // Also touch the previous task, so that events carry several changes.
                    let previous = format!("t{:05}", index - 1);
                    let mut t = read::<Task>(&store, &previous);
                    t.node_id = "n1".into();
                    actions.push(update(t));
                }
                store.apply(index, &txn(actions)).unwrap();
                if index % 50 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };

    while store.applied_index() < TOTAL / 3 {
        tokio::task::yield_now().await;
    }
    let (view, mut watcher) = store.view_and_watch();
    let start = view.index();
    assert!(start >= TOTAL / 3);
    // The view is consistent: exactly the tasks of the transactions up to its index.
    assert_eq!(view.count::<Task>() as u64, start);

    let mut expected = start + 1;
    while expected <= TOTAL {
        let event = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("event in time")
            .unwrap();
        assert_eq!(event.index, expected, "events arrive in order without gaps");
        let created: Vec<_> = event.of::<Task>().collect();
        assert_eq!(created[0].0, ChangeAction::Created);
        assert_eq!(created[0].1.slot, expected);
        assert_eq!(created[0].1.version(), expected);
        expected += 1;
    }
    writer.await.unwrap();
    assert_eq!(watcher.try_next().unwrap(), None);
    assert_eq!(store.view().count::<Task>() as u64, TOTAL);
}

#[tokio::test]
async fn lagging_watcher_is_told() {
    let store = Store::with_watch_capacity(4);
    let (_, mut slow) = store.view_and_watch();
    for index in 1..=10 {
        store
            .apply(index, &txn(vec![create(node(&format!("n{index}"), ""))]))
            .unwrap();
    }
    assert_eq!(slow.next().await.unwrap_err(), WatchError::Lagged);
    // Never a silent resume after the gap.
    assert_eq!(slow.next().await.unwrap_err(), WatchError::Lagged);
    assert_eq!(slow.try_next().unwrap_err(), WatchError::Lagged);

    let (view, mut fresh) = store.view_and_watch();
    assert_eq!(view.count::<Node>(), 10);
    store
        .apply(11, &txn(vec![create(node("n11", ""))]))
        .unwrap();
    assert_eq!(fresh.next().await.unwrap().index, 11);
}

#[tokio::test]
async fn watch_filters_by_kind_and_ends_when_the_store_goes() {
    let store = Store::new();
    let mut tasks = store.watch().only(&[Kind::Task]);
    let mut all = store.watch();
    store.apply(1, &txn(vec![create(node("n1", ""))])).unwrap();
    store
        .apply(
            2,
            &txn(vec![
                create(node("n2", "")),
                create(task("t1", "s1", 1, "n2", TaskState::Running)),
            ]),
        )
        .unwrap();
    store.apply(3, &txn(vec![])).unwrap();
    drop(store);

    let event = tasks.next().await.unwrap();
    assert_eq!(event.index, 2);
    assert_eq!(event.changes.len(), 1);
    assert_eq!(event.changes[0].kind, Kind::Task);
    assert_eq!(tasks.next().await.unwrap_err(), WatchError::Closed);

    let indexes = [
        all.next().await.unwrap(),
        all.next().await.unwrap(),
        all.next().await.unwrap(),
    ]
    .map(|e| (e.index, e.changes.len()));
    assert_eq!(indexes, [(1, 1), (2, 2), (3, 0)]);
    assert_eq!(all.next().await.unwrap_err(), WatchError::Closed);
}

#[test]
fn hundred_thousand_tasks_apply_quickly() {
    const BATCH: usize = 1_000;
    const BATCHES: usize = 100;
    let store = Store::new();
    let (_, mut watcher) = store.view_and_watch();
    let batches: Vec<Transaction> = (0..BATCHES)
        .map(|b| {
            txn((0..BATCH)
                .map(|i| {
                    let n = b * BATCH + i;
                    // Spread ids over the key space the way random ids are.
                    let id = shoal_api::id::encode_base36(
                        (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                    );
                    create(task(
                        &id,
                        &format!("s{}", n % 10),
                        (n / 10) as u64 + 1,
                        &format!("n{}", n % 1_000),
                        TaskState::Running,
                    ))
                })
                .collect())
        })
        .collect();

    let started = Instant::now();
    for (index, batch) in (1..).zip(&batches) {
        store.apply(index, batch).unwrap();
        // Keep a reader's view alive across writes, as the manager loops do.
        let _view = store.view();
        assert!(watcher.try_next().unwrap().is_some());
    }
    let created = started.elapsed();
    println!("created 100,000 tasks in batches of 1,000 in {created:?}");

    // Then the status flood: every task reported once, again in batches of 1,000.
    let view = store.view();
    let reports: Vec<Transaction> = view
        .list::<Task>()
        .chunks(BATCH)
        .map(|chunk| {
            txn(chunk
                .iter()
                .map(|task| {
                    let mut task = (*task).clone();
                    task.status = Some(Default::default());
                    update(task)
                })
                .collect())
        })
        .collect();
    drop(view);
    let started = Instant::now();
    for (index, batch) in (BATCHES as u64 + 1..).zip(&reports) {
        store.apply(index, batch).unwrap();
        assert!(watcher.try_next().unwrap().is_some());
    }
    let updated = started.elapsed();
    println!("updated 100,000 tasks in batches of 1,000 in {updated:?}");

    let view = store.view();
    assert_eq!(view.count::<Task>(), BATCH * BATCHES);
    assert_eq!(view.tasks_by_service("s3").len(), 10_000);
    assert_eq!(view.tasks_by_node("n999").len(), 100);
    assert_eq!(view.tasks_by_slot("s3", 1).len(), 1);
    // Generous for an unoptimised test build on a small, shared machine; the point is "not
    // quadratic".
    let bound = Duration::from_secs(if cfg!(debug_assertions) { 20 } else { 5 });
    assert!(created < bound, "creating took {created:?}");
    assert!(updated < bound, "updating took {updated:?}");
}

/// A small deterministic generator, so that the mixed workload below is the same every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Random mixes of creates, moves, renames and removals, some bound to fail: after each
/// transaction the indexes must equal a rebuild, a refused transaction must change nothing,
/// and a replica fed the same log must hold the same bytes.
#[test]
fn mixed_workload_keeps_indexes_exact() {
    let store = Store::new();
    let replica = Store::new();
    let mut rng = Lcg(42);
    let mut refused = 0;
    for index in 1..=400 {
        let view = store.view();
        let actions = (0..1 + rng.below(6))
            .map(|_| {
                let id = format!("t{}", rng.below(40));
                let desired = if rng.below(2) == 0 {
                    TaskState::Running
                } else {
                    TaskState::Shutdown
                };
                let fresh = task(
                    &id,
                    &format!("s{}", rng.below(3)),
                    rng.below(4),
                    &format!("n{}", rng.below(5)),
                    desired,
                );
                match (rng.below(4), view.get::<Task>(&id)) {
                    (0, Some(current)) => remove(current.clone()),
                    (1, _) => {
                        let name = format!("svc{}", rng.below(6));
                        let id = format!("s{}", rng.below(8));
                        match view.get::<Service>(&id) {
                            // A rename, possibly onto a taken name.
                            Some(current) => {
                                let mut renamed = current.clone();
                                renamed.spec = service(&id, &name).spec;
                                update(renamed)
                            }
                            None => create(service(&id, &name)),
                        }
                    }
                    (_, Some(current)) => {
                        let mut moved = fresh;
                        moved.meta = current.meta;
                        // Now and then carry a stale version: a conflict.
                        if rng.below(10) == 0 {
                            moved.meta_mut().version += 1;
                        }
                        update(moved)
                    }
                    (_, None) => create(fresh),
                }
            })
            .collect();
        let transaction = txn(actions);
        let before = store.snapshot();
        let result = store.apply(index, &transaction);
        let _ = replica.apply(index, &transaction);
        if result.is_err() {
            refused += 1;
            assert_eq!(store.snapshot().objects, before.objects);
        }
        store.assert_consistent();
    }
    let view = store.view();
    assert!(refused > 20, "the workload exercised refusals ({refused})");
    assert!(
        refused < 300,
        "the workload exercised successes ({refused})"
    );
    assert!(view.count::<Task>() > 10);
    assert!(view.count::<Service>() > 3);
    assert_eq!(
        encode_snapshot(&store.snapshot()),
        encode_snapshot(&replica.snapshot())
    );
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Store>();
    send_sync::<crate::View>();
    send_sync::<crate::Event>();
    send::<crate::Watcher>();
}
