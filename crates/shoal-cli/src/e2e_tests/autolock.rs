//! The fake daemon's side of autolock, and the autolock verbs driven against it: the unlock-key
//! notice of `init --autolock` and `update --autolock=true`, `swarm unlock` from standard input
//! (wrong key, not locked), and `swarm unlock-key [-q] [--rotate]`.

use shoal_api::v1;
use tonic::{Response, Status};

use super::{Harness, State};

const KEY: &str = "SHLKEY-1-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcd";
const ROTATED: &str = "SHLKEY-1-rotatedrotatedrotatedrotatedrotatedrotatedro";

/// Gives the fake cluster a key while its spec asks for autolock, and none otherwise.
pub(super) fn follow_spec(s: &mut State) {
    let on = s
        .cluster
        .spec
        .as_ref()
        .and_then(|spec| spec.encryption.as_ref())
        .is_some_and(|e| e.auto_lock_managers);
    match (on, &s.unlock_key) {
        (true, None) => s.unlock_key = Some(KEY.to_owned()),
        (false, _) => s.unlock_key = None,
        (true, Some(_)) => {}
    }
}

pub(super) fn unlock(
    s: &mut State,
    req: &v1::UnlockRequest,
) -> Result<Response<v1::UnlockResponse>, Status> {
    if s.info.state() != v1::LocalNodeState::Locked {
        return Err(Status::failed_precondition("this node is not locked"));
    }
    if s.unlock_key.as_deref() != Some(req.unlock_key.as_str()) {
        return Err(Status::invalid_argument("wrong unlock key"));
    }
    s.info.set_state(v1::LocalNodeState::Active);
    Ok(Response::new(v1::UnlockResponse {}))
}

pub(super) fn get_unlock_key(s: &mut State) -> Result<Response<v1::GetUnlockKeyResponse>, Status> {
    let key = s.unlock_key.clone().ok_or_else(|| {
        Status::failed_precondition(
            "autolock is not enabled on this swarm, so it has no unlock key",
        )
    })?;
    Ok(Response::new(v1::GetUnlockKeyResponse {
        unlock_key: key,
        version: 1,
    }))
}

pub(super) fn rotate_unlock_key(
    s: &mut State,
) -> Result<Response<v1::RotateUnlockKeyResponse>, Status> {
    get_unlock_key(s)?;
    s.unlock_key = Some(ROTATED.to_owned());
    Ok(Response::new(v1::RotateUnlockKeyResponse {
        unlock_key: ROTATED.to_owned(),
    }))
}

fn notice(key: &str) -> String {
    format!(
        "\
To unlock a swarm manager after it restarts, run the `shoal swarm unlock`
command and provide the following key:

    {key}

Remember to store this key in a password manager, since without it you
will not be able to restart the manager.
"
    )
}

#[tokio::test]
async fn init_and_update_with_autolock_print_the_key() {
    let h = Harness::start().await;
    let out = h
        .ok(&[
            "swarm",
            "init",
            "--autolock",
            "--advertise-addr",
            "10.0.0.1",
        ])
        .await;
    assert!(out.ends_with(&format!("follow the instructions.\n\n{}", notice(KEY))));
    let spec = h.fake.0.lock().unwrap().cluster.spec.clone().unwrap();
    assert!(spec.encryption.unwrap().auto_lock_managers);

    // Off, then on again: only turning it on prints the key.
    assert_eq!(
        h.ok(&["swarm", "update", "--autolock=false"]).await,
        "Swarm updated.\n"
    );
    let spec = h.fake.0.lock().unwrap().cluster.spec.clone().unwrap();
    assert!(!spec.encryption.unwrap().auto_lock_managers);
    assert_eq!(
        h.ok(&["swarm", "update", "--autolock"]).await,
        format!("Swarm updated.\n{}", notice(KEY))
    );
    assert_eq!(
        h.ok(&["swarm", "update", "--autolock=true"]).await,
        "Swarm updated.\n"
    );
    // Other settings leave autolock as it is.
    h.ok(&["swarm", "update", "--task-history-limit", "3"])
        .await;
    assert!(h.fake.0.lock().unwrap().unlock_key.is_some());
    // A plain init sends no encryption settings: the daemon's default (off) applies.
    let h = Harness::start().await;
    h.ok(&["swarm", "init"]).await;
    assert!(h.fake.0.lock().unwrap().cluster.spec.is_none());
}

#[tokio::test]
async fn unlock_reads_the_key_from_stdin_and_refuses_in_one_line() {
    let h = Harness::start().await;
    // Not in a swarm, then not locked: refused before any key is read or sent.
    let outcome = h
        .run_io(&["swarm", "unlock"], KEY.as_bytes(), false, false)
        .await;
    assert_eq!(outcome.error(), "this node is not part of a swarm");
    h.ok(&["swarm", "init", "--autolock"]).await;
    let outcome = h
        .run_io(&["swarm", "unlock"], KEY.as_bytes(), false, false)
        .await;
    assert_eq!(outcome.error(), "this node is not locked");
    assert!(!h.fake.calls().contains(&"Unlock"));

    h.fake
        .0
        .lock()
        .unwrap()
        .info
        .set_state(v1::LocalNodeState::Locked);
    // Locked: control verbs say what to do.
    let (_, err) = h.run(&["swarm", "unlock-key"]).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "this manager is locked: run shoal swarm unlock"
    );
    let outcome = h.run_io(&["swarm", "unlock"], b"\n", false, false).await;
    assert!(outcome.error().starts_with("no unlock key given"));
    let outcome = h
        .run_io(&["swarm", "unlock"], b"SHLKEY-1-nope\n", false, false)
        .await;
    assert_eq!(outcome.error(), "wrong unlock key");
    assert_eq!(
        h.fake.0.lock().unwrap().info.state(),
        v1::LocalNodeState::Locked
    );
    // The key as piped, with its newline; nothing is printed on success.
    let outcome = h
        .run_io(
            &["swarm", "unlock"],
            format!("{KEY}\n").as_bytes(),
            false,
            false,
        )
        .await;
    assert!(outcome.result.is_ok(), "{}", outcome.error());
    assert_eq!(outcome.out(), "");
    assert_eq!(
        h.fake.0.lock().unwrap().info.state(),
        v1::LocalNodeState::Active
    );
}

#[tokio::test]
async fn unlock_key_shows_and_rotates() {
    let h = Harness::start().await;
    h.ok(&["swarm", "init"]).await;
    let (_, err) = h.run(&["swarm", "unlock-key"]).await;
    assert!(
        err.unwrap_err()
            .to_string()
            .starts_with("autolock is not enabled on this swarm")
    );
    h.ok(&["swarm", "update", "--autolock"]).await;
    assert_eq!(h.ok(&["swarm", "unlock-key"]).await, notice(KEY));
    assert_eq!(
        h.ok(&["swarm", "unlock-key", "-q"]).await,
        format!("{KEY}\n")
    );
    assert_eq!(
        h.ok(&["swarm", "unlock-key", "--rotate"]).await,
        format!(
            "Successfully rotated manager unlock key.\n\n{}",
            notice(ROTATED)
        )
    );
    assert_eq!(
        h.ok(&["swarm", "unlock-key", "--rotate", "-q"]).await,
        format!("{ROTATED}\n")
    );
    // A worker is told to ask a manager, without a control call.
    h.fake.0.lock().unwrap().info.is_manager = false;
    let before = h.fake.calls().len();
    let (_, err) = h.run(&["swarm", "unlock-key"]).await;
    assert!(err.unwrap_err().to_string().contains("not a swarm manager"));
    assert_eq!(h.fake.calls().len(), before + 1, "only Info was asked");
}
