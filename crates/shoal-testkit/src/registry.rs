//! A real registry for tests: Debian's `docker-registry` (distribution 2.x) serving on a free
//! 127.0.0.1 port from a private storage directory, optionally behind htpasswd Basic auth, with
//! nothing that reaches out (no notifications, proxying, redis or reporting), killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `docker-registry` package installs the server.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A user the htpasswd registry knows.
pub const TEST_USER: &str = "shoal";
/// That user's password.
pub const TEST_PASSWORD: &str = "test-password";
/// bcrypt (cost 4, so each request checks it fast) of [`TEST_PASSWORD`]: a test fixture,
/// made once with `crypt(3)`'s Blowfish method.
const TEST_PASSWORD_BCRYPT: &str = "$2b$04$FO8saL/U5O51fLLxYVb1vuLuhZ.xlCRkn6/NXhHlavtsFiHTPMTea";

/// Whether the registry binary is installed (tests skip themselves when not).
pub fn available() -> bool {
    Path::new(DOCKER_REGISTRY).exists()
}

/// A running registry; dropping it kills the process and removes its storage.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl TestRegistry {
    /// An open registry: anyone may pull and push.
    pub fn start() -> TestRegistry {
        TestRegistry::launch(false, None)
    }

    /// A registry that wants [`TEST_USER`]/[`TEST_PASSWORD`] (HTTP Basic) for everything.
    pub fn start_with_auth() -> TestRegistry {
        TestRegistry::launch(true, None)
    }

    /// An open registry serving HTTPS with this PEM certificate (chain) and key.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> TestRegistry {
        TestRegistry::launch(false, Some((cert_pem, key_pem)))
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the server logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn launch(with_auth: bool, tls: Option<(&str, &str)>) -> TestRegistry {
        assert!(
            available(),
            "{DOCKER_REGISTRY} is missing (apt-get install docker-registry)"
        );
        // A port can be taken between probing and binding: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("registry temp dir");
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                config_yaml(dir.path(), port, with_auth, tls.is_some()),
            )
            .expect("write registry config");
            if let Some((cert, key)) = tls {
                std::fs::write(dir.path().join("tls.crt"), cert).expect("write certificate");
                std::fs::write(dir.path().join("tls.key"), key).expect("write key");
            }
            if with_auth {
                std::fs::write(
                    dir.path().join("htpasswd"),
                    format!("{TEST_USER}:{TEST_PASSWORD_BCRYPT}\n"),
                )
                .expect("write htpasswd");
            }
            let log = std::fs::File::create(dir.path().join("registry.log"))
                .expect("create registry log");
            let child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config)
                // REGISTRY_* variables would override the file (a proxy remote URL, say).
                .env_clear()
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut registry = TestRegistry {
                dir,
                child: Some(child),
                port,
            };
            if registry.wait_ready(Duration::from_secs(20), tls.is_some()) {
                return registry;
            }
            last_log = registry.log();
        }
        panic!("docker-registry did not start; last log:\n{last_log}");
    }

    /// Waits until `GET /v2/` answers (200, or 401 with auth; with TLS, until the port
    /// accepts connections); false if the server died.
    fn wait_ready(&mut self, limit: Duration, tls: bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if tls && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Some(status) = http_status(self.port, "/v2/")
                && (status == 200 || status == 401)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        false
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// The status of `GET path` over plain HTTP, if anything answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn config_yaml(dir: &Path, port: u16, with_auth: bool, tls: bool) -> String {
    let storage = dir.join("storage");
    let mut yaml = format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
health:
  storagedriver:
    enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: shoal-test-registry
",
        storage = storage.display()
    );
    // Still inside `http:`, which comes last above.
    if tls {
        yaml.push_str(&format!(
            "  tls:
    certificate: {}
    key: {}
",
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        ));
    }
    if with_auth {
        yaml.push_str(&format!(
            "auth:
  htpasswd:
    realm: shoal-test
    path: {}
",
            dir.join("htpasswd").display()
        ));
    }
    yaml
}

/// A CA and a certificate for `127.0.0.1` and `localhost` signed by it, for a TLS test registry:
/// (CA PEM, server certificate PEM, server key PEM).
pub fn loopback_tls_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params
        .clone()
        .self_signed(&ca_key)
        .expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let server = params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    (ca_cert.pem(), server.pem(), server_key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_stops() {
        if !available() {
            eprintln!("skipped: {DOCKER_REGISTRY} is missing");
            return;
        }
        let registry = TestRegistry::start();
        let port = registry.port();
        assert_eq!(http_status(port, "/v2/"), Some(200), "{}", registry.log());
        drop(registry);
        assert_eq!(
            http_status(port, "/v2/"),
            None,
            "the registry outlived its drop"
        );

        let guarded = TestRegistry::start_with_auth();
        assert_eq!(
            http_status(guarded.port(), "/v2/"),
            Some(401),
            "{}",
            guarded.log()
        );
    }
}
