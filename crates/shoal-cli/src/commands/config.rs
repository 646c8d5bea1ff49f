//! `commands/config.rs`: `shoal config create|ls|inspect|rm`. Names, labels and the payload
//! size are checked before anything is sent; the payload comes from a file or stdin.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;
use shoal_api::v1::{self, Config};
use shoal_api::validate::{self, MAX_CONFIG_SIZE};
use time::OffsetDateTime;

use super::{Out, VersionView, label_lines};
use crate::daemon::Daemon;
use crate::error::io_reason;
use crate::format::table::Table;
use crate::format::time::{ago, human_date, rfc3339};
use crate::format::{JsonFormat, ListFormat, base64, write_inspected, write_json_lines};
use crate::parse::{self, FilterTerm, Filters};
use crate::{CliError, GlobalArgs};

/// Manage swarm configs.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Create a config from a file or STDIN as content
    Create(CreateArgs),
    /// List configs
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more configs
    Inspect(InspectArgs),
    /// Remove one or more configs
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Config labels
    #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse::label)]
    label: Vec<(String, String)>,
    /// Name of the config
    #[arg(value_name = "NAME")]
    name: String,
    /// File to read the content from, or - for standard input
    #[arg(value_name = "FILE|-")]
    file: String,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
    /// Filter output (name=, id=, label=)
    #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = parse::config_filter)]
    filter: Vec<FilterTerm>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long, conflicts_with = "format")]
    pretty: bool,
    /// Output format (JSON is the default)
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
    /// Config IDs, ID prefixes or names
    #[arg(value_name = "CONFIG", required = true)]
    configs: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Config IDs, ID prefixes or names
    #[arg(value_name = "CONFIG", required = true)]
    configs: Vec<String>,
}

pub(crate) async fn run(
    global: &GlobalArgs,
    command: ConfigCommand,
    out: Out<'_>,
) -> Result<(), CliError> {
    match command {
        ConfigCommand::Create(args) => {
            validate::object_name("config", &args.name)?;
            let data = read_data(&args.file, std::io::stdin().lock())?;
            let spec = v1::ConfigSpec {
                annotations: Some(v1::Annotations {
                    name: args.name,
                    labels: parse::label_map(&args.label),
                }),
                data,
            };
            let mut daemon = Daemon::connect(&global.host).await?;
            let config = daemon.create_config(spec).await?;
            writeln!(out, "{}", config.id)?;
            Ok(())
        }
        ConfigCommand::Ls(args) => {
            let filters = Filters::new(&args.filter);
            let mut daemon = Daemon::connect(&global.host).await?;
            let mut configs = daemon.list_configs(filters.to_wire()).await?;
            configs.retain(|c| filters.matches_config(c));
            configs.sort_by(|a, b| (name(a), &a.id).cmp(&(name(b), &b.id)));
            if args.quiet {
                for config in &configs {
                    writeln!(out, "{}", config.id)?;
                }
                return Ok(());
            }
            match args.format {
                ListFormat::Table => write_config_table(out, &configs, OffsetDateTime::now_utc())?,
                ListFormat::Json => {
                    let rows: Vec<_> = configs.iter().map(ConfigRow::new).collect();
                    write_json_lines(out, &rows)?;
                }
            }
            Ok(())
        }
        ConfigCommand::Inspect(args) => {
            let mut daemon = Daemon::connect(&global.host).await?;
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for reference in &args.configs {
                match daemon.get_config(reference).await {
                    Ok(config) => found.push(config),
                    Err(err) => errors.push(err),
                }
            }
            write_inspected(
                out,
                &found,
                args.pretty,
                |out, config| write_config_pretty(out, config),
                ConfigView::new,
            )?;
            CliError::collect(errors)
        }
        ConfigCommand::Rm(args) => {
            let mut daemon = Daemon::connect(&global.host).await?;
            let mut errors = Vec::new();
            for reference in &args.configs {
                // The request takes an ID; resolve names and prefixes first.
                let result = match daemon.get_config(reference).await {
                    Ok(config) => daemon.remove_config(&config.id).await,
                    Err(err) => Err(err),
                };
                match result {
                    Ok(()) => writeln!(out, "{reference}")?,
                    Err(err) => errors.push(err),
                }
            }
            CliError::collect(errors)
        }
    }
}

/// The payload from `source` (`-` is `stdin`), refused past [`MAX_CONFIG_SIZE`] without
/// reading more than one byte beyond it.
fn read_data(source: &str, stdin: impl Read) -> Result<Vec<u8>, CliError> {
    let limit = MAX_CONFIG_SIZE as u64 + 1;
    let mut data = Vec::new();
    if source == "-" {
        stdin
            .take(limit)
            .read_to_end(&mut data)
            .map_err(|err| read_error("standard input", &err))?;
        if data.len() > MAX_CONFIG_SIZE {
            return Err(CliError::usage(format!(
                "config data from standard input is over the limit of {MAX_CONFIG_SIZE} bytes"
            )));
        }
        return Ok(data);
    }
    let file = std::fs::File::open(source).map_err(|err| read_error(source, &err))?;
    let meta = file.metadata().map_err(|err| read_error(source, &err))?;
    if meta.is_dir() {
        return Err(CliError::ReadInput {
            path: source.to_owned(),
            reason: "it is a directory".to_owned(),
        });
    }
    // The size the file claims gives the exact figure in the message; `take` guards files
    // that grow or do not know their size (pipes, /proc).
    validate::size("config", meta.len() as usize, MAX_CONFIG_SIZE)?;
    file.take(limit)
        .read_to_end(&mut data)
        .map_err(|err| read_error(source, &err))?;
    validate::size("config", data.len(), MAX_CONFIG_SIZE)?;
    Ok(data)
}

fn read_error(path: &str, err: &std::io::Error) -> CliError {
    CliError::ReadInput {
        path: path.to_owned(),
        reason: io_reason(err).to_lowercase(),
    }
}

fn name(config: &Config) -> &str {
    config
        .spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

fn labels(config: &Config) -> BTreeMap<String, String> {
    config
        .spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map(|a| a.labels.clone().into_iter().collect())
        .unwrap_or_default()
}

fn write_config_table(
    out: Out<'_>,
    configs: &[Config],
    now: OffsetDateTime,
) -> std::io::Result<()> {
    let mut table = Table::with_header(&["ID", "NAME", "CREATED", "UPDATED"]);
    for config in configs {
        let meta = config.meta.as_ref();
        table.row(vec![
            config.id.clone(),
            name(config).to_owned(),
            ago(meta.and_then(|m| m.created_at.as_ref()), now),
            ago(meta.and_then(|m| m.updated_at.as_ref()), now),
        ]);
    }
    table.write(out)
}

/// `config ls --format json`: absolute times, since programs cannot use "2 hours ago".
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    created_at: String,
    updated_at: String,
    labels: BTreeMap<String, String>,
}

impl ConfigRow {
    fn new(config: &Config) -> Self {
        let meta = config.meta.as_ref();
        ConfigRow {
            id: config.id.clone(),
            name: name(config).to_owned(),
            created_at: rfc3339(meta.and_then(|m| m.created_at.as_ref())),
            updated_at: rfc3339(meta.and_then(|m| m.updated_at.as_ref())),
            labels: labels(config),
        }
    }
}

/// Docker's `docker config inspect` shape; `Data` is base64 as Go encodes `[]byte`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigView {
    #[serde(rename = "ID")]
    id: String,
    version: VersionView,
    created_at: String,
    updated_at: String,
    spec: ConfigSpecView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigSpecView {
    name: String,
    labels: BTreeMap<String, String>,
    data: String,
}

impl ConfigView {
    fn new(config: &Config) -> Self {
        let meta = config.meta.unwrap_or_default();
        ConfigView {
            id: config.id.clone(),
            version: VersionView {
                index: meta.version,
            },
            created_at: rfc3339(meta.created_at.as_ref()),
            updated_at: rfc3339(meta.updated_at.as_ref()),
            spec: ConfigSpecView {
                name: name(config).to_owned(),
                labels: labels(config),
                data: base64::encode(config.spec.as_ref().map_or(&[][..], |s| &s.data)),
            },
        }
    }
}

/// `config inspect --pretty`: Docker's layout, with the data as text at the end.
fn write_config_pretty(out: Out<'_>, config: &Config) -> std::io::Result<()> {
    let meta = config.meta.unwrap_or_default();
    let mut t = Table::new();
    t.kv("ID:", config.id.clone());
    t.kv("Name:", name(config));
    if let Some(a) = config.spec.as_ref().and_then(|s| s.annotations.as_ref())
        && !a.labels.is_empty()
    {
        t.line("Labels:");
        label_lines(&a.labels).into_iter().for_each(|l| t.line(l));
    }
    t.kv("Created at:", human_date(meta.created_at.as_ref()));
    t.kv("Updated at:", human_date(meta.updated_at.as_ref()));
    t.line("Data:");
    t.write(out)?;
    let data = config.spec.as_ref().map_or(&[][..], |s| &s.data);
    let text = String::from_utf8_lossy(data);
    out.write_all(text.as_bytes())?;
    if !text.is_empty() && !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn sample_config() -> Config {
        Config {
            id: "cfg0000000000000000000001".into(),
            meta: Some(v1::Meta {
                version: 7,
                created_at: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                updated_at: Some(Timestamp {
                    seconds: 1_700_003_600,
                    nanos: 0,
                }),
            }),
            spec: Some(v1::ConfigSpec {
                annotations: Some(v1::Annotations {
                    name: "app.conf".into(),
                    labels: [("env".to_string(), "prod".to_string())].into(),
                }),
                data: b"port=80\n".to_vec(),
            }),
        }
    }

    #[test]
    fn inspect_view_has_docker_shape() {
        let v = serde_json::to_value(ConfigView::new(&sample_config())).unwrap();
        assert_eq!(v["ID"], "cfg0000000000000000000001");
        assert_eq!(v["Version"]["Index"], 7);
        assert_eq!(v["CreatedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["UpdatedAt"], "2023-11-14T23:13:20Z");
        assert_eq!(v["Spec"]["Name"], "app.conf");
        assert_eq!(v["Spec"]["Labels"]["env"], "prod");
        assert_eq!(v["Spec"]["Data"], "cG9ydD04MAo=");
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 5, "{keys:?}");
    }

    #[test]
    fn ls_table_uses_relative_times() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000 + 2 * 3600).unwrap();
        let mut out = Vec::new();
        write_config_table(&mut out, &[sample_config()], now).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
ID                          NAME       CREATED       UPDATED
cfg0000000000000000000001   app.conf   2 hours ago   About an hour ago
"
        );
        let row = serde_json::to_value(ConfigRow::new(&sample_config())).unwrap();
        assert_eq!(row["CreatedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(row["Labels"]["env"], "prod");
    }

    #[test]
    fn pretty_view_ends_with_the_data() {
        let mut out = Vec::new();
        write_config_pretty(&mut out, &sample_config()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
ID:           cfg0000000000000000000001
Name:         app.conf
Labels:
 - env=prod
Created at:   2023-11-14 22:13:20 +0000 UTC
Updated at:   2023-11-14 23:13:20 +0000 UTC
Data:
port=80
"
        );
    }

    #[test]
    fn data_from_stdin_and_files() {
        assert_eq!(read_data("-", &b"hello"[..]).unwrap(), b"hello");
        let big = vec![b'x'; MAX_CONFIG_SIZE + 10];
        let err = read_data("-", &big[..]).unwrap_err().to_string();
        assert!(err.contains("over the limit of 1024000 bytes"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        std::fs::write(&path, b"data").unwrap();
        assert_eq!(
            read_data(path.to_str().unwrap(), std::io::empty()).unwrap(),
            b"data"
        );

        std::fs::write(&path, &big).unwrap();
        let err = read_data(path.to_str().unwrap(), std::io::empty())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config is 1024010 bytes, over the limit of 1024000 bytes"
        );

        let missing = dir.path().join("missing.txt");
        let err = read_data(missing.to_str().unwrap(), std::io::empty())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot read {}: no such file or directory",
                missing.display()
            )
        );
        let err = read_data(dir.path().to_str().unwrap(), std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("it is a directory"), "{err}");
    }
}
