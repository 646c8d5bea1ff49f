//! Push and pull against Debian's real `docker-registry` on loopback, with an image made from
//! busybox-static: round trips between stores, by tag and by digest, and htpasswd Basic auth.

use std::time::Instant;

use shoal_testkit::registry::{TEST_PASSWORD, TEST_USER, TestRegistry};

use super::{open_store, recorder, statuses};
use crate::reference::Reference;
use crate::registry::{RegistryAuth, RegistryClient, RegistryConfig};
use crate::store::ImageStore;

fn ready() -> bool {
    if !shoal_testkit::registry::available() {
        eprintln!(
            "skipped: {} is missing",
            shoal_testkit::registry::DOCKER_REGISTRY
        );
        return false;
    }
    if !std::path::Path::new(shoal_testkit::images::BUSYBOX).exists() {
        eprintln!("skipped: {} is missing", shoal_testkit::images::BUSYBOX);
        return false;
    }
    true
}

fn busybox_into(store: &ImageStore, reference: &str) {
    let tar = shoal_testkit::images::busybox_rootfs_tar();
    store
        .import(
            tar.as_slice(),
            Some(reference),
            &["CMD [\"sh\"]".to_owned()],
        )
        .unwrap();
}

fn client(registry: &TestRegistry) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        insecure: vec![registry.host()],
        ..RegistryConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_round_trips_through_a_real_registry() {
    if !ready() {
        return;
    }
    let registry = TestRegistry::start();
    let client = client(&registry);
    let name = format!("{}/busybox:test", registry.host());
    let reference = Reference::parse(&name).unwrap();

    let (_a, source) = open_store();
    busybox_into(&source, &name);
    let local = source.inspect(&name).unwrap();
    let (sink, events) = recorder();
    let pushed = client
        .push(&source, &reference, &RegistryAuth::Anonymous, sink)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));
    assert_eq!(pushed.tag, "test");
    assert_eq!(pushed.digest, local.manifest_digest);
    let lines = statuses(&events);
    assert_eq!(
        lines[0],
        format!(
            ": The push refers to repository [{}/busybox]",
            registry.host()
        )
    );
    assert!(lines.iter().any(|l| l.ends_with(": Pushed")), "{lines:?}");
    // Again: every blob is there already.
    let (sink, events) = recorder();
    client
        .push(&source, &reference, &RegistryAuth::Anonymous, sink)
        .await
        .unwrap();
    let lines = statuses(&events);
    assert!(
        lines.iter().any(|l| l.ends_with(": Layer already exists")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.ends_with(": Pushed")), "{lines:?}");

    // Another store pulls it back: same image, and it resolves to an unpacked busybox.
    let (_b, target) = open_store();
    let started = Instant::now();
    let pulled = client
        .pull(&target, &reference, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap();
    eprintln!(
        "pull of busybox ({} bytes of layer) from the loopback registry: {:?}",
        local.size,
        started.elapsed()
    );
    assert_eq!(pulled.image_id, local.id);
    assert_eq!(pulled.digest, local.manifest_digest);
    let resolved = target.resolve(&name).unwrap();
    assert!(resolved.layer_dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        target
            .inspect(&name)
            .unwrap()
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd(),
        &Some(vec!["sh".to_owned()])
    );

    // By digest into a third store.
    let (_c, third) = open_store();
    let by_digest = reference.with_digest(pulled.digest.clone());
    let again = client
        .pull(&third, &by_digest, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap();
    assert_eq!(again.image_id, local.id);
    third.resolve(&by_digest.to_string()).unwrap();

    // Pushing what is not there, or a digest, is refused in one line.
    let missing = Reference::parse(&format!("{}/busybox:absent", registry.host())).unwrap();
    let err = client
        .push(&source, &missing, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "an image does not exist locally with the tag: {}/busybox:absent",
            registry.host()
        )
    );
    let err = client
        .push(&source, &by_digest, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with("push a tag, not a digest"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth_guards_push_pull_and_login() {
    if !ready() {
        return;
    }
    let registry = TestRegistry::start_with_auth();
    let client = client(&registry);
    let name = format!("{}/guarded/busybox:1", registry.host());
    let reference = Reference::parse(&name).unwrap();
    let (_a, source) = open_store();
    busybox_into(&source, &name);
    let good = RegistryAuth::Basic {
        username: TEST_USER.into(),
        password: TEST_PASSWORD.into(),
    };
    let bad = RegistryAuth::Basic {
        username: TEST_USER.into(),
        password: "wrong".into(),
    };

    let err = client
        .push(&source, &reference, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "push access denied for guarded/busybox: the repository does not exist or needs credentials (shoal login {})",
            registry.host()
        )
    );
    let err = client
        .push(&source, &reference, &bad, recorder().0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "unauthorized: incorrect username or password for {}",
            registry.host()
        )
    );
    client
        .push(&source, &reference, &good, recorder().0)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));

    let (_b, target) = open_store();
    let err = client
        .pull(&target, &reference, &bad, recorder().0)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unauthorized: incorrect username or password")
    );
    let pulled = client
        .pull(&target, &reference, &good, recorder().0)
        .await
        .unwrap();
    assert_eq!(pulled.image_id, source.inspect(&name).unwrap().id);

    client
        .login(&registry.host(), TEST_USER, TEST_PASSWORD)
        .await
        .unwrap();
    let err = client
        .login(&registry.host(), TEST_USER, "wrong")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "unauthorized: incorrect username or password for {}",
            registry.host()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registries_are_verified_against_the_trusted_roots() {
    if !ready() {
        return;
    }
    let (ca, chain, key) = shoal_testkit::registry::loopback_tls_certificates();
    let registry = TestRegistry::start_with_tls(&chain, &key);
    let name = format!("{}/busybox:tls", registry.host());
    let reference = Reference::parse(&name).unwrap();
    let (_a, source) = open_store();
    busybox_into(&source, &name);

    let trusting = RegistryClient::new(RegistryConfig {
        extra_roots_pem: vec![ca.into_bytes()],
        ..RegistryConfig::default()
    });
    trusting
        .push(&source, &reference, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));
    let (_b, target) = open_store();
    let pulled = trusting
        .pull(&target, &reference, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap();
    assert_eq!(pulled.image_id, source.inspect(&name).unwrap().id);
    trusting
        .login(&registry.host(), "anyone", "anything")
        .await
        .unwrap();

    // Without the CA, the certificate is refused, in one line that says so.
    let strict = RegistryClient::new(RegistryConfig::default());
    let err = strict
        .pull(&target, &reference, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "registry {} presented a TLS certificate this host does not trust",
            registry.host()
        )),
        "{text}"
    );
    assert!(!text.contains('\n'));
}
