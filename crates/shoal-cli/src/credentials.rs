//! `credentials.rs`: the client-side credentials file — `$SHOAL_CONFIG`, else
//! `~/.shoal/config.json` — in Docker's `config.json` shape (`{"auths":{"HOST":{"auth":
//! "base64(user:pass)"}}}`), written atomically with mode 0600 in a 0700 directory; and which
//! registry an image reference belongs to, so pulls and pushes send the right entry.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::CliError;
use crate::error::io_reason;
use crate::format::base64;

/// The key Docker files Docker Hub's credentials under.
pub(crate) const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// The registry of references without a host.
const DOCKER_HUB: &str = "docker.io";

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// Where the credentials file lives: `$SHOAL_CONFIG`, else `$HOME/.shoal/config.json`.
pub(crate) fn config_path() -> Result<PathBuf, CliError> {
    if let Some(path) = std::env::var_os("SHOAL_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CliError::usage("cannot find the credentials file: set HOME or SHOAL_CONFIG")
        })?;
    Ok(Path::new(&home).join(".shoal").join("config.json"))
}

/// The registry host an image reference names, Docker's way: the first path component is a
/// host only if it has a `.` or a `:`, or is `localhost`.
pub(crate) fn registry_of(image: &str) -> String {
    let name = image.split('@').next().unwrap_or_default();
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            match first {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
                other => other.to_owned(),
            }
        }
        _ => DOCKER_HUB.to_owned(),
    }
}

/// The key a server's entry is stored under: Docker Hub keeps Docker's historic URL.
pub(crate) fn server_key(server: &str) -> String {
    let host = host_of(server);
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_owned(),
        _ => host,
    }
}

/// `https://host:5000/v1/` → `host:5000`, for matching keys written by other tools.
fn host_of(server: &str) -> String {
    let rest = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    rest.split('/').next().unwrap_or_default().to_owned()
}

/// The whole file, kept as JSON so fields this client does not know survive a rewrite.
pub(crate) struct ConfigFile {
    path: PathBuf,
    root: Map<String, Value>,
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty one.
    pub(crate) fn load(path: &Path) -> Result<ConfigFile, CliError> {
        let root = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(CliError::usage(format!(
                        "the credentials file {} is not a JSON object: fix or remove it",
                        path.display()
                    )));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => {
                return Err(CliError::ReadInput {
                    path: path.display().to_string(),
                    reason: io_reason(&e).to_lowercase(),
                });
            }
        };
        Ok(ConfigFile {
            path: path.to_owned(),
            root,
        })
    }

    fn auths(&self) -> Option<&Map<String, Value>> {
        self.root.get("auths").and_then(Value::as_object)
    }

    /// The credentials stored for a registry host, matching keys with or without scheme.
    pub(crate) fn get(&self, registry: &str) -> Option<Credentials> {
        let want = server_key(registry);
        let (_, entry) = self
            .auths()?
            .iter()
            .find(|(key, _)| server_key(key) == want)?;
        let auth = entry.get("auth").and_then(Value::as_str)?;
        let decoded = String::from_utf8(base64::decode(auth)?).ok()?;
        let (username, password) = decoded.split_once(':')?;
        Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Stores credentials for a server, replacing any entry for the same host.
    pub(crate) fn set(&mut self, server: &str, credentials: &Credentials) {
        let key = server_key(server);
        let auths = self
            .root
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        let Value::Object(auths) = auths else {
            return;
        };
        auths.retain(|k, _| server_key(k) != key);
        let encoded =
            base64::encode(format!("{}:{}", credentials.username, credentials.password).as_bytes());
        let mut entry = Map::new();
        entry.insert("auth".to_owned(), Value::String(encoded));
        auths.insert(key, Value::Object(entry));
    }

    /// Drops a server's entry; false if there was none.
    pub(crate) fn remove(&mut self, server: &str) -> bool {
        let key = server_key(server);
        let Some(Value::Object(auths)) = self.root.get_mut("auths") else {
            return false;
        };
        let before = auths.len();
        auths.retain(|k, _| server_key(k) != key);
        auths.len() != before
    }

    /// Writes the file atomically (temp file, fsync, rename), 0600 in a 0700 directory.
    pub(crate) fn save(&self) -> Result<(), CliError> {
        let fail = |e: std::io::Error| {
            CliError::usage(format!(
                "cannot write the credentials file {}: {}",
                self.path.display(),
                io_reason(&e).to_lowercase()
            ))
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail)?;
        }
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.json".to_owned());
        let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&Value::Object(self.root.clone()))
            .map_err(std::io::Error::other)
            .map_err(fail)?;
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            // The mode above is masked by the umask; the file must be 0600 regardless.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(&bytes)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_of_references() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("127.0.0.1:5000/app:v1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/o/app@sha256:abc"), "ghcr.io");
        assert_eq!(registry_of("index.docker.io/library/x"), "docker.io");
        assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_key(DOCKER_HUB_KEY), DOCKER_HUB_KEY);
        assert_eq!(server_key("http://reg:5000/"), "reg:5000");
    }

    #[test]
    fn set_get_remove_and_the_file_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.json");
        let mut file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.get("reg:5000"), None);
        let alice = Credentials {
            username: "alice".into(),
            password: "pa:ss".into(),
        };
        file.set("reg:5000", &alice);
        file.set("docker.io", &alice);
        file.save().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["auths"]["reg:5000"]["auth"], "YWxpY2U6cGE6c3M=");
        assert!(json["auths"][DOCKER_HUB_KEY].is_object());

        let mut again = ConfigFile::load(&path).unwrap();
        assert_eq!(again.get("http://reg:5000"), Some(alice.clone()));
        assert_eq!(again.get("index.docker.io"), Some(alice));
        assert!(again.remove("reg:5000"));
        assert!(!again.remove("reg:5000"));
        again.save().unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap().get("reg:5000"), None);

        // Fields we do not know survive; junk is refused in one line.
        std::fs::write(&path, r#"{"credsStore":"x","auths":{}}"#).unwrap();
        let mut kept = ConfigFile::load(&path).unwrap();
        kept.set(
            "r:1",
            &Credentials {
                username: "u".into(),
                password: "p".into(),
            },
        );
        kept.save().unwrap();
        let json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["credsStore"], "x");
        std::fs::write(&path, "[1,2]").unwrap();
        let err = ConfigFile::load(&path).err().unwrap();
        assert!(err.to_string().contains("is not a JSON object"), "{err}");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
