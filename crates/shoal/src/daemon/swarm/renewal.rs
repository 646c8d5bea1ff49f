//! This node's certificate over time: renewal at a random point in 50–80% of its life, at once
//! when the swarm's role for the node differs from its certificate's, and with back-off while no
//! manager answers. A renewed key and certificate are written to disk first, then swapped into
//! the identity slot every TLS configuration of the node reads (no restart, open connections
//! kept); after that the node becomes what its certificate says (see `role_change`).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use shoal_api::v1::node_ca_client::NodeCaClient;
use shoal_api::v1::{NodeRole, RenewNodeCertificateRequest, RenewNodeCertificateResponse};
use shoal_pki::{CLOCK_SKEW_BACKDATE, NodeCertificates, NodeIdentity, NodeKey, Role};
use tokio::sync::watch;
use tonic::Code;

use super::{Membership, Tls, cluster, role_change};

/// First wait after a failed renewal or role change; doubled at each failure up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// Longest single wait for a renewal: the wall clock is looked at again after it, so a clock
/// that jumped (or a host that slept) does not leave the renewal weeks late.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Bound on one renewal call to one manager.
const RENEW_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node's heartbeats learn from the managers, shared with the renewal agent.
pub(super) struct Session {
    /// The role the swarm holds for this node, once a manager has said it.
    role: watch::Sender<Option<Role>>,
    /// Managers to ask, the one that last answered first.
    managers: std::sync::Mutex<Vec<String>>,
}

impl Session {
    pub(super) fn new(managers: Vec<String>) -> Arc<Session> {
        Arc::new(Session {
            role: watch::Sender::new(None),
            managers: std::sync::Mutex::new(managers),
        })
    }

    /// Records a heartbeat answer: the role the swarm holds for this node (when the manager
    /// said it) and the managers known now.
    pub(super) fn heard(&self, role: Option<i32>, managers: &[String]) {
        if let Some(role) = role.and_then(|r| NodeRole::try_from(r).ok()) {
            self.set_role(role_of(role));
        }
        *self.managers.lock().unwrap_or_else(|p| p.into_inner()) = managers.to_vec();
    }

    /// Follows the role the swarm holds for this node.
    pub(super) fn watch_role(&self) -> watch::Receiver<Option<Role>> {
        self.role.subscribe()
    }

    fn set_role(&self, role: Role) {
        // Only a change wakes the agent: heartbeats repeat the same role every period.
        self.role.send_if_modified(|current| {
            let changed = *current != Some(role);
            *current = Some(role);
            changed
        });
    }

    pub(super) fn managers(&self) -> Vec<String> {
        self.managers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn role_of(role: NodeRole) -> Role {
    match role {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    }
}

/// What this node runs as, according to its state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Local {
    pub(super) role: Role,
    /// 0 until the CA has given this node a raft id.
    pub(super) raft_id: u64,
}

/// Why a renewal is asked for (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// 50–80% of the certificate's life has passed.
    Due,
    /// The swarm holds another role for this node than its certificate says.
    RoleChanged,
    /// A manager certificate without the raft id that goes with it (an interrupted promotion
    /// whose answer was lost): the CA gives it again.
    RaftIdMissing,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Due => "the certificate is due for renewal",
            Reason::RoleChanged => "the swarm changed this node's role",
            Reason::RaftIdMissing => "a promotion needs its raft id",
        })
    }
}

/// The agent's next move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Renew(Reason),
    /// Run as the role the certificate says (start or stop the manager).
    Become(Role),
    WaitUntil(SystemTime),
}

/// Decides the next move. A role the swarm states wins over the certificate (renew to get it);
/// the certificate wins over the state file (the CA issued it from the store, which moves a
/// manager out of raft before calling it a worker); then time.
pub(super) fn next_step(
    now: SystemTime,
    certificate: Role,
    due: SystemTime,
    swarm_role: Option<Role>,
    local: Local,
) -> Step {
    if swarm_role.is_some_and(|r| r != certificate) {
        return Step::Renew(Reason::RoleChanged);
    }
    if certificate != local.role {
        if certificate == Role::Manager && local.raft_id == 0 {
            return Step::Renew(Reason::RaftIdMissing);
        }
        return Step::Become(certificate);
    }
    if now >= due {
        return Step::Renew(Reason::Due);
    }
    Step::WaitUntil(due)
}

/// When to renew `identity`: a random point in 50–80% of its life, counted from its issue. The
/// CA backdates `not_before` by [`CLOCK_SKEW_BACKDATE`] for peers with slow clocks; counting
/// that hour would make a one-hour certificate due the moment it arrives.
pub(super) fn renewal_due<R: rand::Rng + ?Sized>(
    identity: &NodeIdentity,
    rng: &mut R,
) -> SystemTime {
    let issued = (identity.not_before + CLOCK_SKEW_BACKDATE).min(identity.not_after);
    shoal_pki::renewal_time(issued, identity.not_after, rng)
}

fn rfc3339(t: SystemTime) -> String {
    prost_types::Timestamp::from(t).to_string()
}

/// How long to wait after the `failures`-th failure in a row.
pub(super) fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// What failed, for the log line.
enum Failed {
    Renew(anyhow::Error),
    Become(anyhow::Error),
}

/// The wall clock (a test gives another).
pub(super) trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

pub(super) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// What the agent acts on (the daemon's membership; a fake in tests).
pub(super) trait Node: Send + Sync {
    /// The current certificate's identity.
    fn identity(&self) -> NodeIdentity;
    /// `None` once the node is no longer in the swarm: the agent stops.
    fn local(&self) -> impl Future<Output = Option<Local>> + Send;
    /// Gets, stores and starts using a new certificate; returns its role.
    fn renew(&self, reason: Reason) -> impl Future<Output = anyhow::Result<Role>> + Send;
    fn become_role(&self, role: Role) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs until the node leaves the swarm (or the session's heartbeats stop for good).
pub(super) async fn run<N: Node, C: Clock>(
    node: N,
    clock: C,
    mut swarm_role: watch::Receiver<Option<Role>>,
) {
    let mut rng = StdRng::from_os_rng();
    // Drawn once per certificate, so waking up early (a heartbeat) does not redraw the point.
    let mut scheduled: Option<(String, SystemTime)> = None;
    let mut failures = 0u32;
    loop {
        let identity = node.identity();
        let due = match &scheduled {
            Some((serial, due)) if *serial == identity.serial_hex => *due,
            _ => {
                let due = renewal_due(&identity, &mut rng);
                tracing::debug!(serial = %identity.serial_hex, due = ?due, "certificate renewal scheduled");
                scheduled = Some((identity.serial_hex.clone(), due));
                due
            }
        };
        let Some(local) = node.local().await else {
            return;
        };
        let wanted = *swarm_role.borrow_and_update();
        let outcome = match next_step(clock.now(), identity.role, due, wanted, local) {
            Step::WaitUntil(at) => {
                let wait = at
                    .duration_since(clock.now())
                    .unwrap_or_default()
                    .min(MAX_WAIT);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = swarm_role.changed() => if changed.is_err() { return },
                }
                continue;
            }
            Step::Renew(reason) => node.renew(reason).await.map(drop).map_err(Failed::Renew),
            Step::Become(role) => node.become_role(role).await.map_err(Failed::Become),
        };
        let Err(failed) = outcome else {
            failures = 0;
            continue;
        };
        failures += 1;
        let wait = retry_after(failures);
        match failed {
            Failed::Renew(error) if clock.now() >= identity.not_after => tracing::error!(
                error = %format!("{error:#}"),
                expired = %rfc3339(identity.not_after),
                retry_in = ?wait,
                "this node's certificate has expired, so managers refuse it and it cannot be renewed: remove the node (shoal node rm) and join it again"
            ),
            Failed::Renew(error) => tracing::warn!(
                error = %format!("{error:#}"),
                retry_in = ?wait,
                "certificate renewal failed"
            ),
            Failed::Become(error) => tracing::warn!(
                error = %format!("{error:#}"),
                role = %identity.role,
                retry_in = ?wait,
                "changing this node's role failed"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = swarm_role.changed() => if changed.is_err() { return },
        }
    }
}

/// The daemon's side of the agent.
pub(super) struct DaemonNode {
    pub(super) membership: Weak<Membership>,
    pub(super) tls: Tls,
    pub(super) session: Arc<Session>,
}

impl Node for DaemonNode {
    fn identity(&self) -> NodeIdentity {
        self.tls.identity.identity()
    }

    async fn local(&self) -> Option<Local> {
        let membership = self.membership.upgrade()?;
        let state = role_change::current_state(&membership, &self.identity().node_id).await?;
        Some(Local {
            role: if state.role == "manager" {
                Role::Manager
            } else {
                Role::Worker
            },
            raft_id: state.raft_id,
        })
    }

    async fn renew(&self, reason: Reason) -> anyhow::Result<Role> {
        let membership = self
            .membership
            .upgrade()
            .context("the daemon is stopping")?;
        let current = self.identity();
        let state = role_change::current_state(&membership, &current.node_id)
            .await
            .context("this node left the swarm")?;
        let key = NodeKey::generate()?;
        let request = RenewNodeCertificateRequest {
            csr: key.csr_pem()?,
            advertise_addr: state.advertise_addr.clone(),
            listen_addr: state.listen_addr.clone(),
        };
        let mut candidates = Vec::new();
        if state.role == "manager" {
            // Its own listener forwards to the leader, wherever that is.
            candidates.push(state.advertise_addr.clone());
        }
        candidates.extend(self.session.managers());
        candidates.extend(state.managers.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| !c.is_empty() && seen.insert(c.clone()));
        let (via, answer) = ask_managers(&self.tls, &candidates, &request).await?;

        let root = self.tls.identity.root_ca_pem();
        if answer.root_ca.trim() != root.trim() {
            bail!(
                "the swarm's root CA changed (rotation is not supported yet): this node keeps its certificate"
            );
        }
        let certs = NodeCertificates {
            key,
            cert_pem: answer.certificate.clone(),
            root_ca_pem: root.to_owned(),
        };
        certs
            .validate()
            .context("the manager returned an unusable certificate")?;
        let issued = certs.identity()?;
        if issued.node_id != current.node_id || issued.cluster_id != current.cluster_id {
            bail!(
                "the manager returned a certificate for node {} of swarm {}, not for this node",
                issued.node_id,
                issued.cluster_id
            );
        }
        // On disk before in use: a crash from here on restarts with the new identity.
        role_change::keep_renewed(&membership, &certs, &answer, &current.node_id).await?;
        self.tls.identity.replace(&certs)?;
        // The CA's answer is the freshest word on the role: a heartbeat answered before it
        // must not send the agent back for another renewal.
        self.session.set_role(issued.role);
        tracing::info!(
            %reason,
            manager = %via,
            role = %issued.role,
            serial = %issued.serial_hex,
            expires = %rfc3339(issued.not_after),
            "renewed this node's certificate"
        );
        Ok(issued.role)
    }

    async fn become_role(&self, role: Role) -> anyhow::Result<()> {
        let membership = self
            .membership
            .upgrade()
            .context("the daemon is stopping")?;
        role_change::become_role(&membership, &self.tls, &self.session, role).await
    }
}

/// Asks each manager in turn until one renews; a refusal from one does not stop the others
/// from being asked (a demoted manager's own listener may no longer reach the leader).
async fn ask_managers(
    tls: &Tls,
    candidates: &[String],
    request: &RenewNodeCertificateRequest,
) -> anyhow::Result<(String, RenewNodeCertificateResponse)> {
    let mut refusal = None;
    let mut unreachable = None;
    for addr in candidates {
        // A fresh connection: its handshake proves the certificate held now.
        let channel = match cluster::channel(addr, tls.client.clone()) {
            Ok(channel) => channel,
            Err(error) => {
                unreachable = Some(error);
                continue;
            }
        };
        let mut client = NodeCaClient::new(channel);
        let call = client.renew_node_certificate(request.clone());
        match tokio::time::timeout(RENEW_CALL_TIMEOUT, call).await {
            Ok(Ok(answer)) => return Ok((addr.clone(), answer.into_inner())),
            Ok(Err(status)) => {
                let line = format!("{addr}: {}", status.message());
                match status.code() {
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded => {
                        unreachable = Some(line);
                    }
                    _ => refusal = Some(line),
                }
            }
            Err(_) => {
                unreachable = Some(format!("{addr}: no answer within {RENEW_CALL_TIMEOUT:?}"))
            }
        }
    }
    if let Some(refusal) = refusal {
        bail!("the swarm refused to renew this node's certificate: {refusal}");
    }
    match unreachable {
        Some(last) => bail!(
            "no manager answered ({} tried; last: {last})",
            candidates.len()
        ),
        None => bail!("no manager is known to ask"),
    }
}

#[cfg(test)]
mod tests;
