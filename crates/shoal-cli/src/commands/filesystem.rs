//! `commands/filesystem.rs`: the verbs on a container's filesystem — `diff`, `export`,
//! `commit` and `cp` — with Docker's arguments, path rules and messages. The host half of `cp`
//! (path rules, host tars, confined extraction) is in `filesystem/local.rs`.

mod local;

use shoal_api::v1::{self, copy_from_chunk};
use tokio::sync::mpsc;

use crate::commands::image::{check_archive_target, write_archive};
use crate::daemon::Daemon;
use crate::format::units::human_size;
use crate::parse::container as pc;
use crate::stdio::{Stdio, read_chunks};
use crate::{CliError, GlobalArgs};

use local::{Destination, Rename};

/// How much of a tarball each upload message carries.
const CHUNK_SIZE: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short, long, value_name = "FILE")]
    output: Option<String>,
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
}

#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>")
    #[arg(short, long, value_name = "AUTHOR")]
    author: Option<String>,
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long = "change", value_name = "INSTRUCTION", value_parser = commit_change)]
    change: Vec<String>,
    /// Commit message
    #[arg(short, long, value_name = "MESSAGE")]
    message: Option<String>,
    /// Pause container during commit
    #[arg(
        short,
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pause: bool,
    /// Container ID, ID prefix or name
    #[arg(value_name = "CONTAINER")]
    container: String,
    /// Name (and tag) for the new image
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(
    override_usage = "shoal cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n       \
                  shoal cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH"
)]
pub struct CpArgs {
    /// Archive mode (copy all uid/gid information)
    #[arg(short, long)]
    archive: bool,
    /// Always follow symbol link in SRC_PATH
    #[arg(short = 'L', long)]
    follow_link: bool,
    /// Suppress progress output during copy
    #[arg(short, long)]
    quiet: bool,
    /// CONTAINER:SRC_PATH, a host path, or - for a tar on STDIN
    #[arg(value_name = "SRC", allow_hyphen_values = true)]
    source: String,
    /// CONTAINER:DEST_PATH, a host path, or - for a tar on STDOUT
    #[arg(value_name = "DEST", allow_hyphen_values = true)]
    destination: String,
}

/// `-c` takes the instructions `import` takes; the message names the verb in use.
fn commit_change(text: &str) -> Result<String, String> {
    pc::import_change(text).map_err(|e| e.replace("supported by import", "supported by commit"))
}

// diff ---------------------------------------------------------------------------------------

pub(crate) async fn diff(
    global: &GlobalArgs,
    args: DiffArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    for change in daemon.container_changes(&args.container).await? {
        writeln!(io.out, "{} {}", change.kind, change.path)?;
    }
    Ok(0)
}

// export -------------------------------------------------------------------------------------

/// Docker will not write a tarball to a terminal.
pub(crate) async fn export(
    global: &GlobalArgs,
    args: ExportArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    check_archive_target(args.output.as_deref(), io.stdout_tty)?;
    let mut daemon = Daemon::connect(&global.host).await?;
    let stream = daemon.export_container(&args.container).await?;
    write_archive(&daemon, stream, |c| c.data, args.output.as_deref(), io).await
}

// commit -------------------------------------------------------------------------------------

pub(crate) async fn commit(
    global: &GlobalArgs,
    args: CommitArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    let response = daemon
        .commit_container(v1::CommitContainerRequest {
            container: args.container,
            reference: args.reference.unwrap_or_default(),
            author: args.author.unwrap_or_default(),
            comment: args.message.unwrap_or_default(),
            changes: args.change,
            pause: args.pause,
        })
        .await?;
    writeln!(io.out, "{}", response.id)?;
    Ok(0)
}

// cp -----------------------------------------------------------------------------------------

/// One side of a copy: `CONTAINER:PATH` or a host path (Docker's `splitCpArg`: an absolute
/// path, or one starting with `.`, is always local, so `./a:b` is a file name with a colon).
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Container { container: String, path: String },
    Host(String),
}

fn split_side(arg: &str) -> Side {
    if arg.starts_with('/') {
        return Side::Host(arg.to_owned());
    }
    match arg.split_once(':') {
        Some((container, path)) if !container.is_empty() && !container.starts_with('.') => {
            Side::Container {
                container: container.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => Side::Host(arg.to_owned()),
    }
}

pub(crate) async fn cp(
    global: &GlobalArgs,
    args: CpArgs,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    match (split_side(&args.source), split_side(&args.destination)) {
        (Side::Container { .. }, Side::Container { .. }) => Err(CliError::usage(
            "copying between containers is not supported",
        )),
        (Side::Host(_), Side::Host(_)) => Err(CliError::usage(
            "must specify at least one container source (CONTAINER:PATH)",
        )),
        (Side::Container { container, path }, Side::Host(dest)) => {
            if path.is_empty() {
                return Err(CliError::usage("source can not be empty"));
            }
            copy_from_container(global, &args, &container, &path, &dest, io).await
        }
        (Side::Host(source), Side::Container { container, path }) => {
            if path.is_empty() {
                return Err(CliError::usage("destination can not be empty"));
            }
            copy_to_container(global, &args, &source, &container, &path, io).await
        }
    }
}

fn is_dir_mode(mode: u32) -> bool {
    mode & 0o170000 == 0o040000
}

fn is_symlink_mode(mode: u32) -> bool {
    mode & 0o170000 == 0o120000
}

/// The archive top name the daemon uses for a stat: `None` when it holds contents only.
fn archive_base(stat: &v1::ContainerPathStat) -> Option<std::ffi::OsString> {
    (stat.name != "." && stat.name != "/").then(|| stat.name.clone().into())
}

async fn copy_from_container(
    global: &GlobalArgs,
    args: &CpArgs,
    container: &str,
    path: &str,
    dest: &str,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    let mut daemon = Daemon::connect(&global.host).await?;
    // With -L a symlink is replaced by its target, copied under the link's name.
    let mut source_path = path.to_owned();
    let mut link_name = None;
    if args.follow_link {
        let stat = daemon.stat_container_path(container, path).await?;
        if is_symlink_mode(stat.mode) {
            source_path = stat.link_target;
            link_name = Some(local::base_name(path));
        }
    }
    let mut stream = daemon.copy_from_container(container, &source_path).await?;
    let stat = match stream.message().await.map_err(|s| daemon.fail(s))? {
        Some(v1::CopyFromChunk {
            part: Some(copy_from_chunk::Part::Stat(stat)),
        }) => stat,
        _ => {
            return Err(CliError::Protocol(
                "CopyFrom did not start with a path stat",
            ));
        }
    };
    let from = archive_base(&stat);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    let reader = ChunkReader {
        rx,
        current: Vec::new(),
        position: 0,
    };

    if dest == "-" {
        let Some(link_name) = link_name else {
            while let Some(chunk) = stream.message().await.map_err(|s| daemon.fail(s))? {
                if let Some(copy_from_chunk::Part::Data(data)) = chunk.part {
                    io.out.write_all(&data)?;
                }
            }
            return Ok(0);
        };
        // The link's target goes out under the link's name: the archive is rewritten (in
        // memory; only `-L` onto STDOUT needs this).
        let rename = Rename {
            from,
            to: Some(link_name),
        };
        let rewrite = tokio::task::spawn_blocking(move || {
            let mut buffer = Vec::new();
            local::rename_archive(reader, &mut buffer, &rename).map(|()| buffer)
        });
        while let Some(chunk) = stream.message().await.map_err(|s| daemon.fail(s))? {
            if let Some(copy_from_chunk::Part::Data(data)) = chunk.part
                && tx.send(data).await.is_err()
            {
                break;
            }
        }
        drop(tx);
        let bytes = rewrite
            .await
            .map_err(|e| CliError::usage(e.to_string()))??;
        io.out.write_all(&bytes)?;
        return Ok(0);
    }

    let destination = local::host_destination(dest)?;
    let source_is_dir = is_dir_mode(stat.mode);
    let placement = local::place(source_is_dir, &destination, dest)?;
    let rename = Rename {
        from,
        to: placement.rename_to.or(link_name),
    };
    let dir = std::path::PathBuf::from(&placement.dir);
    let keep = args.archive;
    let extractor =
        tokio::task::spawn_blocking(move || local::extract_to_host(reader, &dir, &rename, keep));
    let mut received = 0u64;
    let pumped = async {
        while let Some(chunk) = stream.message().await.map_err(|s| daemon.fail(s))? {
            if let Some(copy_from_chunk::Part::Data(data)) = chunk.part {
                received += data.len() as u64;
                if tx.send(data).await.is_err() {
                    break;
                }
            }
        }
        Ok::<(), CliError>(())
    }
    .await;
    drop(tx);
    let extracted = extractor
        .await
        .map_err(|e| CliError::usage(e.to_string()))?;
    pumped?;
    extracted?;
    if !args.quiet {
        writeln!(
            io.err,
            "Successfully copied {} to {}",
            human_size(received),
            dest
        )?;
    }
    Ok(0)
}

async fn copy_to_container(
    global: &GlobalArgs,
    args: &CpArgs,
    source: &str,
    container: &str,
    path: &str,
    io: &mut Stdio<'_>,
) -> Result<u8, CliError> {
    // Read the source before asking anything of the daemon: a bad local path fails at once.
    let host = if source == "-" {
        None
    } else {
        Some(local::host_source(source, args.follow_link)?)
    };
    let mut daemon = Daemon::connect(&global.host).await?;
    let shown = format!("{container}:{path}");
    let mut destination = Destination {
        path: path.to_owned(),
        exists: false,
        is_dir: false,
    };
    match daemon.stat_container_path(container, path).await {
        Ok(stat) if is_symlink_mode(stat.mode) => {
            // A symlink destination is followed (once, inside the container).
            destination.path = stat.link_target.clone();
            if let Ok(target) = daemon
                .stat_container_path(container, &stat.link_target)
                .await
            {
                destination.exists = true;
                destination.is_dir = is_dir_mode(target.mode);
            }
        }
        Ok(stat) => {
            destination.exists = true;
            destination.is_dir = is_dir_mode(stat.mode);
        }
        // Missing: the copy may still create it, in its parent directory.
        Err(CliError::Rpc(status)) if status.code() == tonic::Code::NotFound => {
            // …unless the container itself is what is missing.
            if status.message().starts_with("no such container") {
                return Err(CliError::Rpc(status));
            }
        }
        Err(err) => return Err(err),
    }
    let copy_uid_gid = args.archive;
    let Some(host) = host else {
        if !(destination.exists && destination.is_dir) {
            return Err(CliError::usage(format!(
                "destination \"{shown}\" must be a directory"
            )));
        }
        let chunks = read_chunks(io.input.take_reader(), CHUNK_SIZE);
        let spec = v1::CopyToSpec {
            container: container.to_owned(),
            path: destination.path,
            copy_uid_gid,
        };
        daemon
            .copy_to_container(spec, chunks, "standard input")
            .await?;
        return Ok(0);
    };
    let placement = local::place(host.is_dir, &destination, &shown)?;
    // The archive's top takes the name it must have in the target directory.
    let top = match (&placement.rename_to, host.base.to_str()) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(".")) => None,
        (None, _) => Some(host.base.clone()),
    };
    let chunks = local::archive_host_path(host, top);
    let spec = v1::CopyToSpec {
        container: container.to_owned(),
        path: placement.dir,
        copy_uid_gid,
    };
    let sent = daemon.copy_to_container(spec, chunks, source).await?;
    if !args.quiet {
        writeln!(
            io.err,
            "Successfully copied {} to {shown}",
            human_size(sent)
        )?;
    }
    Ok(0)
}

/// A blocking reader over chunks sent from async code; ends when the sender is dropped.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.position >= self.current.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.position = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_split_like_docker() {
        assert_eq!(
            split_side("web:/etc/passwd"),
            Side::Container {
                container: "web".into(),
                path: "/etc/passwd".into()
            }
        );
        assert_eq!(split_side("/abs:path"), Side::Host("/abs:path".into()));
        assert_eq!(split_side("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(split_side("file"), Side::Host("file".into()));
        assert_eq!(split_side("-"), Side::Host("-".into()));
        assert_eq!(
            split_side("web:"),
            Side::Container {
                container: "web".into(),
                path: String::new()
            }
        );
    }

    #[test]
    fn commit_changes_are_checked_and_named() {
        assert!(commit_change("ENV A=1").is_ok());
        let err = commit_change("RUN make").unwrap_err();
        assert!(err.contains("not supported by commit"), "{err}");
    }

    #[test]
    fn export_refuses_a_terminal() {
        let err = check_archive_target(None, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cowardly refusing to save to a terminal. Use the -o flag or redirect"
        );
        check_archive_target(Some("out.tar"), true).unwrap();
        check_archive_target(None, false).unwrap();
    }
}
