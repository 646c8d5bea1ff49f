//! The fake daemon's container filesystem calls (`diff`, `export`, `commit`, `cp`) over a
//! small fixed tree, and the verbs driven against it: Docker's `cp` path rules on both sides,
//! host extraction, and the messages a user sees.

use std::io::Read;
use std::pin::Pin;

use shoal_api::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status, Streaming};

use super::{Fake, Harness};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the filesystem calls were sent.
#[derive(Default)]
pub(super) struct Files {
    pub(super) commits: Vec<v1::CommitContainerRequest>,
    /// Each `CopyTo`: its target and the archive's entry names with their contents.
    pub(super) copied_in: Vec<(v1::CopyToSpec, Vec<Entry>)>,
}

/// One archive entry: its name and contents.
type Entry = (String, Vec<u8>);

const DIR: u32 = 0o040755;
const FILE: u32 = 0o100644;
const LINK: u32 = 0o120777;

/// The fake container's tree: path, mode, contents (or symlink target).
const TREE: &[(&str, u32, &str)] = &[
    ("/etc", DIR, ""),
    ("/etc/hostname", FILE, "web\n"),
    ("/etc/link", LINK, "hostname"),
    ("/data", DIR, ""),
    ("/data/a", FILE, "A"),
    ("/data/sub", DIR, ""),
    ("/data/sub/b", FILE, "B"),
];

fn clean(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn check_container(container: &str) -> Result<(), Status> {
    if container == "missing" {
        return Err(Status::not_found("no such container: missing"));
    }
    Ok(())
}

fn lookup(container: &str, path: &str) -> Result<v1::ContainerPathStat, Status> {
    check_container(container)?;
    let cleaned = clean(path);
    let contents_only = path.ends_with("/.");
    let mut name = cleaned.rsplit('/').next().unwrap_or_default().to_owned();
    if contents_only {
        name = ".".into();
    }
    let (mode, size, link_target) = if cleaned == "/" {
        (DIR, 0, String::new())
    } else {
        let (_, mode, data) = TREE.iter().find(|(p, _, _)| *p == cleaned).ok_or_else(|| {
            Status::not_found(format!(
                "Could not find the file {path} in container {container}"
            ))
        })?;
        let target = if *mode == LINK {
            format!("/etc/{data}")
        } else {
            String::new()
        };
        (*mode, data.len() as u64, target)
    };
    Ok(v1::ContainerPathStat {
        name,
        size,
        mode,
        mtime_seconds: 1_700_000_000,
        link_target,
    })
}

fn archive(path: &str, stat: &v1::ContainerPathStat) -> Vec<u8> {
    let cleaned = clean(path);
    let mut builder = tar::Builder::new(Vec::new());
    let prefix = if stat.name == "." {
        String::new()
    } else {
        stat.name.clone()
    };
    for (p, mode, data) in TREE {
        let rel = if *p == cleaned {
            if prefix.is_empty() {
                continue;
            }
            prefix.clone()
        } else if let Some(rest) = p.strip_prefix(&format!("{}/", cleaned.trim_end_matches('/'))) {
            if prefix.is_empty() {
                rest.to_owned()
            } else {
                format!("{prefix}/{rest}")
            }
        } else {
            continue;
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode & 0o7777);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        match *mode {
            DIR => {
                h.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut h, &rel, std::io::empty()).unwrap();
            }
            LINK => {
                h.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut h, &rel, data).unwrap();
            }
            _ => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, &rel, data.as_bytes()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

pub(super) fn diff(
    fake: &Fake,
    req: v1::ContainerRef,
) -> Result<Response<v1::ContainerChangesResponse>, Status> {
    fake.with("Diff", |_| check_container(&req.container))?;
    let change = |kind: &str, path: &str| v1::ContainerChange {
        kind: kind.into(),
        path: path.into(),
    };
    Ok(Response::new(v1::ContainerChangesResponse {
        changes: vec![
            change("C", "/etc"),
            change("A", "/etc/new"),
            change("D", "/etc/old"),
        ],
    }))
}

pub(super) fn export(
    fake: &Fake,
    req: v1::ContainerRef,
) -> Result<Response<BoxStream<v1::ArchiveChunk>>, Status> {
    fake.with("Export", |_| check_container(&req.container))?;
    let root = lookup(&req.container, "/.")?;
    let data = archive("/.", &root);
    let chunks: Vec<Result<v1::ArchiveChunk, Status>> = data
        .chunks(700)
        .map(|c| Ok(v1::ArchiveChunk { data: c.to_vec() }))
        .collect();
    Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
}

pub(super) fn commit(
    fake: &Fake,
    req: v1::CommitContainerRequest,
) -> Result<Response<v1::CommitContainerResponse>, Status> {
    fake.with("Commit", |s| {
        check_container(&req.container)?;
        s.files.commits.push(req);
        Ok(Response::new(v1::CommitContainerResponse {
            id: format!("sha256:{}", "c".repeat(64)),
        }))
    })
}

pub(super) fn stat_path(
    fake: &Fake,
    req: v1::ContainerPathRequest,
) -> Result<Response<v1::ContainerPathStat>, Status> {
    fake.with("StatPath", |_| lookup(&req.container, &req.path))
        .map(Response::new)
}

pub(super) fn copy_from(
    fake: &Fake,
    req: v1::ContainerPathRequest,
) -> Result<Response<BoxStream<v1::CopyFromChunk>>, Status> {
    let stat = fake.with("CopyFrom", |_| lookup(&req.container, &req.path))?;
    let data = archive(&req.path, &stat);
    let mut messages = vec![Ok(v1::CopyFromChunk {
        part: Some(v1::copy_from_chunk::Part::Stat(stat)),
    })];
    messages.extend(data.chunks(500).map(|c| {
        Ok(v1::CopyFromChunk {
            part: Some(v1::copy_from_chunk::Part::Data(c.to_vec())),
        })
    }));
    let (tx, rx) = mpsc::channel(messages.len());
    for m in messages {
        tx.try_send(m).unwrap();
    }
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

pub(super) async fn copy_to(
    fake: &Fake,
    mut input: Streaming<v1::CopyToChunk>,
) -> Result<Response<v1::CopyToResponse>, Status> {
    let Some(Ok(v1::CopyToChunk {
        part: Some(v1::copy_to_chunk::Part::Spec(spec)),
    })) = input.next().await
    else {
        return Err(Status::invalid_argument("no spec first"));
    };
    let mut data = Vec::new();
    while let Some(chunk) = input.next().await {
        if let Some(v1::copy_to_chunk::Part::Data(d)) = chunk?.part {
            data.extend(d);
        }
    }
    let mut entries = Vec::new();
    let mut archive = tar::Archive::new(&data[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).unwrap();
        entries.push((name, contents));
    }
    fake.with("CopyTo", |s| {
        check_container(&spec.container)?;
        s.files.copied_in.push((spec, entries));
        Ok(Response::new(v1::CopyToResponse {}))
    })
}

// Tests -------------------------------------------------------------------------------------

fn last_copy(h: &Harness) -> (String, Vec<String>) {
    let state = h.fake.0.lock().unwrap();
    let (spec, entries) = state.files.copied_in.last().cloned().unwrap();
    (
        spec.path,
        entries
            .into_iter()
            .map(|(n, _)| n.trim_end_matches('/').to_owned())
            .collect(),
    )
}

#[tokio::test]
async fn cp_out_of_a_container_follows_docker_rules() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p).display().to_string();

    // A file to a new name; a file into an existing directory.
    let outcome = h
        .run_io(
            &["cp", "web:/etc/hostname", &at("host-name")],
            b"",
            false,
            false,
        )
        .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(std::fs::read(at("host-name")).unwrap(), b"web\n");
    assert!(
        outcome.err().starts_with("Successfully copied "),
        "{}",
        outcome.err()
    );
    std::fs::create_dir(at("into")).unwrap();
    h.ok(&["cp", "-q", "web:/etc/hostname", &at("into")]).await;
    assert_eq!(std::fs::read(at("into/hostname")).unwrap(), b"web\n");
    // A directory into an existing one, to a new name, and its contents with `/.`.
    h.ok(&["cp", "-q", "web:/data", &at("into")]).await;
    assert_eq!(std::fs::read(at("into/data/sub/b")).unwrap(), b"B");
    h.ok(&["cp", "-q", "web:/data", &at("fresh")]).await;
    assert_eq!(std::fs::read(at("fresh/a")).unwrap(), b"A");
    h.ok(&["cp", "-q", "web:/data/.", &at("into")]).await;
    assert_eq!(std::fs::read(at("into/a")).unwrap(), b"A");
    // A symlink is copied as one; -L copies its target under the link's name.
    h.ok(&["cp", "-q", "web:/etc/link", &at("into")]).await;
    assert!(
        std::fs::symlink_metadata(at("into/link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    std::fs::create_dir(at("followed")).unwrap();
    h.ok(&["cp", "-q", "-L", "web:/etc/link", &at("followed")])
        .await;
    assert_eq!(std::fs::read(at("followed/link")).unwrap(), b"web\n");

    // Refusals, each one line.
    let (_, result) = h.run(&["cp", "web:/nope", &at("x")]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "Could not find the file /nope in container web"
    );
    let (_, result) = h.run(&["cp", "web:/data", &at("host-name")]).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("cannot copy a directory")
    );
    let (_, result) = h.run(&["cp", "web:/etc/hostname", &at("nodir/")]).await;
    assert!(result.unwrap_err().to_string().contains("does not exist"));
    let (_, result) = h.run(&["cp", "web:/a", "db:/b"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "copying between containers is not supported"
    );
    let (_, result) = h.run(&["cp", "a", "b"]).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("at least one container")
    );

    // `-` writes the tar itself.
    let outcome = h.run_io(&["cp", "web:/data", "-"], b"", false, false).await;
    assert!(outcome.result.is_ok());
    let mut names: Vec<String> = tar::Archive::new(&outcome.out[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["data", "data/a", "data/sub", "data/sub/b"]);
    let outcome = h
        .run_io(&["cp", "-L", "web:/etc/link", "-"], b"", false, false)
        .await;
    let names: Vec<String> = tar::Archive::new(&outcome.out[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["link"]);
}

#[tokio::test]
async fn cp_into_a_container_follows_docker_rules() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p).display().to_string();
    std::fs::write(at("file"), b"hello").unwrap();
    std::fs::create_dir_all(at("tree/inner")).unwrap();
    std::fs::write(at("tree/inner/x"), b"x").unwrap();

    h.ok(&["cp", "-q", &at("file"), "web:/etc"]).await;
    assert_eq!(last_copy(&h), ("/etc".into(), vec!["file".into()]));
    h.ok(&["cp", "-q", &at("file"), "web:/etc/renamed"]).await;
    assert_eq!(last_copy(&h), ("/etc".into(), vec!["renamed".into()]));
    h.ok(&["cp", "-q", &at("file"), "web:/etc/hostname"]).await;
    assert_eq!(last_copy(&h), ("/etc".into(), vec!["hostname".into()]));
    h.ok(&["cp", "-q", &at("tree"), "web:/data"]).await;
    assert_eq!(
        last_copy(&h),
        (
            "/data".into(),
            vec!["tree".into(), "tree/inner".into(), "tree/inner/x".into()]
        )
    );
    h.ok(&["cp", "-q", &at("tree"), "web:/newdir"]).await;
    assert_eq!(
        last_copy(&h),
        (
            "/".into(),
            vec![
                "newdir".into(),
                "newdir/inner".into(),
                "newdir/inner/x".into()
            ]
        )
    );
    h.ok(&["cp", "-q", &format!("{}/.", at("tree")), "web:/data"])
        .await;
    assert_eq!(
        last_copy(&h),
        ("/data".into(), vec!["inner".into(), "inner/x".into()])
    );
    // A tar on stdin goes into a directory as it is.
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        b.append_data(&mut header, "from-stdin", &b"hi"[..])
            .unwrap();
        b.into_inner().unwrap()
    };
    let outcome = h
        .run_io(&["cp", "-", "web:/data"], &tar, false, false)
        .await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert_eq!(last_copy(&h), ("/data".into(), vec!["from-stdin".into()]));

    // Refusals.
    let (_, result) = h.run(&["cp", "-", "web:/etc/hostname"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "destination \"web:/etc/hostname\" must be a directory"
    );
    let (_, result) = h.run(&["cp", &at("tree"), "web:/etc/hostname"]).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("cannot copy a directory")
    );
    let (_, result) = h.run(&["cp", &at("missing"), "web:/etc"]).await;
    assert!(result.unwrap_err().to_string().contains("no such file"));
    let (_, result) = h.run(&["cp", &at("file"), "missing:/etc"]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        "no such container: missing"
    );
}

#[tokio::test]
async fn diff_export_and_commit_print_what_docker_prints() {
    let h = Harness::start().await;
    assert_eq!(
        h.ok(&["diff", "web"]).await,
        "C /etc\nA /etc/new\nD /etc/old\n"
    );
    // export: never to a terminal; to a file or a pipe otherwise.
    let outcome = h.run_io(&["export", "web"], b"", false, true).await;
    assert_eq!(
        outcome.result.unwrap_err().to_string(),
        "cowardly refusing to save to a terminal. Use the -o flag or redirect"
    );
    assert!(!h.fake.calls().contains(&"Export"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("web.tar");
    h.ok(&["container", "export", "-o", out.to_str().unwrap(), "web"])
        .await;
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&out).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"etc/hostname".to_owned()), "{names:?}");

    let id = h
        .ok(&[
            "commit", "-a", "me", "-m", "msg", "-c", "ENV A=1", "web", "img:1",
        ])
        .await;
    assert_eq!(id, format!("sha256:{}\n", "c".repeat(64)));
    h.ok(&["container", "commit", "--pause=false", "web"]).await;
    let commits = h.fake.0.lock().unwrap().files.commits.clone();
    assert_eq!(commits[0].reference, "img:1");
    assert_eq!(commits[0].changes, ["ENV A=1"]);
    assert_eq!(
        (commits[0].author.as_str(), commits[0].comment.as_str()),
        ("me", "msg")
    );
    assert!(commits[0].pause);
    assert!(!commits[1].pause);
    assert_eq!(commits[1].reference, "");
}
