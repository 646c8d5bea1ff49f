//! End-to-end tests of registry verbs: real daemons and Debian's real `docker-registry` on
//! loopback, driven through the real CLI — push, remove, auto-pull on `run`, pull by digest,
//! login/logout with htpasswd credentials, and the refusals a user must be able to act on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use shoal_testkit::registry::{TEST_PASSWORD, TEST_USER, TestRegistry};
use shoal_testkit::{CliOutput, Daemon};

fn prerequisites(need_root: bool) -> bool {
    if !shoal_testkit::registry::available() {
        eprintln!(
            "skipped: {} is missing",
            shoal_testkit::registry::DOCKER_REGISTRY
        );
        return false;
    }
    if !Path::new(shoal_testkit::images::BUSYBOX).exists() {
        eprintln!("skipped: {} is missing", shoal_testkit::images::BUSYBOX);
        return false;
    }
    if need_root && !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: containers need root");
        return false;
    }
    true
}

/// Runs the CLI against `daemon` with `config` as its credentials file.
fn cli(daemon: &Daemon, config: &Path, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    use std::io::Write;
    let mut child = Command::new(shoal_testkit::shoal_binary())
        .arg("-H")
        .arg(daemon.host())
        .args(args)
        .env("SHOAL_CONFIG", config)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal CLI");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(bytes).expect("write CLI stdin");
    }
    child.wait_with_output().expect("wait for shoal CLI").into()
}

fn import_busybox(daemon: &Daemon, config: &Path, dir: &Path, reference: &str) {
    let tar = dir.join("rootfs.tar");
    if !tar.exists() {
        shoal_testkit::images::write_busybox_rootfs_tar(&tar);
    }
    let out = cli(
        daemon,
        config,
        &[
            "image",
            "import",
            "-c",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            reference,
        ],
        None,
    );
    assert!(out.ok().starts_with("sha256:"), "{out:?}");
}

#[test]
fn push_remove_then_run_pulls_the_image_back() {
    if !prerequisites(true) {
        return;
    }
    let registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let daemon = Daemon::start_in(
        dir.path(),
        &["--bridge", "none", "--insecure-registry", &host],
    );
    let image = format!("{host}/busybox:test");
    import_busybox(&daemon, &config, dir.path(), &image);

    let out = cli(&daemon, &config, &["push", &image], None);
    let text = out.ok();
    assert!(
        text.starts_with(&format!("The push refers to repository [{host}/busybox]\n")),
        "{text}"
    );
    assert!(text.contains(": Pushed\n"), "{text}");
    let digest_line = text.lines().last().unwrap().to_owned();
    assert!(digest_line.starts_with("test: digest: sha256:"), "{text}");
    let digest = digest_line
        .split_whitespace()
        .nth(2)
        .expect("a digest on the last line")
        .to_owned();

    cli(&daemon, &config, &["image", "rm", &image], None).ok();
    let started = Instant::now();
    let out = cli(
        &daemon,
        &config,
        &["run", "--rm", &image, "echo", "ok"],
        None,
    );
    let elapsed = started.elapsed();
    assert_eq!(out.ok(), "ok\n", "{out:?}\n{}", daemon.log());
    assert!(
        out.stderr
            .starts_with(&format!("Unable to find image '{image}' locally\n")),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains(&format!("Status: Downloaded newer image for {image}\n")),
        "{out:?}"
    );
    eprintln!("run with auto-pull of busybox from the loopback registry: {elapsed:?}");

    // Plain pulls: up to date by tag, then by digest; and the timing of a pull alone.
    let out = cli(&daemon, &config, &["pull", &image], None);
    assert!(
        out.ok()
            .contains(&format!("Status: Image is up to date for {image}\n")),
        "{out:?}"
    );
    cli(&daemon, &config, &["image", "rm", &image], None).ok();
    let by_digest = format!("{host}/busybox@{digest}");
    let started = Instant::now();
    let out = cli(&daemon, &config, &["pull", "-q", &by_digest], None);
    eprintln!(
        "pull of busybox by digest from the loopback registry: {:?}",
        started.elapsed()
    );
    assert_eq!(out.ok(), format!("{by_digest}\n"));
    let out = cli(
        &daemon,
        &config,
        &["run", "--rm", &by_digest, "echo", "digest"],
        None,
    );
    assert_eq!(out.ok(), "digest\n", "{out:?}");
    assert!(out.stderr.is_empty(), "nothing to pull: {out:?}");

    // --pull never refuses, --pull always pulls even when present.
    let missing = format!("{host}/busybox:absent");
    let out = cli(
        &daemon,
        &config,
        &["run", "--pull", "never", "--rm", &missing, "true"],
        None,
    );
    assert_eq!(
        out.one_line_error(),
        format!("Error: no such image: {missing}")
    );
    let out = cli(&daemon, &config, &["run", "--rm", &missing, "true"], None);
    assert_eq!(
        out.stderr.lines().last().unwrap(),
        format!("Error: image not found: manifest for {missing} unknown to the registry"),
        "{out:?}"
    );
    cli(&daemon, &config, &["tag", &by_digest, &image], None).ok();
    let out = cli(
        &daemon,
        &config,
        &["run", "--pull", "always", "--rm", &image, "true"],
        None,
    );
    out.ok();
    assert!(
        out.stderr.contains("Status: Image is up to date"),
        "{out:?}"
    );
}

#[test]
fn login_stores_credentials_that_push_and_pull_use() {
    if !prerequisites(false) {
        return;
    }
    let registry = TestRegistry::start_with_auth();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client").join("config.json");
    let daemon = Daemon::start_in(
        dir.path(),
        &["--bridge", "none", "--insecure-registry", &host],
    );

    let login = |password: &str| {
        cli(
            &daemon,
            &config,
            &["login", "-u", TEST_USER, "--password-stdin", &host],
            Some(format!("{password}\n").as_bytes()),
        )
    };
    let out = login("wrong");
    assert_eq!(
        out.one_line_error(),
        format!("Error: unauthorized: incorrect username or password for {host}")
    );
    assert!(
        !config.exists(),
        "nothing is stored for refused credentials"
    );

    let out = login(TEST_PASSWORD);
    assert_eq!(out.ok(), "Login Succeeded\n");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(config.parent().unwrap()), 0o700);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    // base64("shoal:test-password")
    assert_eq!(json["auths"][&host]["auth"], "c2hvYWw6dGVzdC1wYXNzd29yZA==");

    let image = format!("{host}/guarded/busybox:1");
    import_busybox(&daemon, &config, dir.path(), &image);
    cli(&daemon, &config, &["push", &image], None).ok();
    cli(&daemon, &config, &["image", "rm", &image], None).ok();
    let out = cli(&daemon, &config, &["pull", &image], None);
    assert!(out.ok().ends_with(&format!("{image}\n")), "{out:?}");

    let out = cli(&daemon, &config, &["logout", &host], None);
    assert_eq!(out.ok(), format!("Removing login credentials for {host}\n"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(json["auths"].get(&host).is_none(), "{json}");
    let out = cli(&daemon, &config, &["logout", &host], None);
    assert_eq!(out.ok(), format!("Not logged in to {host}\n"));

    cli(&daemon, &config, &["image", "rm", &image], None).ok();
    let out = cli(&daemon, &config, &["pull", &image], None);
    assert_eq!(
        out.one_line_error(),
        format!(
            "Error: pull access denied for guarded/busybox: the repository does not exist or needs credentials (shoal login {host})"
        )
    );
}

#[test]
fn a_plain_http_registry_must_be_declared_insecure() {
    if !prerequisites(false) {
        return;
    }
    let registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let daemon = Daemon::start_in(dir.path(), &["--bridge", "none"]);
    let out = cli(
        &daemon,
        &config,
        &["pull", &format!("{host}/busybox:1")],
        None,
    );
    assert_eq!(
        out.one_line_error(),
        format!(
            "Error: registry {host} did not answer over HTTPS (the TLS handshake failed); if it serves plain HTTP, start the daemon with --insecure-registry {host}"
        )
    );
    let out = cli(
        &daemon,
        &config,
        &["login", "-u", "a", "--password-stdin", &host],
        Some(b"b\n"),
    );
    assert!(
        out.one_line_error().contains("--insecure-registry"),
        "{out:?}"
    );

    // A malformed value stops the daemon at start, in one line.
    let output = daemon
        .daemon_command()
        .arg("--insecure-registry")
        .arg("http://example:5000")
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("leave out the scheme"), "{stderr}");
}

#[test]
fn a_registry_behind_a_private_ca_is_trusted_with_registry_ca() {
    if !prerequisites(false) {
        return;
    }
    let (ca, chain, key) = shoal_testkit::registry::loopback_tls_certificates();
    let registry = TestRegistry::start_with_tls(&chain, &key);
    let name = format!("{}/busybox:tls", registry.host());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let ca_file = dir.path().join("registry-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();

    // Without the CA, the certificate is refused in one line that says so.
    let untrusting = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(untrusting.path(), &["--bridge", "none"]);
    import_busybox(&daemon, &config, untrusting.path(), &name);
    let out = cli(&daemon, &config, &["push", &name], None);
    let line = out.one_line_error().to_owned();
    assert!(
        line.contains("does not trust") && line.contains("--registry-ca"),
        "{line}"
    );
    drop(daemon);

    // With it, push and pull work.
    let mut daemon = Daemon::start_in(
        dir.path(),
        &[
            "--bridge",
            "none",
            "--registry-ca",
            ca_file.to_str().unwrap(),
        ],
    );
    import_busybox(&daemon, &config, dir.path(), &name);
    let out = cli(&daemon, &config, &["push", &name], None);
    assert_eq!(out.code, 0, "{out:?}\n{}", registry.log());
    cli(&daemon, &config, &["image", "rm", &name], None).ok();
    let out = cli(&daemon, &config, &["pull", "-q", &name], None);
    assert_eq!(out.ok().trim(), name);

    // A file that holds no certificate stops the daemon at start, in one line.
    daemon.terminate();
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let output = daemon
        .daemon_command()
        .arg("--registry-ca")
        .arg(&bad)
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no PEM certificate"), "{stderr}");
}
