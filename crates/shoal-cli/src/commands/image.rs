//! `commands/image.rs`: `shoal image ls|rm|inspect|tag|history|load|save|import|prune|pull|push`
//! and their top-level aliases (`images`, `rmi`, `tag`, `load`, `save`, `import`, `history`,
//! `pull`, `push`), with Docker's tables, sizes, inspect shape, progress and messages. Tarballs
//! stream in 1 MiB chunks; pulls and pushes carry the stored credentials of the image's registry.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use shoal_api::v1::{self, ImageSummary};
use time::OffsetDateTime;

use crate::commands::Out;
use crate::credentials::{ConfigFile, config_path, registry_of};
use crate::daemon::Daemon;
use crate::error::io_reason;
use crate::format::container::{ellipsis, short_id};
use crate::format::progress::ProgressDisplay;
use crate::format::table::Table;
use crate::format::time::{ago, rfc3339};
use crate::format::units::human_size;
use crate::format::{JsonFormat, ListFormat, write_json_lines, write_json_pretty};
use crate::parse::container as pc;
use crate::stdio::{Stdio, read_chunks};
use crate::{CliError, GlobalArgs};

/// How much of a tarball each upload message carries.
pub(crate) const CHUNK_SIZE: usize = 1 << 20;

/// Manage images.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List images
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove one or more images
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(SaveArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(ImportArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short, long)]
    all: bool,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
    /// Only images of this repository (and tag)
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Force removal of the image
    #[arg(short, long)]
    force: bool,
    /// Image names or IDs
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Output format (JSON is the default and only one)
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
    /// Image names or IDs
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image to tag
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    source: String,
    /// The new reference
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    target: String,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Image name or ID
    #[arg(value_name = "IMAGE")]
    image: String,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long, value_name = "FILE")]
    input: Option<String>,
    /// Suppress the load output (accepted for Docker compatibility; there is no progress)
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short, long, value_name = "FILE")]
    output: Option<String>,
    /// Image names or IDs
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long = "change", value_name = "INSTRUCTION", value_parser = pc::import_change)]
    change: Vec<String>,
    /// Set commit message for imported image
    #[arg(short, long, value_name = "MESSAGE")]
    message: Option<String>,
    /// A root filesystem tarball, or - for STDIN
    #[arg(value_name = "FILE|-")]
    file: String,
    /// Name (and tag) for the new image
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    /// The image: NAME[:TAG|@DIGEST]
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    image: String,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
    /// The image: NAME[:TAG]
    #[arg(value_name = "NAME[:TAG]")]
    image: String,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

pub(crate) async fn run(
    global: &GlobalArgs,
    command: ImageCommand,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    match command {
        ImageCommand::Ls(args) => ls(global, args, io).await,
        ImageCommand::Rm(args) => rm(global, args, io).await,
        ImageCommand::Inspect(args) => inspect(global, args, io).await,
        ImageCommand::Tag(args) => {
            let mut daemon = Daemon::connect(&global.host).await?;
            daemon.tag_image(&args.source, &args.target).await?;
            Ok(0)
        }
        ImageCommand::History(args) => history(global, args, io).await,
        ImageCommand::Load(args) => load(global, args, io).await,
        ImageCommand::Save(args) => save(global, args, io).await,
        ImageCommand::Import(args) => import(global, args, io).await,
        ImageCommand::Prune(args) => prune(global, args, io).await,
        ImageCommand::Pull(args) => pull(global, args, io).await,
        ImageCommand::Push(args) => push(global, args, io).await,
    }
}

// ls ----------------------------------------------------------------------------------------

/// `name:tag` split Docker's way: the tag follows the last `:` after the last `/` (so a
/// registry port is not a tag). `<none>` where there is none.
fn split_reference(reference: &str) -> (String, String) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(colon) => {
            let at = slash + colon;
            (reference[..at].to_owned(), reference[at + 1..].to_owned())
        }
        None => (reference.to_owned(), "<none>".to_owned()),
    }
}

/// One line of `image ls`; also its `--format json` object.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
struct ImageRow {
    #[serde(rename = "ID")]
    id: String,
    repository: String,
    tag: String,
    digest: String,
    created_at: String,
    created_since: String,
    size: String,
}

/// The rows of one image: one per tag, or one `<none>` row (named by its digest's repository
/// when it has one).
fn image_rows(image: &ImageSummary, now: OffsetDateTime, truncate: bool) -> Vec<ImageRow> {
    let id = if truncate {
        short_id(&image.id)
    } else {
        image.id.clone()
    };
    let digest = image
        .repo_digests
        .first()
        .and_then(|d| d.split_once('@'))
        .map_or_else(|| "<none>".to_owned(), |(_, digest)| digest.to_owned());
    let row = |repository: String, tag: String| ImageRow {
        id: id.clone(),
        repository,
        tag,
        digest: digest.clone(),
        created_at: rfc3339(image.created.as_ref()),
        created_since: ago(image.created.as_ref(), now),
        size: human_size(image.size),
    };
    let tags: Vec<&String> = image
        .repo_tags
        .iter()
        .filter(|t| t.as_str() != "<none>:<none>")
        .collect();
    if tags.is_empty() {
        let repository = image
            .repo_digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map_or("<none>", |(repo, _)| repo);
        return vec![row(repository.to_owned(), "<none>".to_owned())];
    }
    tags.into_iter()
        .map(|t| {
            let (repository, tag) = split_reference(t);
            row(repository, tag)
        })
        .collect()
}

async fn ls(global: &GlobalArgs, args: LsArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut images = daemon.list_images(args.all).await?;
    images.sort_by(|a, b| {
        let key = |i: &ImageSummary| i.created.map(|t| (t.seconds, t.nanos));
        key(b).cmp(&key(a)).then_with(|| a.id.cmp(&b.id))
    });
    let now = OffsetDateTime::now_utc();
    let mut rows: Vec<ImageRow> = images
        .iter()
        .flat_map(|i| image_rows(i, now, !args.no_trunc))
        .collect();
    if let Some(reference) = &args.reference {
        let (repository, tag) = match reference.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (reference.as_str(), None),
        };
        rows.retain(|r| r.repository == repository && tag.is_none_or(|t| r.tag == t));
    }
    if args.quiet {
        // One line per image, even when it has several tags.
        let mut seen = std::collections::HashSet::new();
        for row in rows.iter().filter(|r| seen.insert(r.id.clone())) {
            writeln!(io.out, "{}", row.id)?;
        }
        return Ok(0);
    }
    match args.format {
        ListFormat::Table => write_image_table(io.out, &rows)?,
        ListFormat::Json => write_json_lines(io.out, &rows)?,
    }
    Ok(0)
}

fn write_image_table(out: &mut dyn Write, rows: &[ImageRow]) -> std::io::Result<()> {
    let mut table = Table::with_header(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    for row in rows {
        table.row(vec![
            row.repository.clone(),
            row.tag.clone(),
            row.id.clone(),
            row.created_since.clone(),
            row.size.clone(),
        ]);
    }
    table.write(out)
}

// rm ----------------------------------------------------------------------------------------

async fn rm(global: &GlobalArgs, args: RmArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut errors = Vec::new();
    for reference in &args.images {
        match daemon.remove_image(reference, args.force).await {
            Ok(removed) => {
                for r in removed {
                    if !r.untagged.is_empty() {
                        writeln!(io.out, "Untagged: {}", r.untagged)?;
                    }
                    if !r.deleted.is_empty() {
                        writeln!(io.out, "Deleted: {}", r.deleted)?;
                    }
                }
            }
            Err(err) => errors.push(err),
        }
    }
    CliError::collect(errors).map(|()| 0)
}

// inspect -----------------------------------------------------------------------------------

/// Docker's `docker image inspect` shape, for the fields the contract carries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImageView {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    created: String,
    size: u64,
    architecture: String,
    os: String,
    config: serde_json::Value,
    #[serde(rename = "RootFS")]
    root_fs: RootFsView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RootFsView {
    #[serde(rename = "Type")]
    kind: &'static str,
    layers: Vec<String>,
}

impl ImageView {
    fn new(info: &v1::ImageInfo) -> Self {
        let summary = info.summary.clone().unwrap_or_default();
        // The OCI image configuration's `config` object already uses Docker's key names.
        let config = serde_json::from_slice::<serde_json::Value>(&info.config_json)
            .ok()
            .and_then(|mut c| c.get_mut("config").map(serde_json::Value::take))
            .unwrap_or(serde_json::Value::Null);
        ImageView {
            id: summary.id,
            repo_tags: summary.repo_tags,
            repo_digests: summary.repo_digests,
            created: rfc3339(summary.created.as_ref()),
            size: summary.size,
            architecture: info.architecture.clone(),
            os: info.os.clone(),
            config,
            root_fs: RootFsView {
                kind: "layers",
                layers: info.layers.clone(),
            },
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
    for reference in &args.images {
        match daemon.inspect_image(reference).await {
            Ok(info) if info.summary.is_none() => {
                errors.push(CliError::Protocol("Inspect returned no image summary"));
            }
            Ok(info) => views.push(ImageView::new(&info)),
            Err(err) => errors.push(err),
        }
    }
    write_json_pretty(io.out, &views)?;
    CliError::collect(errors).map(|()| 0)
}

// history -----------------------------------------------------------------------------------

async fn history(
    global: &GlobalArgs,
    args: HistoryArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let entries = daemon.image_history(&args.image).await?;
    write_history(io.out, &entries, OffsetDateTime::now_utc(), &args)?;
    Ok(0)
}

fn write_history(
    out: &mut dyn Write,
    entries: &[v1::HistoryEntry],
    now: OffsetDateTime,
    args: &HistoryArgs,
) -> std::io::Result<()> {
    let id = |e: &v1::HistoryEntry| {
        if e.id.is_empty() || e.id == "<missing>" {
            "<missing>".to_owned()
        } else if args.no_trunc {
            e.id.clone()
        } else {
            short_id(&e.id)
        }
    };
    if args.quiet {
        for entry in entries {
            writeln!(out, "{}", id(entry))?;
        }
        return Ok(());
    }
    let mut table = Table::with_header(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    for entry in entries {
        let created_by = entry.created_by.replace('\t', " ");
        table.row(vec![
            id(entry),
            ago(entry.created.as_ref(), now),
            if args.no_trunc {
                created_by
            } else {
                ellipsis(&created_by, 45)
            },
            human_size(entry.size),
            entry.comment.clone(),
        ]);
    }
    table.write(out)
}

// load, save, import ------------------------------------------------------------------------

fn read_error(path: &str, err: &std::io::Error) -> CliError {
    CliError::ReadInput {
        path: path.to_owned(),
        reason: io_reason(err).to_lowercase(),
    }
}

/// A reader for `path`, opened before anything is sent so a bad path fails at once.
fn open_input(path: &str) -> Result<Box<dyn std::io::Read + Send>, CliError> {
    let file = std::fs::File::open(path).map_err(|err| read_error(path, &err))?;
    let meta = file.metadata().map_err(|err| read_error(path, &err))?;
    if meta.is_dir() {
        return Err(CliError::ReadInput {
            path: path.to_owned(),
            reason: "it is a directory".to_owned(),
        });
    }
    Ok(Box::new(file))
}

async fn load(global: &GlobalArgs, args: LoadArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let _ = args.quiet;
    let (reader, source) = match &args.input {
        Some(path) => (open_input(path)?, path.clone()),
        None => {
            if io.stdin_tty {
                return Err(CliError::usage(
                    "requested load from stdin, but stdin is empty (use -i FILE or redirect)",
                ));
            }
            (io.input.take_reader(), "standard input".to_owned())
        }
    };
    let mut daemon = Daemon::connect(&global.host).await?;
    let chunks = read_chunks(reader, CHUNK_SIZE);
    let loaded = daemon.load_images(chunks, &source).await?;
    for image in &loaded.loaded {
        if image.repo_tags.is_empty() {
            writeln!(io.out, "Loaded image ID: {}", image.id)?;
        }
        for tag in &image.repo_tags {
            writeln!(io.out, "Loaded image: {tag}")?;
        }
    }
    Ok(0)
}

/// Docker's refusal to write an archive to a terminal.
pub(crate) fn check_archive_target(output: Option<&str>, stdout_tty: bool) -> Result<(), CliError> {
    if output.is_none() && stdout_tty {
        return Err(CliError::usage(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect",
        ));
    }
    Ok(())
}

/// Writes an archive the daemon streams to stdout, or to `output`: beside it first and renamed
/// into place, so a failure leaves no half-written file.
pub(crate) async fn write_archive<M>(
    daemon: &Daemon,
    mut stream: tonic::Streaming<M>,
    data: impl Fn(M) -> Vec<u8>,
    output: Option<&str>,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let Some(path) = output else {
        while let Some(chunk) = stream.message().await.map_err(|s| daemon.fail(s))? {
            io.out.write_all(&data(chunk))?;
        }
        return Ok(0);
    };
    let target = Path::new(path);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".to_owned());
    let partial = target.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let write_error = |err: &std::io::Error| {
        CliError::usage(format!(
            "cannot write {path}: {}",
            io_reason(err).to_lowercase()
        ))
    };
    let mut file = std::fs::File::create(&partial).map_err(|e| write_error(&e))?;
    let result = async {
        while let Some(chunk) = stream.message().await.map_err(|s| daemon.fail(s))? {
            file.write_all(&data(chunk)).map_err(|e| write_error(&e))?;
        }
        file.sync_all().map_err(|e| write_error(&e))?;
        std::fs::rename(&partial, target).map_err(|e| write_error(&e))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map(|()| 0)
}

async fn save(global: &GlobalArgs, args: SaveArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    check_archive_target(args.output.as_deref(), io.stdout_tty)?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let stream = daemon.save_images(args.images.clone()).await?;
    write_archive(&daemon, stream, |c| c.data, args.output.as_deref(), io).await
}

async fn import(global: &GlobalArgs, args: ImportArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    if args.file.contains("://") {
        return Err(CliError::usage(format!(
            "cannot import from {}: only a file or - (STDIN) is supported; download it first",
            args.file
        )));
    }
    let (reader, source) = if args.file == "-" {
        (io.input.take_reader(), "standard input".to_owned())
    } else {
        (open_input(&args.file)?, args.file.clone())
    };
    let spec = v1::ImportSpec {
        reference: args.reference.clone().unwrap_or_default(),
        changes: args.change.clone(),
        message: args.message.clone().unwrap_or_default(),
    };
    let mut daemon = Daemon::connect(&global.host).await?;
    let chunks = read_chunks(reader, CHUNK_SIZE);
    let image = daemon.import_image(spec, chunks, &source).await?;
    writeln!(io.out, "{}", image.id)?;
    Ok(0)
}

// pull, push --------------------------------------------------------------------------------

/// Whether a reference names a tag or digest (Docker says which tag it assumes otherwise).
fn has_tag_or_digest(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    image.contains('@') || last.contains(':')
}

/// `busybox` → `busybox:latest`, as Docker names what it could not find.
pub(crate) fn with_default_tag(image: &str) -> String {
    if has_tag_or_digest(image) {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// The stored credentials for the registry `image` lives in, if any.
fn stored_auth(image: &str) -> Result<Option<v1::RegistryAuth>, CliError> {
    let file = ConfigFile::load(&config_path()?)?;
    Ok(file.get(&registry_of(image)).map(|c| v1::RegistryAuth {
        username: c.username,
        password: c.password,
        registry_token: String::new(),
    }))
}

/// Pulls `image`, showing Docker's progress on `out` (unless `quiet`); returns the result.
pub(crate) async fn pull_with_progress(
    daemon: &mut Daemon,
    image: &str,
    quiet: bool,
    tty: bool,
    out: Out<'_>,
) -> Result<v1::PulledImage, CliError> {
    if !quiet && !has_tag_or_digest(image) {
        writeln!(out, "Using default tag: latest")?;
    }
    let auth = stored_auth(image)?;
    let mut stream = daemon.pull_image(image, auth).await?;
    let mut display = ProgressDisplay::new(tty);
    let mut pulled = None;
    while let Some(message) = stream.message().await.map_err(|s| daemon.fail(s))? {
        if let Some(result) = message.pulled {
            pulled = Some(result);
        } else if !quiet {
            display.show(out, &message)?;
        }
    }
    let pulled = pulled.ok_or(CliError::Protocol("the pull ended without a result"))?;
    if !quiet {
        writeln!(out, "Digest: {}", pulled.digest)?;
        if pulled.downloaded_newer {
            writeln!(
                out,
                "Status: Downloaded newer image for {}",
                pulled.familiar
            )?;
        } else {
            writeln!(out, "Status: Image is up to date for {}", pulled.familiar)?;
        }
    }
    Ok(pulled)
}

async fn pull(global: &GlobalArgs, args: PullArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let pulled =
        pull_with_progress(&mut daemon, &args.image, args.quiet, io.stdout_tty, io.out).await?;
    writeln!(io.out, "{}", pulled.reference)?;
    Ok(0)
}

async fn push(global: &GlobalArgs, args: PushArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    if !args.quiet && !has_tag_or_digest(&args.image) {
        writeln!(io.out, "Using default tag: latest")?;
    }
    let auth = stored_auth(&args.image)?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let mut stream = daemon.push_image(&args.image, auth).await?;
    let mut display = ProgressDisplay::new(io.stdout_tty);
    let mut pushed = None;
    while let Some(message) = stream.message().await.map_err(|s| daemon.fail(s))? {
        if let Some(result) = message.pushed {
            pushed = Some(result);
        } else if !args.quiet {
            display.show(io.out, &message)?;
        }
    }
    let pushed = pushed.ok_or(CliError::Protocol("the push ended without a result"))?;
    if args.quiet {
        writeln!(io.out, "{}", with_default_tag(&args.image))?;
    } else {
        writeln!(
            io.out,
            "{}: digest: {} size: {}",
            pushed.tag, pushed.digest, pushed.size
        )?;
    }
    Ok(0)
}

// prune -------------------------------------------------------------------------------------

async fn prune(global: &GlobalArgs, args: PruneArgs, io: &mut Stdio<'_>) -> Result<u8, CliError> {
    if !args.force && !super::confirm(io, "This will remove all dangling images.")? {
        return Ok(0);
    }
    let mut daemon = Daemon::connect(&global.host).await?;
    let pruned = daemon.prune_images().await?;
    super::print_pruned(
        io,
        "Deleted Images:",
        pruned.deleted.iter().map(|d| format!("deleted: {d}")),
        pruned.reclaimed_bytes,
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn summary(id: &str, tags: &[&str], size: u64, age_secs: i64) -> ImageSummary {
        ImageSummary {
            id: format!("sha256:{id}"),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![],
            created: Some(Timestamp {
                seconds: 1_700_000_000 - age_secs,
                nanos: 0,
            }),
            size,
        }
    }

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(
            split_reference("alpine:3.19"),
            ("alpine".into(), "3.19".into())
        );
        assert_eq!(
            split_reference("registry:5000/team/app:v1"),
            ("registry:5000/team/app".into(), "v1".into())
        );
        assert_eq!(
            split_reference("registry:5000/app"),
            ("registry:5000/app".into(), "<none>".into())
        );
    }

    #[test]
    fn ls_rows_per_tag() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let id = "7e01a0d0a1dcd9e539f8e9bbd80106d59efbdf97293b3d38f5d7a34501526cdb";
        let image = summary(id, &["alpine:3.19", "alpine:latest"], 7_376_000, 14 * 86400);
        let rows = image_rows(&image, now, true);
        assert_eq!(rows.len(), 2);
        let mut out = Vec::new();
        write_image_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
REPOSITORY   TAG       IMAGE ID       CREATED       SIZE
alpine       3.19      7e01a0d0a1dc   2 weeks ago   7.38MB
alpine       latest    7e01a0d0a1dc   2 weeks ago   7.38MB
"
        );
        let dangling = ImageSummary {
            repo_digests: vec!["app@sha256:abc".into()],
            ..summary(id, &[], 10, 60)
        };
        let rows = image_rows(&dangling, now, false);
        assert_eq!(rows[0].repository, "app");
        assert_eq!(rows[0].tag, "<none>");
        assert_eq!(rows[0].digest, "sha256:abc");
        assert!(rows[0].id.starts_with("sha256:"));
    }

    #[test]
    fn inspect_view_takes_the_config_object() {
        let info = v1::ImageInfo {
            summary: Some(summary("abc", &["app:1"], 42, 0)),
            architecture: "amd64".into(),
            os: "linux".into(),
            config_json: br#"{"architecture":"amd64","config":{"Env":["PATH=/bin"],"Cmd":["sh"]}}"#
                .to_vec(),
            layers: vec!["sha256:l1".into()],
        };
        let v = serde_json::to_value(ImageView::new(&info)).unwrap();
        assert_eq!(v["Id"], "sha256:abc");
        assert_eq!(v["RepoTags"][0], "app:1");
        assert_eq!(v["Config"]["Cmd"][0], "sh");
        assert_eq!(v["RootFS"]["Type"], "layers");
        assert_eq!(v["RootFS"]["Layers"][0], "sha256:l1");
        assert_eq!(v["Os"], "linux");
        let broken = v1::ImageInfo {
            config_json: b"not json".to_vec(),
            ..info
        };
        assert!(serde_json::to_value(ImageView::new(&broken)).unwrap()["Config"].is_null());
    }

    #[test]
    fn history_table() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let entries = [
            v1::HistoryEntry {
                id: "sha256:7e01a0d0a1dcd9e539f8e9bbd80106d59efbdf97".into(),
                created: Some(Timestamp {
                    seconds: 1_700_000_000 - 3 * 86400,
                    nanos: 0,
                }),
                created_by: "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]".into(),
                size: 0,
                comment: String::new(),
                empty_layer: true,
            },
            v1::HistoryEntry {
                id: String::new(),
                created: Some(Timestamp {
                    seconds: 1_700_000_000 - 3 * 86400,
                    nanos: 0,
                }),
                created_by: "/bin/sh -c #(nop) ADD file:d0764a717d1e9d0aff3fa84779b11bfa0afe4430dcb6b46d965b209167639ba0 in / "
                    .into(),
                size: 7_376_000,
                comment: "imported".into(),
                empty_layer: false,
            },
        ];
        let args = HistoryArgs {
            no_trunc: false,
            quiet: false,
            image: "alpine".into(),
        };
        let mut out = Vec::new();
        write_history(&mut out, &entries, now, &args).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\
IMAGE          CREATED      CREATED BY                                      SIZE      COMMENT
7e01a0d0a1dc   3 days ago   /bin/sh -c #(nop)  CMD [\"/bin/sh\"]              0B
<missing>      3 days ago   /bin/sh -c #(nop) ADD file:d0764a717d1e9d0af…   7.38MB    imported
"
        );
    }

    #[test]
    fn save_refuses_a_terminal() {
        let err = check_archive_target(None, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cowardly refusing to save to a terminal. Use the -o flag or redirect"
        );
        check_archive_target(Some("out.tar"), true).unwrap();
        check_archive_target(None, false).unwrap();
    }
}
