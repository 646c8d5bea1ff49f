//! `commands/volume.rs`: `shoal volume create|ls|inspect|rm|prune`, with Docker's table
//! (`DRIVER    VOLUME NAME`), inspect shape, prune prompt and messages.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use shoal_api::v1;

use crate::daemon::Daemon;
use crate::format::table::Table;
use crate::format::time::rfc3339;
use crate::format::{JsonFormat, ListFormat, write_json_lines, write_json_pretty};
use crate::parse;
use crate::stdio::Stdio;
use crate::{CliError, GlobalArgs};

/// Manage volumes.
#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create(CreateArgs),
    /// List volumes
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more volumes
    Inspect(InspectArgs),
    /// Remove one or more volumes
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Remove unused local volumes
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Specify volume driver name
    #[arg(short, long, value_name = "DRIVER", default_value = "local")]
    driver: String,
    /// Set metadata for a volume
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse::label)]
    label: Vec<(String, String)>,
    /// Set driver specific options (type, device, o)
    // Checked by the handler, not clap, so a bad one is one line like the daemon's refusals.
    #[arg(short, long = "opt", value_name = "KEY=VALUE")]
    opt: Vec<String>,
    /// Specify volume name
    #[arg(long = "name", value_name = "NAME", conflicts_with = "volume")]
    name: Option<String>,
    /// Volume name (a random one when omitted)
    #[arg(value_name = "VOLUME")]
    volume: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only display volume names
    #[arg(short, long)]
    quiet: bool,
    /// Provide filter values (e.g. "dangling=true")
    #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = volume_filter)]
    filter: Vec<v1::VolumeFilter>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Output format (JSON is the default and only one)
    #[arg(short, long, value_enum)]
    format: Option<JsonFormat>,
    /// Volume names
    #[arg(value_name = "VOLUME", required = true)]
    volumes: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Force the removal of one or more volumes (a missing one is not an error)
    #[arg(short, long)]
    force: bool,
    /// Volume names
    #[arg(value_name = "VOLUME", required = true)]
    volumes: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Remove all unused volumes, not just anonymous ones
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

/// `-o KEY=VALUE`; the value may itself hold `=` (`-o o=size=64m`).
fn driver_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "invalid volume option {text:?}: expected KEY=VALUE, e.g. type=tmpfs"
        )),
    }
}

fn volume_name(text: &str) -> Result<String, String> {
    shoal_api::validate::volume_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// `-f dangling=true|false`, `name=…`, `label=KEY[=VALUE]`, `driver=…`.
fn volume_filter(text: &str) -> Result<v1::VolumeFilter, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "invalid filter {text:?}: expected KEY=VALUE, e.g. dangling=true"
        ));
    };
    match key {
        "dangling" => {
            if !matches!(
                value.to_ascii_lowercase().as_str(),
                "true" | "false" | "1" | "0"
            ) {
                return Err(format!(
                    "invalid filter {text:?}: dangling takes true or false"
                ));
            }
        }
        "name" | "driver" if value.is_empty() => {
            return Err(format!("invalid filter {text:?}: the value is empty"));
        }
        "name" | "driver" => {}
        "label" => {
            let label_key = value.split_once('=').map_or(value, |(k, _)| k);
            shoal_api::validate::label_key(label_key)
                .map_err(|e| format!("invalid filter {text:?}: {e}"))?;
        }
        other => {
            return Err(format!(
                "invalid filter {text:?}: unknown key {other:?} (use dangling, name, label or driver)"
            ));
        }
    }
    Ok(v1::VolumeFilter {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

pub(crate) async fn run(
    global: &GlobalArgs,
    command: VolumeCommand,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    match command {
        VolumeCommand::Create(args) => create(global, args, io).await,
        VolumeCommand::Ls(args) => ls(global, args, io).await,
        VolumeCommand::Inspect(args) => inspect(global, args, io).await,
        VolumeCommand::Rm(args) => rm(global, args, io).await,
        VolumeCommand::Prune(args) => prune(global, args, io).await,
    }
}

async fn create(global: &GlobalArgs, args: CreateArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let name = args.volume.or(args.name).unwrap_or_default();
    if !name.is_empty() {
        volume_name(&name).map_err(CliError::Usage)?;
    }
    let mut options = BTreeMap::new();
    for text in &args.opt {
        let (key, value) = driver_option(text).map_err(CliError::Usage)?;
        if options.insert(key.clone(), value).is_some() {
            return Err(CliError::usage(format!(
                "volume option {key:?} is given more than once"
            )));
        }
    }
    let request = v1::CreateVolumeRequest {
        name,
        driver: args.driver,
        labels: parse::label_map(&args.label),
        options: options.into_iter().collect(),
    };
    let mut daemon = Daemon::connect(&global.host).await?;
    let volume = daemon.create_volume(request).await?;
    writeln!(io.out, "{}", volume.name)?;
    Ok(0)
}

/// One line of `volume ls`; also its `--format json` object.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct VolumeRow {
    driver: String,
    labels: String,
    mountpoint: String,
    name: String,
    scope: String,
}

impl VolumeRow {
    fn new(volume: &v1::Volume) -> Self {
        let mut labels: Vec<String> = volume
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        VolumeRow {
            driver: volume.driver.clone(),
            labels: labels.join(","),
            mountpoint: volume.mountpoint.clone(),
            name: volume.name.clone(),
            scope: volume.scope.clone(),
        }
    }
}

async fn ls(global: &GlobalArgs, args: LsArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut volumes = daemon.list_volumes(args.filter).await?;
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    if args.quiet {
        for volume in &volumes {
            writeln!(io.out, "{}", volume.name)?;
        }
        return Ok(0);
    }
    let rows: Vec<VolumeRow> = volumes.iter().map(VolumeRow::new).collect();
    match args.format {
        ListFormat::Table => write_volume_table(io.out, &rows)?,
        ListFormat::Json => write_json_lines(io.out, &rows)?,
    }
    Ok(0)
}

fn write_volume_table(out: &mut dyn Write, rows: &[VolumeRow]) -> std::io::Result<()> {
    let mut table = Table::with_header(&["DRIVER", "VOLUME NAME"]);
    for row in rows {
        table.row(vec![row.driver.clone(), row.name.clone()]);
    }
    table.write(out)
}

/// Docker's `docker volume inspect` shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct VolumeView {
    created_at: String,
    driver: String,
    labels: Option<BTreeMap<String, String>>,
    mountpoint: String,
    name: String,
    options: Option<BTreeMap<String, String>>,
    scope: String,
}

impl VolumeView {
    fn new(volume: &v1::Volume) -> Self {
        let map = |m: &std::collections::HashMap<String, String>| {
            (!m.is_empty()).then(|| m.clone().into_iter().collect())
        };
        VolumeView {
            created_at: rfc3339(volume.created_at.as_ref()),
            driver: volume.driver.clone(),
            labels: map(&volume.labels),
            mountpoint: volume.mountpoint.clone(),
            name: volume.name.clone(),
            options: map(&volume.options),
            scope: volume.scope.clone(),
        }
    }
}

async fn inspect(
    global: &GlobalArgs,
    args: InspectArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let _ = args.format;
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut views = Vec::new();
    let mut errors = Vec::new();
    for name in &args.volumes {
        match daemon.inspect_volume(name).await {
            Ok(volume) => views.push(VolumeView::new(&volume)),
            Err(err) => errors.push(err),
        }
    }
    write_json_pretty(io.out, &views)?;
    CliError::collect(errors).map(|()| 0)
}

async fn rm(global: &GlobalArgs, args: RmArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut errors = Vec::new();
    for name in &args.volumes {
        match daemon.remove_volume(name, args.force).await {
            Ok(()) => writeln!(io.out, "{name}")?,
            Err(err) => errors.push(err),
        }
    }
    CliError::collect(errors).map(|()| 0)
}

async fn prune(global: &GlobalArgs, args: PruneArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let what = if args.all {
        "all local volumes"
    } else {
        "anonymous local volumes"
    };
    let warning = format!("This will remove {what} not used by at least one container.");
    if !args.force && !super::confirm(io, &warning)? {
        return Ok(0);
    }
    let mut daemon = Daemon::connect(&global.host).await?;
    let pruned = daemon.prune_volumes(args.all).await?;
    super::print_pruned(
        io,
        "Deleted Volumes:",
        pruned.deleted,
        pruned.reclaimed_bytes,
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_table_is_dockers() {
        let volume = |name: &str| v1::Volume {
            name: name.into(),
            driver: "local".into(),
            scope: "local".into(),
            ..Default::default()
        };
        let rows: Vec<VolumeRow> = [volume("data"), volume("a-much-longer-name")]
            .iter()
            .map(VolumeRow::new)
            .collect();
        let mut out = Vec::new();
        write_volume_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DRIVER    VOLUME NAME\nlocal     data\nlocal     a-much-longer-name\n"
        );
    }

    #[test]
    fn inspect_view_has_dockers_keys() {
        let volume = v1::Volume {
            name: "data".into(),
            driver: "local".into(),
            mountpoint: "/var/lib/shoal/volumes/data/_data".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            labels: [("tier".to_string(), "db".to_string())].into(),
            scope: "local".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(VolumeView::new(&volume)).unwrap();
        assert_eq!(v["Name"], "data");
        assert_eq!(v["Driver"], "local");
        assert_eq!(v["Mountpoint"], "/var/lib/shoal/volumes/data/_data");
        assert_eq!(v["CreatedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["Labels"]["tier"], "db");
        assert!(v["Options"].is_null());
        assert_eq!(v["Scope"], "local");
    }

    #[test]
    fn options_and_filters_parse() {
        assert_eq!(
            driver_option("o=size=64m").unwrap(),
            ("o".to_owned(), "size=64m".to_owned())
        );
        assert!(driver_option("type").is_err());
        assert!(driver_option("=x").is_err());
        assert_eq!(volume_filter("dangling=true").unwrap().key, "dangling");
        assert_eq!(volume_filter("label=a=b").unwrap().value, "a=b");
        assert!(volume_filter("dangling=maybe").is_err());
        assert!(volume_filter("colour=red").is_err());
        assert!(volume_filter("name").is_err());
        assert!(volume_name("a").is_err());
        assert!(volume_name("ok").is_ok());
    }
}
