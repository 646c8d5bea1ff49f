//! The renewal agent's decisions and timing, on a fake node and a fake clock (tokio's paused
//! time drives both the sleeps and the wall clock the agent reads).

use std::sync::Mutex;

use rand::SeedableRng;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// An identity as the CA issues it at `issued`: backdated by an hour, `life` long from issue.
fn identity(issued: SystemTime, life: Duration, role: Role, serial: u32) -> NodeIdentity {
    NodeIdentity {
        node_id: "node".into(),
        role,
        cluster_id: "cluster".into(),
        serial_hex: format!("{serial:x}"),
        not_before: issued - CLOCK_SKEW_BACKDATE,
        not_after: issued + life,
    }
}

fn local(role: Role, raft_id: u64) -> Local {
    Local { role, raft_id }
}

#[test]
fn the_swarm_role_then_the_certificate_then_time_decide() {
    let due = at(100);
    let worker = local(Role::Worker, 0);
    let manager = local(Role::Manager, 7);
    // The swarm says manager, the certificate worker: renew now, whatever the time.
    assert_eq!(
        next_step(at(0), Role::Worker, due, Some(Role::Manager), worker),
        Step::Renew(Reason::RoleChanged)
    );
    assert_eq!(
        next_step(at(0), Role::Manager, due, Some(Role::Worker), manager),
        Step::Renew(Reason::RoleChanged)
    );
    // A manager certificate on a worker: become a manager, once the raft id is known.
    assert_eq!(
        next_step(
            at(0),
            Role::Manager,
            due,
            Some(Role::Manager),
            local(Role::Worker, 7)
        ),
        Step::Become(Role::Manager)
    );
    assert_eq!(
        next_step(at(0), Role::Manager, due, None, worker),
        Step::Renew(Reason::RaftIdMissing)
    );
    // A worker certificate on a manager: stop the manager (before any heartbeat, too).
    assert_eq!(
        next_step(at(0), Role::Worker, due, None, manager),
        Step::Become(Role::Worker)
    );
    // All agree: time decides.
    assert_eq!(
        next_step(at(99), Role::Worker, due, Some(Role::Worker), worker),
        Step::WaitUntil(due)
    );
    assert_eq!(
        next_step(at(100), Role::Worker, due, None, worker),
        Step::Renew(Reason::Due)
    );
}

#[test]
fn renewal_falls_in_50_to_80_percent_of_the_life_since_issue() {
    let mut rng = StdRng::seed_from_u64(3);
    let issued = at(0);
    for life in [HOUR, 90 * 24 * HOUR] {
        let id = identity(issued, life, Role::Worker, 1);
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for _ in 0..1000 {
            let due = renewal_due(&id, &mut rng);
            let f = due.duration_since(issued).unwrap().as_secs_f64() / life.as_secs_f64();
            assert!((0.5..=0.8).contains(&f), "{f} for {life:?}");
            lo = lo.min(f);
            hi = hi.max(f);
        }
        assert!(lo < 0.52 && hi > 0.78, "{lo}..{hi}: spread over the window");
    }
    // One hour of life: due 30 to 48 minutes after issue, never at once.
    let due = renewal_due(&identity(issued, HOUR, Role::Worker, 1), &mut rng);
    assert!(due >= issued + 30 * Duration::from_secs(60));
    assert!(due <= issued + 48 * Duration::from_secs(60));
}

#[test]
fn retries_back_off_to_five_minutes() {
    let waits: Vec<u64> = (1..=10).map(|n| retry_after(n).as_secs()).collect();
    assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(retry_after(u32::MAX), MAX_RETRY);
}

/// Wall clock = a fixed start + tokio's (paused, auto-advancing) time since the test began.
#[derive(Clone)]
struct FakeClock {
    start: SystemTime,
    began: tokio::time::Instant,
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        self.start + self.began.elapsed()
    }
}

#[derive(Default)]
struct FakeState {
    identity: Option<NodeIdentity>,
    local: Option<Local>,
    /// What the next renewals do: `Err` is "no manager answered". Empty: succeed.
    script: Vec<Result<(), ()>>,
    /// The role the (fake) store holds, issued at each renewal.
    store_role: Option<Role>,
    renewals: Vec<(SystemTime, Reason, Result<(), ()>)>,
    became: Vec<(SystemTime, Role)>,
    serial: u32,
}

#[derive(Clone)]
struct FakeNode {
    state: Arc<Mutex<FakeState>>,
    clock: FakeClock,
    life: Duration,
}

impl FakeNode {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl Node for FakeNode {
    fn identity(&self) -> NodeIdentity {
        self.state().identity.clone().unwrap()
    }

    async fn local(&self) -> Option<Local> {
        self.state().local
    }

    async fn renew(&self, reason: Reason) -> anyhow::Result<Role> {
        let now = self.clock.now();
        let mut state = self.state();
        let outcome = if state.script.is_empty() {
            Ok(())
        } else {
            state.script.remove(0)
        };
        state.renewals.push((now, reason, outcome));
        if outcome.is_err() {
            bail!("no manager answered");
        }
        state.serial += 1;
        let role = state
            .store_role
            .unwrap_or(state.identity.as_ref().unwrap().role);
        let serial = state.serial;
        state.identity = Some(identity(now, self.life, role, serial));
        if role == Role::Manager && state.local.is_some_and(|l| l.raft_id == 0) {
            state.local.as_mut().unwrap().raft_id = 9;
        }
        Ok(role)
    }

    async fn become_role(&self, role: Role) -> anyhow::Result<()> {
        let now = self.clock.now();
        let mut state = self.state();
        state.became.push((now, role));
        state.local.as_mut().unwrap().role = role;
        Ok(())
    }
}

fn fake(life: Duration, role: Role) -> (FakeNode, FakeClock) {
    let clock = FakeClock {
        start: at(0),
        began: tokio::time::Instant::now(),
    };
    let node = FakeNode {
        state: Arc::new(Mutex::new(FakeState {
            identity: Some(identity(at(0), life, role, 0)),
            local: Some(local(role, if role == Role::Manager { 9 } else { 0 })),
            ..Default::default()
        })),
        clock: clock.clone(),
        life,
    };
    (node, clock)
}

#[tokio::test(start_paused = true)]
async fn certificates_are_renewed_again_and_again_within_their_window() {
    let (node, clock) = fake(HOUR, Role::Worker);
    let (_roles, roles_rx) = watch::channel(None);
    let agent = tokio::spawn(run(node.clone(), clock.clone(), roles_rx));
    tokio::time::sleep(10 * HOUR).await;
    agent.abort();

    let state = node.state();
    // Each certificate lives an hour and is renewed 30–48 minutes after it was issued.
    assert!(state.renewals.len() >= 12, "{}", state.renewals.len());
    let mut issued = at(0);
    for (when, reason, outcome) in &state.renewals {
        assert_eq!((*reason, *outcome), (Reason::Due, Ok(())));
        let after = when.duration_since(issued).unwrap();
        assert!(after >= HOUR / 2 && after <= HOUR * 8 / 10, "{after:?}");
        issued = *when;
    }
    assert!(state.became.is_empty());
}

#[tokio::test(start_paused = true)]
async fn no_manager_answering_means_retries_with_back_off() {
    let (node, clock) = fake(HOUR, Role::Worker);
    node.state().script = vec![Err(()), Err(()), Err(()), Err(())];
    let (_roles, roles_rx) = watch::channel(None);
    let agent = tokio::spawn(run(node.clone(), clock.clone(), roles_rx));
    tokio::time::sleep(HOUR).await;
    agent.abort();

    let state = node.state();
    let times: Vec<SystemTime> = state.renewals.iter().map(|r| r.0).collect();
    let outcomes: Vec<Result<(), ()>> = state.renewals.iter().map(|r| r.2).collect();
    assert_eq!(&outcomes[..5], [Err(()), Err(()), Err(()), Err(()), Ok(())]);
    let gaps: Vec<u64> = times
        .windows(2)
        .take(4)
        .map(|w| w[1].duration_since(w[0]).unwrap().as_secs())
        .collect();
    assert_eq!(gaps, [2, 4, 8, 16]);
    // The first attempt was the scheduled one, in the window.
    let first = times[0].duration_since(at(0)).unwrap();
    assert!(first >= HOUR / 2 && first <= HOUR * 8 / 10, "{first:?}");
}

#[tokio::test(start_paused = true)]
async fn a_role_change_renews_at_once_then_the_node_becomes_it() {
    let (node, clock) = fake(90 * 24 * HOUR, Role::Worker);
    let (roles, roles_rx) = watch::channel(Some(Role::Worker));
    let agent = tokio::spawn(run(node.clone(), clock.clone(), roles_rx));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(node.state().renewals.is_empty(), "nothing is due yet");

    // Promotion: the store says manager, and the heartbeat tells the agent.
    node.state().store_role = Some(Role::Manager);
    let promoted_at = clock.now();
    roles.send_replace(Some(Role::Manager));
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let state = node.state();
        assert_eq!(state.renewals.len(), 1);
        assert_eq!(state.renewals[0].1, Reason::RoleChanged);
        assert_eq!(state.renewals[0].0, promoted_at, "renewed at once");
        assert_eq!(state.identity.as_ref().unwrap().role, Role::Manager);
        assert_eq!(state.became, [(promoted_at, Role::Manager)]);
    }

    // Demotion, with the first renewal failing: retried, then the node stops its manager.
    {
        let mut state = node.state();
        state.store_role = Some(Role::Worker);
        state.script = vec![Err(())];
    }
    let demoted_at = clock.now();
    roles.send_replace(Some(Role::Worker));
    tokio::time::sleep(Duration::from_secs(10)).await;
    agent.abort();
    let state = node.state();
    let reasons: Vec<(Reason, Result<(), ()>)> =
        state.renewals[1..].iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(
        reasons,
        [
            (Reason::RoleChanged, Err(())),
            (Reason::RoleChanged, Ok(()))
        ]
    );
    assert_eq!(state.renewals[2].0, demoted_at + Duration::from_secs(2));
    assert_eq!(
        state.became.last(),
        Some(&(demoted_at + Duration::from_secs(2), Role::Worker))
    );
    assert_eq!(state.local.unwrap().role, Role::Worker);
}

#[tokio::test(start_paused = true)]
async fn the_agent_stops_when_the_node_leaves() {
    let (node, clock) = fake(HOUR, Role::Worker);
    node.state().local = None;
    let (_roles, roles_rx) = watch::channel(None);
    let agent = tokio::spawn(run(node.clone(), clock, roles_rx));
    tokio::time::timeout(Duration::from_secs(1), agent)
        .await
        .expect("the agent returns")
        .unwrap();
}
