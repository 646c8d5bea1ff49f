//! `login`: checks credentials against a registry the way Docker does — ping `/v2/`, then answer
//! its challenge (Basic on `/v2/` itself, or Bearer through the token realm) — without any
//! repository scope, so it works before the user has a repository.

use std::time::Duration;

use super::RegistryClient;
use super::error::{RegistryError, one_line};

/// Docker Hub's registry host, which `docker.io`, `index.docker.io` and Docker's credential
/// key `https://index.docker.io/v1/` all mean.
const DOCKER_HUB: &str = "index.docker.io";

/// Turns what a user may type as a server (`https://index.docker.io/v1/`, `docker.io`,
/// `localhost:5000`) into the registry host to talk to.
pub fn registry_host(server: &str) -> Result<String, RegistryError> {
    let trimmed = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = trimmed.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(RegistryError::InvalidArgument(format!(
            "invalid registry server {server:?}: expected HOST[:PORT]"
        )));
    }
    Ok(match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    })
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Default, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    realm: Option<String>,
    service: Option<String>,
}

/// Parses the first challenge of a `WWW-Authenticate` value: a scheme, then `key=value` or
/// `key="quoted, value"` pairs separated by commas.
fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut challenge = Challenge {
        scheme: scheme.to_ascii_lowercase(),
        ..Challenge::default()
    };
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => challenge.realm = Some(value.trim().to_owned()),
            "service" => challenge.service = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    challenge
}

impl RegistryClient {
    /// Checks `username`/`password` against `server`. Succeeds as well when the registry asks
    /// for no credentials at all (Docker does the same).
    pub async fn login(
        &self,
        server: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let host = registry_host(server)?;
        let insecure = self.is_insecure(&host);
        let scheme = if insecure { "http" } else { "https" };
        let ctx = super::error::Context {
            registry: &host,
            repository: "",
            reference: &host,
            operation: super::error::Operation::Pull,
            with_credentials: true,
            insecure,
        };
        let client = self.http_client()?;
        let ping = format!("{scheme}://{host}/v2/");
        let first = client
            .get(&ping)
            .send()
            .await
            .map_err(|e| ctx.transport(&e))?;
        let status = first.status().as_u16();
        if status == 200 {
            tracing::info!(registry = %host, "registry needs no credentials");
            return Ok(());
        }
        if status != 401 {
            return Err(server_error(&host, first).await);
        }
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge)
            .unwrap_or_default();
        let answer = match (challenge.scheme.as_str(), &challenge.realm) {
            ("bearer", Some(realm)) => {
                let mut url = reqwest::Url::parse(realm).map_err(|_| RegistryError::Protocol {
                    registry: host.clone(),
                    detail: format!("token realm {:?} is not a URL", one_line(realm)),
                })?;
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = &challenge.service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("account", username);
                    query.append_pair("client_id", "shoal");
                }
                client
                    .get(url)
                    .basic_auth(username, Some(password))
                    .send()
                    .await
                    .map_err(|e| ctx.transport(&e))?
            }
            // Basic, or no usable challenge: try the credentials on /v2/ itself.
            _ => client
                .get(&ping)
                .basic_auth(username, Some(password))
                .send()
                .await
                .map_err(|e| ctx.transport(&e))?,
        };
        match answer.status().as_u16() {
            200 => {
                tracing::info!(registry = %host, user = username, "login succeeded");
                Ok(())
            }
            401 | 403 => Err(RegistryError::BadCredentials { registry: host }),
            _ => Err(server_error(&host, answer).await),
        }
    }

    /// A plain HTTP client with the same TLS and timeout settings as the distribution client.
    fn http_client(&self) -> Result<reqwest::Client, RegistryError> {
        super::ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(super::USER_AGENT)
            .connect_timeout(self.config.connect_timeout)
            .timeout(Duration::from_secs(60))
            // Credentials never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none());
        for pem in &self.config.extra_roots_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                RegistryError::InvalidArgument(format!("invalid registry CA certificate: {e}"))
            })?;
            builder = builder.tls_certs_merge([cert]);
        }
        builder.build().map_err(|e| {
            RegistryError::InvalidArgument(format!("cannot build the HTTP client: {e}"))
        })
    }
}

async fn server_error(host: &str, response: reqwest::Response) -> RegistryError {
    let code = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    RegistryError::Server {
        registry: host.to_owned(),
        code,
        message: one_line(&body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_normalise_to_hosts() {
        assert_eq!(
            registry_host("https://index.docker.io/v1/").unwrap(),
            DOCKER_HUB
        );
        assert_eq!(registry_host("docker.io").unwrap(), DOCKER_HUB);
        assert_eq!(registry_host("localhost:5000").unwrap(), "localhost:5000");
        assert_eq!(
            registry_host("http://10.0.0.5:5000/").unwrap(),
            "10.0.0.5:5000"
        );
        assert!(registry_host("").is_err());
        assert!(registry_host("https://").is_err());
    }

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.realm.as_deref(), Some("https://auth.example/token"));
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        let c = parse_challenge(r#"Basic realm="shoal \"test\"""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.realm.as_deref(), Some("shoal \"test\""));
        assert_eq!(parse_challenge("").scheme, "");
        let c = parse_challenge("Bearer realm=http://x/t, service=s");
        assert_eq!(c.realm.as_deref(), Some("http://x/t"));
        assert_eq!(c.service.as_deref(), Some("s"));
    }
}
