//! Registry client tests: against a hand-rolled fake registry for the protocol's corners (bad
//! digests, cut connections, token auth, indexes, refusals), and against Debian's real
//! `docker-registry` for push/pull round trips (`real`).

mod fake;
mod real;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fake::{FakeServer, Reply, Request};
use serde_json::json;

use super::{Progress, ProgressSink, ProgressStatus, RegistryAuth, RegistryClient, RegistryConfig};
use crate::digest::Digest;
use crate::platform::host_arch;
use crate::reference::Reference;
use crate::store::ImageStore;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const REPO: &str = "test/app";

/// A one-layer image, as a registry would hold it.
struct TinyImage {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    config_digest: Digest,
    layer_digest: Digest,
    /// Every blob by digest (config and layer).
    blobs: Vec<(Digest, Vec<u8>)>,
}

/// Bytes that gzip cannot shrink, so a cut lands in the middle of a real download.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tiny_image(seed: u64) -> TinyImage {
    let data = noise(300 * 1024, seed);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(data.len() as u64);
    header.set_mtime(1_700_000_000);
    builder
        .append_data(&mut header, "data.bin", data.as_slice())
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = Digest::of(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .unwrap();
    let config_digest = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest.to_string(),
            "size": layer.len(),
        }],
    }))
    .unwrap();
    TinyImage {
        manifest_digest: Digest::of(&manifest),
        manifest,
        config_digest: config_digest.clone(),
        blobs: vec![(config_digest, config), (layer_digest.clone(), layer)],
        layer_digest,
    }
}

fn index_of(entries: &[(&Digest, usize, &str)]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, size, arch)| {
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest.to_string(),
                "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

fn not_found(code: &str) -> Reply {
    Reply::new(
        404,
        format!(r#"{{"errors":[{{"code":"{code}","message":"unknown"}}]}}"#),
    )
    .header("Content-Type", "application/json")
}

/// Answers like a registry holding `image` under `REPO:latest`, plus `extra` manifests by
/// digest (an index, say), with `Range` support on blobs.
fn registry_answer(
    image: &TinyImage,
    extra: &[(Digest, Vec<u8>, &str)],
    request: &Request,
) -> Reply {
    let path = request.path();
    if path == "/v2/" {
        return Reply::new(200, "{}");
    }
    let manifests = format!("/v2/{REPO}/manifests/");
    let blobs = format!("/v2/{REPO}/blobs/");
    if let Some(name) = path.strip_prefix(&manifests) {
        let found = if name == "latest" || name == image.manifest_digest.as_str() {
            Some((image.manifest.clone(), OCI_MANIFEST))
        } else {
            extra
                .iter()
                .find(|(d, _, _)| d.as_str() == name)
                .map(|(_, b, t)| (b.clone(), *t))
        };
        return match found {
            Some((body, media_type)) => Reply::new(200, body.clone())
                .header("Content-Type", media_type)
                .header("Docker-Content-Digest", Digest::of(&body).as_str()),
            None => not_found("MANIFEST_UNKNOWN"),
        };
    }
    if let Some(name) = path.strip_prefix(&blobs) {
        let Some((_, body)) = image.blobs.iter().find(|(d, _)| d.as_str() == name) else {
            return not_found("BLOB_UNKNOWN");
        };
        return blob_reply(body, request);
    }
    not_found("NAME_UNKNOWN")
}

fn blob_reply(body: &[u8], request: &Request) -> Reply {
    if let Some(start) = request
        .header("Range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n < body.len())
    {
        return Reply::new(206, body[start..].to_vec())
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                &format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
            );
    }
    Reply::new(200, body.to_vec()).header("Content-Type", "application/octet-stream")
}

fn client_for(server: &FakeServer) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        insecure: vec![server.host()],
        ..RegistryConfig::default()
    })
}

fn reference(host: &str, rest: &str) -> Reference {
    Reference::parse(&format!("{host}/{REPO}{rest}")).unwrap()
}

/// Collects progress events.
fn recorder() -> (ProgressSink, Arc<Mutex<Vec<Progress>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = events.clone();
    let sink: ProgressSink = Arc::new(move |p| sink_events.lock().unwrap().push(p));
    (sink, events)
}

fn statuses(events: &Mutex<Vec<Progress>>) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.status != ProgressStatus::Downloading)
        .map(|p| format!("{}: {}", p.id, p.status))
        .collect()
}

fn open_store() -> (tempfile::TempDir, Arc<ImageStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(&dir.path().join("images")).unwrap());
    (dir, store)
}

fn ingest_is_empty(store: &ImageStore) -> bool {
    std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .next()
        .is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_verifies_records_and_then_is_up_to_date() {
    let image = Arc::new(tiny_image(1));
    let served = image.clone();
    let server = FakeServer::start(move |r| registry_answer(&served, &[], r)).await;
    let client = client_for(&server);
    let (_dir, store) = open_store();
    let (sink, events) = recorder();
    let r = reference(&server.host(), ":latest");

    let pulled = client
        .pull(&store, &r, &RegistryAuth::Anonymous, sink)
        .await
        .unwrap();
    assert_eq!(pulled.digest, image.manifest_digest);
    assert_eq!(pulled.image_id, image.config_digest);
    assert!(pulled.downloaded_newer);
    let short = image.layer_digest.short();
    assert_eq!(
        statuses(&events),
        [
            "latest: Pulling from test/app".to_owned(),
            format!("{short}: Pulling fs layer"),
            format!("{short}: Verifying Checksum"),
            format!("{short}: Download complete"),
            format!("{short}: Pull complete"),
        ]
    );
    let details = store.inspect(&r.to_string()).unwrap();
    assert_eq!(details.id, image.config_digest);
    assert_eq!(
        details.repo_digests,
        [format!(
            "{}/{REPO}@{}",
            server.host(),
            image.manifest_digest
        )]
    );
    assert!(ingest_is_empty(&store));

    // Again: nothing is downloaded, and the tag already names the image.
    let blob_gets = |s: &FakeServer| {
        s.requests()
            .iter()
            .filter(|q| q.path().contains("/blobs/"))
            .count()
    };
    let before = blob_gets(&server);
    let (sink, events) = recorder();
    let again = client
        .pull(&store, &r, &RegistryAuth::Anonymous, sink)
        .await
        .unwrap();
    assert!(!again.downloaded_newer);
    assert_eq!(blob_gets(&server), before);
    assert!(statuses(&events).contains(&format!("{short}: Already exists")));

    // Removing the tag removes the pull's digest reference with it, and so the image.
    let removed = store.remove(&r.to_string(), false).unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(
        removed[2],
        crate::Removed::Deleted(image.config_digest.clone())
    );
    assert!(store.list().is_empty());

    // By digest, into a fresh store.
    let (_dir2, fresh) = open_store();
    let by_digest = reference(&server.host(), &format!("@{}", image.manifest_digest));
    let pulled = client
        .pull(&fresh, &by_digest, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap();
    assert_eq!(pulled.image_id, image.config_digest);
    assert_eq!(pulled.reference, by_digest);
    fresh.resolve(&by_digest.to_string()).unwrap();

    // A digest the registry does not know.
    let unknown = reference(&server.host(), &format!("@{}", Digest::of(b"nothing")));
    let err = client
        .pull(&fresh, &unknown, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("image not found: manifest for"),
        "{err}"
    );
    let err = client
        .pull(
            &fresh,
            &reference(&server.host(), ":nope"),
            &RegistryAuth::Anonymous,
            recorder().0,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image not found: manifest for {}/{REPO}:nope unknown to the registry",
            server.host()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_digest_is_refused() {
    let image = Arc::new(tiny_image(2));
    let served = image.clone();
    let server = FakeServer::start(move |r| {
        let mut reply = registry_answer(&served, &[], r);
        if r.path().ends_with(served.layer_digest.as_str()) {
            let last = reply.body.len() - 1;
            reply.body[last] ^= 0xff;
        }
        reply
    })
    .await;
    let client = client_for(&server);
    let (_dir, store) = open_store();
    let r = reference(&server.host(), ":latest");
    let err = client
        .pull(&store, &r, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("digest mismatch for blob"), "{text}");
    assert!(text.contains(image.layer_digest.as_str()), "{text}");
    assert!(!text.contains('\n'));
    assert!(store.list().is_empty());
    assert!(!store.content().contains(&image.layer_digest));
    assert!(ingest_is_empty(&store), "the corrupt partial must go");

    // A manifest whose bytes do not match the digest asked for.
    let liar = FakeServer::start({
        let image = image.clone();
        move |r| {
            if r.path().contains("/manifests/") {
                Reply::new(200, image.manifest.clone()).header("Content-Type", OCI_MANIFEST)
            } else {
                registry_answer(&image, &[], r)
            }
        }
    })
    .await;
    let by_digest = reference(&liar.host(), &format!("@{}", Digest::of(b"other")));
    let err = client_for(&liar)
        .pull(&store, &by_digest, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("digest mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let image = Arc::new(tiny_image(3));
    let served = image.clone();
    let cut_done = Arc::new(AtomicBool::new(false));
    let cut = 100_000;
    let cut_flag = cut_done.clone();
    let server = FakeServer::start(move |r| {
        let reply = registry_answer(&served, &[], r);
        if r.path().ends_with(served.layer_digest.as_str())
            && !cut_flag.swap(true, Ordering::SeqCst)
        {
            return reply.cut_after(cut);
        }
        reply
    })
    .await;
    let client = client_for(&server);
    let (_dir, store) = open_store();
    let (sink, events) = recorder();
    let pulled = client
        .pull(
            &store,
            &reference(&server.host(), ":latest"),
            &RegistryAuth::Anonymous,
            sink,
        )
        .await
        .unwrap();
    assert_eq!(pulled.image_id, image.config_digest);
    let layer_requests: Vec<Request> = server
        .requests()
        .into_iter()
        .filter(|q| q.path().ends_with(image.layer_digest.as_str()))
        .collect();
    assert_eq!(layer_requests.len(), 2, "{layer_requests:?}");
    assert_eq!(layer_requests[0].header("Range"), None);
    assert_eq!(
        layer_requests[1].header("Range"),
        Some(format!("bytes={cut}-").as_str())
    );
    assert!(statuses(&events).contains(&format!("{}: Retrying", image.layer_digest.short())));
    assert!(store.content().contains(&image.layer_digest));
    assert!(ingest_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_left_by_a_failed_pull_is_resumed_by_the_next() {
    let image = Arc::new(tiny_image(4));
    let served = image.clone();
    // Every first-byte request is cut: only a ranged request can finish the blob.
    let server = FakeServer::start(move |r| {
        let reply = registry_answer(&served, &[], r);
        if r.path().ends_with(served.layer_digest.as_str()) && r.header("Range").is_none() {
            return reply.cut_after(50_000);
        }
        reply
    })
    .await;
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![server.host()],
        attempts: 1,
        ..RegistryConfig::default()
    });
    let (_dir, store) = open_store();
    let r = reference(&server.host(), ":latest");
    let err = client
        .pull(&store, &r, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("download of blob"), "{err}");
    assert!(!ingest_is_empty(&store), "the partial download stays");
    client
        .pull(&store, &r, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap();
    let last = server
        .requests()
        .into_iter()
        .rev()
        .find(|q| q.path().ends_with(image.layer_digest.as_str()))
        .unwrap();
    assert_eq!(last.header("Range"), Some("bytes=50000-"));
    assert!(ingest_is_empty(&store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_yields_this_hosts_manifest_or_a_clear_refusal() {
    let image = Arc::new(tiny_image(5));
    let other_arch = if host_arch() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let decoy = Digest::of(b"decoy manifest");
    let good_index = index_of(&[
        (&decoy, 14, other_arch),
        (&image.manifest_digest, image.manifest.len(), host_arch()),
    ]);
    let bad_index = index_of(&[(&decoy, 14, other_arch)]);
    let extra = vec![
        (Digest::of(&good_index), good_index.clone(), OCI_INDEX),
        (Digest::of(&bad_index), bad_index.clone(), OCI_INDEX),
    ];
    let served = image.clone();
    let server = FakeServer::start(move |r| registry_answer(&served, &extra, r)).await;
    let client = client_for(&server);
    let (_dir, store) = open_store();
    let by_index = reference(&server.host(), &format!("@{}", Digest::of(&good_index)));
    let pulled = client
        .pull(&store, &by_index, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap();
    assert_eq!(pulled.image_id, image.config_digest);
    assert_eq!(pulled.digest, Digest::of(&good_index));
    assert!(
        !server
            .requests()
            .iter()
            .any(|q| q.path().contains(decoy.hex())),
        "the other platform's manifest is never fetched"
    );
    let no_match = reference(&server.host(), &format!("@{}", Digest::of(&bad_index)));
    let err = client
        .pull(&store, &no_match, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no manifest for platform linux/{} in image index",
            host_arch()
        )
    );
}

/// A registry that sends clients to a token realm, and its token endpoint.
fn token_registry(image: &TinyImage, request: &Request) -> Reply {
    const TOKEN: &str = "tok-123";
    let good = format!("Basic {}", base64("alice:wonderland"));
    if request.path() == "/token" {
        return if request.header("Authorization") == Some(good.as_str()) {
            Reply::new(200, format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#))
                .header("Content-Type", "application/json")
        } else {
            Reply::new(401, r#"{"details":"incorrect username or password"}"#)
        };
    }
    if request.header("Authorization") != Some(&format!("Bearer {TOKEN}")) {
        let host = request.header("Host").unwrap_or_default();
        return Reply::new(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
        .header("Content-Type", "application/json")
        .header(
            "WWW-Authenticate",
            &format!(r#"Bearer realm="http://{host}/token",service="fake-registry""#),
        );
    }
    registry_answer(image, &[], request)
}

fn base64(text: &str) -> String {
    use base64_engine as b;
    b::encode(text.as_bytes())
}

/// Twenty lines instead of a dependency, for one header in one test.
mod base64_engine {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub(super) fn encode(data: &[u8]) -> String {
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_with_the_credentials_and_used() {
    let image = Arc::new(tiny_image(6));
    let served = image.clone();
    let server = FakeServer::start(move |r| token_registry(&served, r)).await;
    let client = client_for(&server);
    let (_dir, store) = open_store();
    let r = reference(&server.host(), ":latest");
    let alice = RegistryAuth::Basic {
        username: "alice".into(),
        password: "wonderland".into(),
    };
    client.pull(&store, &r, &alice, recorder().0).await.unwrap();
    let requests = server.requests();
    let token_requests: Vec<&Request> = requests.iter().filter(|q| q.path() == "/token").collect();
    assert!(!token_requests.is_empty());
    assert!(
        token_requests[0].target.contains("service=fake-registry"),
        "{:?}",
        token_requests[0]
    );
    assert!(
        token_requests[0]
            .target
            .contains("scope=repository%3Atest%2Fapp%3Apull"),
        "{:?}",
        token_requests[0]
    );
    let with_token = requests
        .iter()
        .filter(|q| {
            q.path().contains("/blobs/") && q.header("Authorization") == Some("Bearer tok-123")
        })
        .count();
    assert_eq!(with_token, 2, "config and layer fetched with the token");

    let wrong = RegistryAuth::Basic {
        username: "alice".into(),
        password: "looking-glass".into(),
    };
    let (_dir2, fresh) = open_store();
    let err = client
        .pull(&fresh, &r, &wrong, recorder().0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "unauthorized: incorrect username or password for {}",
            server.host()
        )
    );
    let err = client
        .pull(&fresh, &r, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("pull access denied for test/app"),
        "{err}"
    );

    client
        .login(&server.host(), "alice", "wonderland")
        .await
        .unwrap();
    let err = client
        .login(&server.host(), "alice", "nope")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "unauthorized: incorrect username or password for {}",
            server.host()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_are_one_clear_line() {
    let image = Arc::new(tiny_image(7));
    let served = image.clone();
    let server = FakeServer::start(move |r| registry_answer(&served, &[], r)).await;
    let (_dir, store) = open_store();
    let r = reference(&server.host(), ":latest");
    // Plain HTTP, but not declared insecure: HTTPS fails, and the error says what to do.
    let strict = RegistryClient::new(RegistryConfig::default());
    let err = strict
        .pull(&store, &r, &RegistryAuth::Anonymous, recorder().0)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "registry {host} did not answer over HTTPS (the TLS handshake failed); if it serves plain HTTP, start the daemon with --insecure-registry {host}",
            host = server.host()
        )
    );
    let err = strict.login(&server.host(), "a", "b").await.unwrap_err();
    assert!(err.to_string().contains("--insecure-registry"), "{err}");

    // Nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let client = RegistryClient::new(RegistryConfig {
        insecure: vec![host.clone()],
        ..RegistryConfig::default()
    });
    let err = client
        .pull(
            &store,
            &Reference::parse(&format!("{host}/x:1")).unwrap(),
            &RegistryAuth::Anonymous,
            recorder().0,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach registry {host}: connection refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_limits_bound_what_a_registry_can_send() {
    let image = Arc::new(tiny_image(8));
    let served = image.clone();
    let server = FakeServer::start(move |r| registry_answer(&served, &[], r)).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = crate::Limits {
        max_json_bytes: 64,
        ..crate::Limits::default()
    };
    let store = Arc::new(ImageStore::open_with_limits(dir.path(), limits).unwrap());
    let err = client_for(&server)
        .pull(
            &store,
            &reference(&server.host(), ":latest"),
            &RegistryAuth::Anonymous,
            recorder().0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "manifest size exceeds the limit of 64");

    let limits = crate::Limits {
        max_layer_bytes: 1000,
        ..crate::Limits::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open_with_limits(dir.path(), limits).unwrap());
    let err = client_for(&server)
        .pull(
            &store,
            &reference(&server.host(), ":latest"),
            &RegistryAuth::Anonymous,
            recorder().0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "layer blob size exceeds the limit of 1000");
    assert!(!store.content().contains(&image.layer_digest));
}

/// The engine runs these futures with `tokio::spawn`.
#[allow(dead_code)]
fn operations_are_send(client: &RegistryClient, store: &Arc<ImageStore>, r: &Reference) {
    fn send<T: Send>(_: T) {}
    send(client.pull(store, r, &RegistryAuth::Anonymous, recorder().0));
    send(client.push(store, r, &RegistryAuth::Anonymous, recorder().0));
    send(client.login("h", "u", "p"));
}

#[test]
fn insecure_registry_values_are_checked() {
    assert_eq!(
        super::parse_insecure_registry("127.0.0.1:5000").unwrap(),
        "127.0.0.1:5000"
    );
    assert_eq!(
        super::parse_insecure_registry("registry.local").unwrap(),
        "registry.local"
    );
    for bad in ["http://x:5000", "", "a b", "x:5000/path", "x:99999999"] {
        assert!(super::parse_insecure_registry(bad).is_err(), "{bad:?}");
    }
}
