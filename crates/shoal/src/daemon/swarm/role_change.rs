//! A node becoming what its certificate says: a promoted worker starts a manager (empty log,
//! cluster listener, raft join) and a demoted manager stops its own, with `state.json` as the
//! record, written in an order that a kill -9 at any point resumes from:
//!
//! - promotion: the raft id goes into `state.json` (role still worker), then the manager
//!   certificate onto disk, then the log and listener start and the node joins raft (a join is
//!   idempotent), and only then does `state.json` say manager. A restart in between is a worker
//!   holding a manager certificate, which takes up the promotion again, with the raft data it
//!   made, unless that data never finished opening (`raft.opened` names the raft id whose log
//!   opened once): a kill -9 while the log's files are first created leaves them unreadable,
//!   and nothing can have reached a log that never opened.
//! - demotion: the leader takes the manager out of raft before the store calls it a worker, so
//!   a worker certificate means it is out. The node stops its log and listener, `state.json`
//!   says worker, then the raft data is deleted. A restart in between finds a manager state with
//!   a worker certificate, or a worker with raft data left: [`settle_on_start`] finishes both.

use std::time::Duration;

use anyhow::{Context, bail};
use shoal_api::v1::raft_membership_client::RaftMembershipClient;
use shoal_api::v1::{NodeRole, RaftJoinRequest, RenewNodeCertificateResponse};
use shoal_pki::{NodeCertificates, NodeIdentity, Role};
use shoal_store::Store;

use super::super::data_root::{DataRoot, SwarmState};
use super::renewal::Session;
use super::{Active, Membership, RAFT_JOIN_TIMEOUT, Tls, cluster, remote_error};

/// The state of the swarm membership this agent serves: `None` once the node has left (or left
/// and joined again as another node).
pub(super) async fn current_state(membership: &Membership, node_id: &str) -> Option<SwarmState> {
    let active = membership.active.lock().await;
    active
        .as_ref()
        .filter(|a| a.state.node_id == node_id)
        .map(|a| a.state.clone())
}

/// Stores a renewed certificate (under the membership lock, so a concurrent `swarm leave`
/// cannot have its directory written back). A promotion's raft id is recorded first.
pub(super) async fn keep_renewed(
    membership: &Membership,
    certs: &NodeCertificates,
    answer: &RenewNodeCertificateResponse,
    node_id: &str,
) -> anyhow::Result<()> {
    let mut guard = membership.active.lock().await;
    let active = guard
        .as_mut()
        .filter(|a| a.state.node_id == node_id)
        .context("this node left the swarm while its certificate was renewed")?;
    let promoted = answer.role == NodeRole::Manager as i32 && active.state.role != "manager";
    if promoted
        && (active.state.raft_id != answer.raft_id
            || active.state.advertise_addr != answer.advertise_addr)
    {
        let mut state = active.state.clone();
        state.raft_id = answer.raft_id;
        state.advertise_addr = answer.advertise_addr.clone();
        membership.data_root.save_state(&state)?;
        active.state = state;
    }
    // Through the vault: it keeps the key file's protection (data keys, autolock seal).
    let vault = membership.data_root.vault();
    vault.save(certs)?;
    // A promotion into an autolocked swarm is sealed before the manager's log exists.
    if promoted && !answer.unlock_key.is_empty() {
        let key = shoal_pki::UnlockKey::from_bytes(&answer.unlock_key)?;
        vault.set_unlock_key(Some(key), answer.unlock_key_version)?;
    }
    Ok(())
}

/// Starts or stops this node's manager so that it runs as `role`.
pub(super) async fn become_role(
    membership: &Membership,
    tls: &Tls,
    session: &Session,
    role: Role,
) -> anyhow::Result<()> {
    let mut guard = membership.active.lock().await;
    let node_id = tls.identity.identity().node_id;
    let Some(active) = guard.as_mut().filter(|a| a.state.node_id == node_id) else {
        return Ok(());
    };
    match role {
        Role::Manager if active.state.role != "manager" => {
            promote(membership, active, tls, session).await
        }
        Role::Worker if active.state.role == "manager" => demote(membership, active).await,
        _ => Ok(()),
    }
}

async fn promote(
    membership: &Membership,
    active: &mut Active,
    tls: &Tls,
    session: &Session,
) -> anyhow::Result<()> {
    let mut state = active.state.clone();
    if state.raft_id == 0 {
        bail!("no raft id is recorded for this promotion yet");
    }
    let listen: std::net::SocketAddr = state
        .listen_addr
        .parse()
        .with_context(|| format!("invalid listen address {:?}", state.listen_addr))?;
    let tcp = cluster::bind(listen).await?;
    tracing::info!(raft_id = state.raft_id, advertise = %state.advertise_addr, "promoted: starting this node's manager");
    let data_root = &membership.data_root;
    if opened_raft_id(data_root) != Some(state.raft_id) {
        remove_raft_data(data_root)?;
    }
    let store = Store::new();
    let log = membership.open_log(&state, &store, tls).await?;
    if let Err(error) = mark_opened(data_root, state.raft_id) {
        log.shutdown().await;
        return Err(error);
    }
    let manager = membership.manager(&state, store.clone(), log.clone(), tls);
    let (listener, tasks) = membership.serve_manager(manager.clone(), tls, Some(tcp), None);
    let joined = async {
        join_raft(tls, session, &state, &store).await?;
        state.role = "manager".to_owned();
        // The record: from here a restart resumes a manager.
        membership.data_root.save_state(&state)
    }
    .await;
    match joined {
        Ok(()) => {
            active.manager = Some(manager);
            active.listener = listener;
            active.tasks.extend(tasks);
            active.state = state;
            tracing::info!(node_id = %active.state.node_id, "this node is now a manager");
            Ok(())
        }
        Err(error) => {
            // Back to a worker in memory; the raft data is kept, so the next attempt takes up
            // the membership this one may have reached.
            for task in tasks {
                task.abort();
            }
            membership.slot.set(None);
            membership.slot.set_worker(true);
            log.shutdown().await;
            if let Some(listener) = listener {
                listener.stop().await;
            }
            Err(error)
        }
    }
}

/// Asks the leader, through any other manager, to add this node to raft, then waits until this
/// node's log has applied its own Node (it has caught up).
async fn join_raft(
    tls: &Tls,
    session: &Session,
    state: &SwarmState,
    store: &Store,
) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let candidates: Vec<String> = session
        .managers()
        .into_iter()
        .chain(state.managers.iter().cloned())
        .filter(|m| !m.is_empty() && *m != state.advertise_addr && seen.insert(m.clone()))
        .collect();
    // One bound for the whole join, whichever managers it goes through: the membership lock
    // is held meanwhile.
    let deadline = tokio::time::Instant::now() + RAFT_JOIN_TIMEOUT;
    let mut last = None;
    for remote in &candidates {
        let channel = match cluster::channel(remote, tls.client.clone()) {
            Ok(channel) => channel,
            Err(error) => {
                last = Some(error);
                continue;
            }
        };
        let mut client = RaftMembershipClient::new(channel);
        let call = client.join(RaftJoinRequest {});
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(_)) => {
                last = None;
                break;
            }
            Ok(Err(status)) => last = Some(remote_error(remote, status).to_string()),
            Err(_) => {
                bail!("the swarm did not add this manager to raft within {RAFT_JOIN_TIMEOUT:?}")
            }
        }
    }
    match last {
        None if !candidates.is_empty() => {}
        None => bail!("no other manager is known to join raft through"),
        Some(last) => bail!("cannot join raft: {last}"),
    }
    while store
        .view()
        .get::<shoal_api::v1::Node>(&state.node_id)
        .is_none()
    {
        if tokio::time::Instant::now() >= deadline {
            bail!("this manager did not catch up with the swarm's log in time");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn demote(membership: &Membership, active: &mut Active) -> anyhow::Result<()> {
    tracing::info!(node_id = %active.state.node_id, "demoted: stopping this node's manager");
    for task in active.tasks.drain(..) {
        task.abort();
    }
    membership.slot.set(None);
    membership.slot.set_worker(true);
    if let Some(manager) = active.manager.take() {
        manager.log().shutdown().await;
    }
    if let Some(listener) = active.listener.take() {
        listener.stop().await;
    }
    let mut state = active.state.clone();
    state.role = "worker".to_owned();
    state.raft_id = 0;
    membership.data_root.save_state(&state)?;
    active.state = state;
    remove_raft_data(&membership.data_root)?;
    tracing::info!(node_id = %active.state.node_id, "this node is now a worker");
    Ok(())
}

/// Beside the raft directory: the raft id whose log a promotion opened there.
fn opened_marker(data_root: &DataRoot) -> std::path::PathBuf {
    data_root.swarm_dir().join("raft.opened")
}

fn opened_raft_id(data_root: &DataRoot) -> Option<u64> {
    std::fs::read_to_string(opened_marker(data_root))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn mark_opened(data_root: &DataRoot, raft_id: u64) -> anyhow::Result<()> {
    super::super::data_root::write_atomically(
        &opened_marker(data_root),
        format!("{raft_id}\n").as_bytes(),
    )
}

/// Deletes the raft data and its marker (the data first: a marker never outlives it).
fn remove_raft_data(data_root: &DataRoot) -> anyhow::Result<()> {
    let dir = data_root.raft_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
    let marker = opened_marker(data_root);
    match std::fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", marker.display())),
    }
}

/// At start, finishes a demotion a restart interrupted: a manager state with a worker
/// certificate becomes a worker state, and a worker's leftover raft data is deleted. (A worker
/// holding a manager certificate is a promotion in progress: the renewal agent takes it up.)
pub(super) fn settle_on_start(
    data_root: &DataRoot,
    mut state: SwarmState,
    certificate: &NodeIdentity,
) -> anyhow::Result<SwarmState> {
    if certificate.role != Role::Worker {
        return Ok(state);
    }
    if state.role == "manager" {
        tracing::warn!(node_id = %state.node_id, "finishing a demotion a restart interrupted");
        state.role = "worker".to_owned();
        state.raft_id = 0;
        data_root.save_state(&state)?;
    }
    if data_root.raft_dir().exists() || opened_raft_id(data_root).is_some() {
        tracing::info!(dir = %data_root.raft_dir().display(), "removing the raft data of a demoted manager");
        remove_raft_data(data_root)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::super::data_root::STATE_FORMAT;
    use super::*;

    fn state(role: &str, raft_id: u64) -> SwarmState {
        SwarmState {
            format: STATE_FORMAT,
            complete: true,
            node_id: "n".into(),
            cluster_id: "c".into(),
            raft_id,
            role: role.into(),
            advertise_addr: "10.0.0.1:2377".into(),
            listen_addr: "0.0.0.0:2377".into(),
            managers: Vec::new(),
        }
    }

    fn certificate(role: Role) -> NodeIdentity {
        NodeIdentity {
            node_id: "n".into(),
            role,
            cluster_id: "c".into(),
            serial_hex: "01".into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::now(),
        }
    }

    /// A data root holding `state` and some raft data.
    fn root_with(state: &SwarmState) -> (tempfile::TempDir, DataRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::open(dir.path()).unwrap();
        root.save_state(state).unwrap();
        std::fs::create_dir_all(root.raft_dir()).unwrap();
        std::fs::write(root.raft_dir().join("raft.redb"), b"log").unwrap();
        mark_opened(&root, state.raft_id).unwrap();
        (dir, root)
    }

    #[test]
    fn a_manager_restarted_with_a_worker_certificate_finishes_its_demotion() {
        let (_dir, root) = root_with(&state("manager", 4));
        let settled =
            settle_on_start(&root, state("manager", 4), &certificate(Role::Worker)).unwrap();
        assert_eq!(settled, state("worker", 0));
        assert_eq!(root.load_state().unwrap(), Some(state("worker", 0)));
        assert!(!root.raft_dir().exists());
        assert_eq!(opened_raft_id(&root), None);
    }

    #[test]
    fn a_worker_drops_raft_data_a_demotion_left() {
        let (_dir, root) = root_with(&state("worker", 0));
        let settled =
            settle_on_start(&root, state("worker", 0), &certificate(Role::Worker)).unwrap();
        assert_eq!(settled, state("worker", 0));
        assert!(!root.raft_dir().exists());
    }

    #[test]
    fn a_promotion_in_progress_is_left_to_the_agent() {
        // A worker state with a manager certificate: the raft id is recorded, the log may have
        // joined already. Nothing is touched; the agent takes the promotion up.
        let (_dir, root) = root_with(&state("worker", 7));
        let settled =
            settle_on_start(&root, state("worker", 7), &certificate(Role::Manager)).unwrap();
        assert_eq!(settled, state("worker", 7));
        assert!(root.raft_dir().join("raft.redb").exists());
        assert_eq!(opened_raft_id(&root), Some(7));
        // And a manager that is one stays one.
        let (_dir, root) = root_with(&state("manager", 7));
        let settled =
            settle_on_start(&root, state("manager", 7), &certificate(Role::Manager)).unwrap();
        assert_eq!(settled, state("manager", 7));
        assert!(root.raft_dir().exists());
    }
}
