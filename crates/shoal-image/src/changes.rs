//! Dockerfile-like `--change` instructions (`CMD`, `ENV`, `EXPOSE`, ...) applied to an image config
//! by `import`.

use std::collections::HashMap;

use oci_spec::image::Config;

use crate::error::{ImageError, Result};

/// Applies each instruction in order; the first unknown or malformed one fails the whole set.
pub(crate) fn apply_changes(config: &mut Config, changes: &[String]) -> Result<()> {
    for change in changes {
        apply_one(config, change)?;
    }
    Ok(())
}

fn apply_one(config: &mut Config, change: &str) -> Result<()> {
    let bad = |reason: &str| ImageError::InvalidChange {
        change: change.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = change.trim();
    let (instr, args) = match trimmed.split_once(char::is_whitespace) {
        Some((i, a)) => (i, a.trim()),
        None => (trimmed, ""),
    };
    if instr.is_empty() {
        return Err(bad("empty instruction"));
    }
    let upper = instr.to_ascii_uppercase();
    if args.is_empty() {
        return Err(bad(&format!("{upper} needs an argument")));
    }
    match upper.as_str() {
        "CMD" => {
            config.set_cmd(Some(command(args)));
        }
        "ENTRYPOINT" => {
            config.set_entrypoint(Some(command(args)));
        }
        "ENV" => {
            let mut env = config.env().clone().unwrap_or_default();
            for (k, v) in pairs(args).map_err(|r| bad(&r))? {
                let prefix = format!("{k}=");
                env.retain(|e| !e.starts_with(&prefix) && e != &k);
                env.push(format!("{k}={v}"));
            }
            config.set_env(Some(env));
        }
        "LABEL" => {
            let mut labels: HashMap<String, String> = config.labels().clone().unwrap_or_default();
            for (k, v) in pairs(args).map_err(|r| bad(&r))? {
                labels.insert(k, v);
            }
            config.set_labels(Some(labels));
        }
        "WORKDIR" => {
            let dir = words(args).map_err(|r| bad(&r))?.join(" ");
            let joined = if dir.starts_with('/') {
                dir
            } else {
                let base = config
                    .working_dir()
                    .clone()
                    .unwrap_or_else(|| "/".to_owned());
                format!("{}/{dir}", base.trim_end_matches('/'))
            };
            config.set_working_dir(Some(clean_path(&joined)));
        }
        "USER" => {
            let w = words(args).map_err(|r| bad(&r))?;
            let [user] = w.as_slice() else {
                return Err(bad("USER takes one user[:group]"));
            };
            if user.is_empty() || user.split(':').count() > 2 || user.split(':').any(str::is_empty)
            {
                return Err(bad("USER takes one user[:group]"));
            }
            config.set_user(Some(user.clone()));
        }
        "EXPOSE" => {
            let mut ports = config.exposed_ports().clone().unwrap_or_default();
            for w in words(args).map_err(|r| bad(&r))? {
                for p in expose(&w).map_err(|r| bad(&r))? {
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                }
            }
            config.set_exposed_ports(Some(ports));
        }
        "VOLUME" => {
            let list = if args.starts_with('[') {
                serde_json::from_str::<Vec<String>>(args)
                    .map_err(|_| bad("VOLUME JSON form must be an array of strings"))?
            } else {
                words(args).map_err(|r| bad(&r))?
            };
            let mut vols = config.volumes().clone().unwrap_or_default();
            for v in list {
                if !v.starts_with('/') {
                    return Err(bad("volume paths must be absolute"));
                }
                if !vols.contains(&v) {
                    vols.push(v);
                }
            }
            config.set_volumes(Some(vols));
        }
        "STOPSIGNAL" => {
            let sig = args.to_owned();
            if !valid_signal(&sig) {
                return Err(bad(
                    "not a signal name (SIGTERM, TERM, SIGRTMIN+3) or number 1-64",
                ));
            }
            config.set_stop_signal(Some(sig));
        }
        _ => {
            return Err(bad(
                "unknown instruction; supported: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR",
            ));
        }
    }
    Ok(())
}

/// JSON (exec) form when it parses as a string array, else shell form, as Docker decides.
fn command(args: &str) -> Vec<String> {
    if args.starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(args)
    {
        return v;
    }
    vec!["/bin/sh".to_owned(), "-c".to_owned(), args.to_owned()]
}

/// `K=V K2="v 2"`, or the legacy single pair `K some value`.
fn pairs(args: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let first = args.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let (k, v) = args
            .split_once(char::is_whitespace)
            .ok_or_else(|| "want KEY=VALUE pairs or KEY VALUE".to_owned())?;
        check_key(k)?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    let mut out = Vec::new();
    for w in words(args)? {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not KEY=VALUE"))?;
        check_key(k)?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

fn check_key(k: &str) -> std::result::Result<(), String> {
    if k.is_empty() {
        Err("empty key".to_owned())
    } else {
        Ok(())
    }
}

/// Splits on whitespace, honouring double quotes (with backslash escapes), single quotes
/// and backslash escapes outside quotes.
fn words(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n) => cur.push(n),
                            None => return Err("unterminated escape".to_owned()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `80`, `80/udp`, `8000-8002/tcp` → `["80/tcp"]`, ...
fn expose(w: &str) -> std::result::Result<Vec<String>, String> {
    let (ports, proto) = match w.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (w, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("protocol {proto:?} is not tcp, udp or sctp"));
    }
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?} is not a port number 1-65535"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {ports:?} is reversed"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    let rt = |base: &str, sign: char| {
        name.strip_prefix(base).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(sign)
                    .and_then(|n| n.parse::<u8>().ok())
                    .is_some_and(|n| n <= 30)
        })
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

/// Lexically cleans an absolute path (`/a/./b/../c` → `/a/c`).
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(changes: &[&str]) -> Result<Config> {
        let mut c = Config::default();
        let owned: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut c, &owned)?;
        Ok(c)
    }

    #[test]
    fn applies_supported_instructions() {
        let c = apply(&[
            r#"CMD ["a","b"]"#,
            "ENTRYPOINT /bin/echo hi there",
            "ENV A=1 B=\"two words\" C=x\\ y",
            "ENV A=3",
            "env LEGACY some value",
            "WORKDIR /srv",
            "WORKDIR app/../data",
            "USER 1000:100",
            "EXPOSE 80 53/udp 9000-9001",
            "LABEL k=v \"x y\"=z",
            "STOPSIGNAL SIGQUIT",
            "VOLUME [\"/data\"]",
        ])
        .unwrap();
        assert_eq!(c.cmd().clone().unwrap(), vec!["a", "b"]);
        assert_eq!(
            c.entrypoint().clone().unwrap(),
            vec!["/bin/sh", "-c", "/bin/echo hi there"]
        );
        assert_eq!(
            c.env().clone().unwrap(),
            vec!["B=two words", "C=x y", "A=3", "LEGACY=some value"]
        );
        assert_eq!(c.working_dir().clone().unwrap(), "/srv/data");
        assert_eq!(c.user().clone().unwrap(), "1000:100");
        assert_eq!(
            c.exposed_ports().clone().unwrap(),
            vec!["80/tcp", "53/udp", "9000/tcp", "9001/tcp"]
        );
        let labels = c.labels().clone().unwrap();
        assert_eq!(labels["k"], "v");
        assert_eq!(labels["x y"], "z");
        assert_eq!(c.stop_signal().clone().unwrap(), "SIGQUIT");
        assert_eq!(c.volumes().clone().unwrap(), vec!["/data"]);
    }

    #[test]
    fn json_that_does_not_parse_falls_back_to_shell_form() {
        let c = apply(&["CMD [not json"]).unwrap();
        assert_eq!(c.cmd().clone().unwrap(), vec!["/bin/sh", "-c", "[not json"]);
    }

    #[test]
    fn refuses_unknown_and_malformed() {
        for bad in [
            "RUN rm -rf /",
            "FROM scratch",
            "ADD x y",
            "CMD",
            "",
            "ENV =x",
            "ENV A=\"unterminated",
            "EXPOSE 0",
            "EXPOSE 70000",
            "EXPOSE 80/icmp",
            "EXPOSE 90-80",
            "USER a b",
            "USER a:b:c",
            "STOPSIGNAL SIGNOPE",
            "STOPSIGNAL 99",
            "VOLUME relative",
        ] {
            assert!(
                matches!(apply(&[bad]), Err(ImageError::InvalidChange { .. })),
                "{bad:?} should be refused"
            );
        }
        assert!(valid_signal("SIGRTMIN+3"));
        assert!(valid_signal("term"));
        assert!(valid_signal("9"));
    }
}
