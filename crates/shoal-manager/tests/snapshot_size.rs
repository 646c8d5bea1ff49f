//! The store's raft snapshot at ~50 MiB of configs, in two shapes (52 large configs, 50,000
//! small ones): capturing it on the state-machine task is O(1) (a view), and the figures of the
//! work done off that task (copy + encode) and of a restore are printed
//! (`cargo test --release -p shoal-manager --test snapshot_size -- --nocapture`).

use std::time::{Duration, Instant};

use prost::Message;
use shoal_api::object::Object;
use shoal_api::v1::{
    Annotations, Config, ConfigSpec, Meta, StoreAction, StoreActionKind, Transaction,
    TransactionResult, transaction_result::Outcome,
};
use shoal_manager::state_machine::StoreStateMachine;
use shoal_raft::StateMachine;
use shoal_store::Store;

/// Bytes that do not repeat, so that no layer could get away with less than a full copy.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn config_creation(i: usize, bytes: usize) -> Transaction {
    let config = Config {
        id: format!("{i:025}"),
        meta: Some(Meta::default()),
        spec: Some(ConfigSpec {
            annotations: Some(Annotations {
                name: format!("big-{i}"),
                labels: Default::default(),
            }),
            data: noise(i as u64 + 1, bytes),
        }),
    };
    Transaction {
        actions: vec![StoreAction {
            kind: StoreActionKind::Create as i32,
            object: Some(config.into_store_object()),
        }],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn a_50_mib_snapshot_is_captured_in_o1_and_serialized_off_the_apply_path() {
    measure(52, 1000 * 1024);
    measure(50_000, 1024);
}

fn measure(configs: usize, bytes: usize) {
    let store = Store::new();
    let sm = StoreStateMachine::new(store.clone());
    for i in 0..configs {
        let reply = sm.apply(i as u64 + 1, &config_creation(i, bytes).encode_to_vec());
        let reply = TransactionResult::decode(reply.as_slice()).unwrap();
        assert_eq!(reply.outcome, Outcome::Applied as i32, "{}", reply.message);
    }

    let started = Instant::now();
    let writer = sm.begin_snapshot();
    let capture = started.elapsed();
    // Applying goes on after the capture; the snapshot still shows the state captured.
    let later = sm.apply(
        configs as u64 + 1,
        &config_creation(configs, bytes).encode_to_vec(),
    );
    assert_eq!(
        TransactionResult::decode(later.as_slice()).unwrap().outcome,
        Outcome::Applied as i32
    );

    let started = Instant::now();
    let data = writer();
    let serialize = started.elapsed();
    assert!(data.len() >= configs * bytes, "{} bytes", data.len());

    let started = Instant::now();
    let inline = sm.snapshot();
    let inline_time = started.elapsed();

    let restored = Store::new();
    let started = Instant::now();
    StoreStateMachine::new(restored.clone())
        .restore(configs as u64, &data)
        .unwrap();
    let restore = started.elapsed();
    let view = restored.view();
    assert_eq!(view.count::<Config>(), configs);
    assert_eq!(view.index(), configs as u64);
    assert!(
        inline.len() > data.len() + bytes,
        "the later config is in the inline one"
    );

    eprintln!(
        "snapshot of {:.1} MiB ({configs} configs of {} KiB): capture on the apply task {:.3} ms; \
         copy+encode off it {:.0} ms; the same done inline {:.0} ms; restore {:.0} ms",
        data.len() as f64 / (1024.0 * 1024.0),
        bytes / 1024,
        ms(capture),
        ms(serialize),
        ms(inline_time),
        ms(restore),
    );
    // O(1): nothing proportional to 50 MiB happens at capture, even in a debug build.
    assert!(
        capture < Duration::from_millis(50),
        "capture took {capture:?}"
    );
}
